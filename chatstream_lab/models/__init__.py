"""Stage 0 of the data path: models. ``load_model()`` and the scripted stand-in."""

from .byte_tokenizer import ByteTokenizer
from .loaded import Backend, LoadedModel
from .loader import bundled_model_path, from_hf, load_model
from .ref import load_ref, model_ref
from .remote import RemoteSpec, remote_model
from .scripted import ScriptedLM, echo_reply, scripted_model

__all__ = ["Backend", "ByteTokenizer", "LoadedModel", "RemoteSpec", "ScriptedLM", "bundled_model_path", "echo_reply",
           "from_hf", "load_model", "load_ref", "model_ref", "remote_model", "scripted_model"]
