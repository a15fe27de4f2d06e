"""Stage 2 of the data path: token ids -> streams of events, on one model-owning thread."""

from .engine import Engine, EngineClosed
from .generate import stream
from .stream import RequestStream

__all__ = ["Engine", "EngineClosed", "RequestStream", "stream"]
