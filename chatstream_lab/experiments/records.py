"""Rows as flat records (one dict per row), the shape ``to_pandas()`` / ``to_records()`` share
with the compare and chat widgets' exports: ``model``, ``variant``, ``input``, ``seed``,
``output``, ``completion_tokens``, ``ttft_s``, ``latency_s``, one column per check (NaN plus a
``<check>_error`` column where a check gave no value), then provenance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .rows import CheckError, GridRow, numeric

LEADING = ("row", "model", "variant", "input", "seed", "output", "completion_tokens", "ttft_s", "latency_s")


def _cell(value: Any) -> Any:
    if isinstance(value, CheckError):
        return math.nan
    return value


def row_record(row: GridRow, check_names: Sequence[str]) -> dict[str, Any]:
    """One flat record of ``row`` (see the module docstring)."""
    rec: dict[str, Any] = {"row": row.index, "model": row.model, "variant": row.variant, "input": row.input.text,
                           "seed": row.seed, "output": row.output, "completion_tokens": row.completion_tokens,
                           "ttft_s": row.ttft_s, "latency_s": row.latency_s}
    for name in check_names:
        value = row.checks.get(name)
        rec[name] = _cell(value)
        if isinstance(value, CheckError):
            rec[f"{name}_error"] = value.reason
    if row.input.reference is not None:
        rec["reference"] = row.input.reference
        rec["reference_logprob"] = numeric(row.reference_logprob)
        if isinstance(row.reference_logprob, CheckError):
            rec["reference_logprob_error"] = row.reference_logprob.reason
    rec.update({"status": row.status.value, "origin": row.origin.value if row.origin else None,
                "finish_reason": row.finish_reason, "error": row.error, "input_index": row.input.index,
                "prompt_tokens": row.prompt_tokens, "config_id": row.config_id, "template": row.template,
                "key": row.key, "model_fingerprint": row.model_fingerprint, "backend": row.backend,
                "dtype": row.dtype, "sampling": dict(row.sampling), "versions": dict(row.versions)})
    for k, v in row.input.metadata.items():
        rec[k if k not in rec else f"meta_{k}"] = v
    return rec


def to_dataframe(records: Sequence[dict[str, Any]], leading: Sequence[str] = LEADING) -> Any:
    """A pandas DataFrame of ``records`` (columns in ``leading`` first)."""
    from ..notebook.records import require_pandas

    pd = require_pandas()
    frame = pd.DataFrame.from_records(list(records), columns=None if records else list(leading))
    first = [c for c in leading if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


__all__ = ["LEADING", "row_record", "to_dataframe"]
