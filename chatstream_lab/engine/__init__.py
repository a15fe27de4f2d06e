"""Stage 2 of the data path: token ids -> streams of events, on one model-owning thread.

``core/`` is what every engine shares (the protocols, ``Capabilities``, the stream, the request
lifecycle, the per-row output pipeline, the engine-thread host, validation); ``batching/``,
``openvino/`` and ``remote/`` are one engine each; ``factory.py`` picks one for a model.
"""

from ..errors import EngineClosed
from .batching.engine import Engine
from .batching.scoring import score
from .core.capabilities import Capabilities
from .core.stream import RequestStream
from .generate import stream

__all__ = ["Capabilities", "Engine", "EngineClosed", "RequestStream", "score", "stream"]
