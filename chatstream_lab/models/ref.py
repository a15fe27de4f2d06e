"""A model as a reference (:class:`~chatstream_lab.config.ModelRef`) and back: what a saved
configuration records, and how ``Lab.from_config`` / ``chatstream-lab serve --config`` load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ModelRef
from ..errors import ModelLoadError
from .loaded import Backend, LoadedModel

BUNDLED = "bundled"  # ModelRef.source of the bundled model (its path differs between machines)


def model_ref(model: LoadedModel) -> ModelRef:
    """The reference that loads ``model`` again (its name, source, backend and dtype)."""
    from .loader import BUNDLED_NAME, bundled_model_path

    source = model.source
    if model.name == BUNDLED_NAME and model.backend in (Backend.TORCH, Backend.OPENVINO):
        try:
            if Path(source).resolve() == bundled_model_path().resolve():
                source = BUNDLED
        except (OSError, ModelLoadError):
            pass
    return ModelRef(model.name, source, str(model.backend), str(model.dtype))


def load_ref(ref: ModelRef, *, progress: bool = False, tokenizer: Any = None) -> LoadedModel:
    """Load the model ``ref`` names. A remote model needs its local ``tokenizer`` again (or None
    for the upstream's own template); a scripted model cannot be loaded from a reference."""
    from .loader import load_model
    from .remote import remote_model

    if ref.backend == str(Backend.REMOTE):
        return remote_model(ref.source.split(), tokenizer=tokenizer, name=ref.name)
    if ref.backend == str(Backend.SCRIPTED):
        raise ModelLoadError(f"the configuration was made on a scripted model ({ref.name!r}), which "
                             "cannot be loaded from a file: pass model=scripted_model(...) yourself")
    source = None if ref.source == BUNDLED else ref.source
    return load_model(source, backend=ref.backend, dtype=ref.dtype, progress=progress)


__all__ = ["BUNDLED", "load_ref", "model_ref"]
