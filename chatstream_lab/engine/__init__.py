"""Stage 2 of the data path: token ids -> streams of events, on one model-owning thread."""

from .engine import Engine, EngineClosed
from .generate import stream
from .scoring import score
from .stream import RequestStream

__all__ = ["Engine", "EngineClosed", "RequestStream", "score", "stream"]
