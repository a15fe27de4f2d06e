"""What a reply must look like: a JSON schema, any JSON object, a regex or a structural tag.

A :class:`Constraint` is a frozen value carried by
:attr:`~chatstream_lab.config.SamplingParams.constraint`, so it reaches every engine the way the
other generation parameters do (vLLM carries ``structured_outputs`` in its ``SamplingParams`` the
same way). It holds only text (canonical JSON or the regex), so it pickles, hashes and goes into
``config_id``. Compiling it to a token-level grammar is :mod:`chatstream_lab.structured`'s job; an
engine that cannot enforce one refuses the request by name.

:func:`response_format_constraint` reads OpenAI's ``response_format`` (``text``, ``json_object``,
``json_schema`` with ``strict``); :meth:`Constraint.json_schema` takes a schema dict, its JSON
text or a pydantic model class. A ``json_schema`` is always enforced, ``strict`` or not (vLLM's
choice): a reply that the grammar ends is valid against it, one that ``max_tokens`` cuts ends
with ``finish_reason "length"``.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParameter

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ConstraintKind(str, enum.Enum):
    """The closed set of constraint forms every engine is asked about."""

    JSON_SCHEMA = "json_schema"  # a JSON value valid against a schema
    JSON_OBJECT = "json_object"  # any JSON object (OpenAI's "JSON mode")
    REGEX = "regex"  # text matching a regular expression
    STRUCTURAL_TAG = "structural_tag"  # xgrammar's structural tag (tool calls: free text + tags)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Constraint:
    """A reply constraint. Build one with :meth:`json_schema`, :meth:`json_object`, :meth:`regex`
    or :meth:`structural_tag` (or :func:`response_format_constraint` from an OpenAI body).

    ``spec`` is the compact JSON text of the schema or structural tag (keys in their order),
    the pattern of a regex, ``""`` for ``json_object``; ``name`` is the schema's name, sent to
    upstreams that want one (OpenAI's ``json_schema.name``).
    """

    kind: ConstraintKind
    spec: str = ""
    name: str = "response"

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ConstraintKind):
            raise InvalidParameter(f"constraint kind must be a ConstraintKind, got {self.kind!r}",
                                   name="constraint")
        if not isinstance(self.spec, str):
            raise InvalidParameter("constraint spec must be a string", name="constraint")
        if self.kind is not ConstraintKind.JSON_OBJECT and not self.spec:
            raise InvalidParameter(f"a {self.kind} constraint needs its {self.kind}", name="constraint")

    # -- builders -----------------------------------------------------------------------------
    @classmethod
    def json_schema(cls, schema: Any, *, name: str | None = None) -> Constraint:
        """A schema dict, its JSON text, or a pydantic model class (its ``model_json_schema()``)."""
        own_name = getattr(schema, "__name__", None) if isinstance(schema, type) else None
        data = schema_dict(schema, field="response_format")
        return cls(ConstraintKind.JSON_SCHEMA, canonical_json(data), _checked_name(name or own_name or "response"))

    @classmethod
    def json_object(cls) -> Constraint:
        return cls(ConstraintKind.JSON_OBJECT)

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidParameter("a regex constraint needs a non-empty pattern", name="regex")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InvalidParameter(f"regex does not compile: {exc}", name="regex") from exc
        return cls(ConstraintKind.REGEX, pattern)

    @classmethod
    def structural_tag(cls, tag: dict[str, Any]) -> Constraint:
        """xgrammar's structural tag: ``{"type": "structural_tag", "format": {...}}``."""
        if not isinstance(tag, dict) or tag.get("type") != "structural_tag" or not isinstance(tag.get("format"), dict):
            raise InvalidParameter('a structural tag is {"type": "structural_tag", "format": {...}}',
                                   name="structural_tag")
        return cls(ConstraintKind.STRUCTURAL_TAG, canonical_json(tag))

    # -- reading ------------------------------------------------------------------------------
    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema (a ``json_schema`` constraint), else None."""
        return json.loads(self.spec) if self.kind is ConstraintKind.JSON_SCHEMA else None

    @property
    def tag(self) -> dict[str, Any] | None:
        """The structural tag (a ``structural_tag`` constraint), else None."""
        return json.loads(self.spec) if self.kind is ConstraintKind.STRUCTURAL_TAG else None

    def as_dict(self) -> dict[str, Any]:
        """JSON data (for ``config_id``, ``/stats`` and reprs)."""
        out: dict[str, Any] = {"kind": self.kind.value}
        if self.kind is ConstraintKind.JSON_SCHEMA:
            out.update(name=self.name, schema=self.schema)
        elif self.kind is ConstraintKind.STRUCTURAL_TAG:
            out["structural_tag"] = self.tag
        elif self.kind is ConstraintKind.REGEX:
            out["regex"] = self.spec
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Constraint:
        """The inverse of :meth:`as_dict` (a params dict read back, e.g. a seed session's)."""
        try:
            kind = ConstraintKind(data["kind"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidParameter(f"constraint.kind must be one of {[k.value for k in ConstraintKind]}",
                                   name="constraint") from exc
        if kind is ConstraintKind.JSON_SCHEMA:
            return cls.json_schema(data.get("schema"), name=data.get("name"))
        if kind is ConstraintKind.STRUCTURAL_TAG:
            return cls.structural_tag(data.get("structural_tag"))  # type: ignore[arg-type]
        if kind is ConstraintKind.REGEX:
            return cls.regex(data.get("regex"))  # type: ignore[arg-type]
        return cls.json_object()

    def __repr__(self) -> str:
        spec = self.spec if len(self.spec) <= 60 else self.spec[:57] + "..."
        return f"Constraint({self.kind.value}, {spec!r})" if spec else f"Constraint({self.kind.value})"


def canonical_json(data: Any) -> str:
    """Compact JSON text of a schema or tag. Keys keep their order: a schema's property order is
    the order the reply writes them in (xgrammar, like OpenAI, follows the declared order)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def schema_dict(schema: Any, *, field: str) -> dict[str, Any]:
    """A JSON schema as a dict, from a dict, its JSON text, or a pydantic model class."""
    to_schema = getattr(schema, "model_json_schema", None) if isinstance(schema, type) else None
    if callable(to_schema):
        schema = to_schema()
    elif isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidParameter(f"{field}: the schema is not valid JSON: {exc}", name=field) from exc
    if isinstance(schema, bool):  # JSON Schema's true / false
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise InvalidParameter(f"{field}: a JSON schema is an object (or a pydantic model class), "
                               f"got {type(schema).__name__}", name=field)
    try:
        canonical_json(schema)
    except (TypeError, ValueError) as exc:
        raise InvalidParameter(f"{field}: the schema is not JSON data: {exc}", name=field) from exc
    return schema


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidParameter(f"response_format.json_schema.name must be 1-64 letters, digits, '_' or '-', "
                               f"got {name!r}", name="response_format.json_schema.name")
    return name


def response_format_constraint(value: Any) -> Constraint | None:
    """OpenAI's ``response_format`` -> a Constraint (None for ``text`` or no value).

    ``{"type": "json_object"}``, ``{"type": "json_schema", "json_schema": {"name", "schema",
    "strict"}}``; a wrong shape is an :class:`~chatstream_lab.errors.InvalidParameter` naming the
    field, so the route answers 400 before anything is queued.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidParameter("response_format must be an object with a 'type'", name="response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint.json_object()
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidParameter('response_format.json_schema is required: {"name": ..., "schema": {...}}',
                                   name="response_format.json_schema")
        if "schema" not in spec:
            raise InvalidParameter("response_format.json_schema.schema is required",
                                   name="response_format.json_schema.schema")
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidParameter("response_format.json_schema.strict must be a boolean",
                                   name="response_format.json_schema.strict")
        data = schema_dict(spec["schema"], field="response_format.json_schema.schema")
        return Constraint(ConstraintKind.JSON_SCHEMA, canonical_json(data), _checked_name(spec.get("name", "response")))
    raise InvalidParameter(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                           name="response_format.type")
