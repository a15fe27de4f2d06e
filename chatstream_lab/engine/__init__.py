"""Stage 2 of the data path: token ids -> streams of events, on one model-owning thread."""

from .batching.engine import Engine, EngineClosed
from .batching.scoring import score
from .core.stream import RequestStream
from .generate import stream

__all__ = ["Engine", "EngineClosed", "RequestStream", "score", "stream"]
