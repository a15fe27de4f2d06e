"""Read a configuration file written by :meth:`ServeConfig.save <chatstream_lab.config.ServeConfig.save>`.

The file (JSON, or TOML) holds the template as its fingerprint, the system prompt, the sampling
parameters, a model reference and the ``config_id`` they made. Reading it rebuilds a
:class:`~chatstream_lab.config.ServeConfig` whose ``config_id`` is computed by the one formula in
``config.py``; when the file was edited since it was saved, the new id is kept and a warning says
so (the old one no longer describes it).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ..config import CONFIG_FILE_FORMAT, ModelRef, SamplingParams, ServeConfig
from ..errors import ConfigError
from .fingerprint import template_from_dict
from .system import with_system_prompt


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {str(path)!r}: {exc.strerror}", name="path") from exc
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{str(path)!r} is not a valid configuration file: {exc}", name="path") from exc
    if not isinstance(data, dict) or data.get("chatstream_lab_config") != CONFIG_FILE_FORMAT:
        raise ConfigError(f"{str(path)!r} is not a chatstream_lab configuration (written by "
                          "lab.config.save(path)): its 'chatstream_lab_config' is not "
                          f"{CONFIG_FILE_FORMAT}", name="path")
    return data


def config_from_data(data: dict[str, Any], *, origin: str = "the configuration") -> ServeConfig:
    """The configuration ``data`` (``ServeConfig.to_file_data()``) describes."""
    model = data.get("model") or {}
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ConfigError(f"{origin} names no model (a 'model' table with a 'name')", name="model")
    ref = ModelRef(**{k: str(v) for k, v in model.items() if k in ("name", "source", "backend", "dtype")}) \
        if "source" in model else None
    template = with_system_prompt(template_from_dict(data.get("template")), data.get("system_prompt"))
    params = SamplingParams().replace(**dict(data.get("params") or {}))
    config = ServeConfig(model["name"], template, params, model_ref=ref)
    saved = data.get("config_id")
    if saved is not None and saved != config.config_id:
        warnings.warn(f"{origin} says config_id {saved}, but what it describes now has config_id "
                      f"{config.config_id} (edited since it was saved?)", UserWarning, stacklevel=3)
    return config


def load_config(path: str | Path) -> ServeConfig:
    """The configuration saved at ``path`` by ``lab.config.save(path)`` (same ``config_id``).

    ``Lab.from_config(path)`` loads its model too; ``chatstream-lab serve --config path`` serves it.
    """
    target = Path(path)
    return config_from_data(_read(target), origin=str(target))


__all__ = ["config_from_data", "load_config"]
