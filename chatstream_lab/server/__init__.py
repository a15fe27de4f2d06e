"""Server stage: ChatStream facade (seed API), create_app(), framing, BackgroundServer.

Importing this package starts nothing: no app, no threads, no signal handlers.
"""

from .app import create_app
from .background import BackgroundServer
from .chatstream import ChatStream
from .framing import MESSAGE_ID_HEADER, SEED_DELIMITER, SEED_ERROR_MARKER, Framing
from .session_cookie import CookieSettings
from .streaming import Outcome

__all__ = ["MESSAGE_ID_HEADER", "SEED_DELIMITER", "SEED_ERROR_MARKER", "BackgroundServer", "ChatStream",
           "CookieSettings", "Framing", "Outcome", "create_app"]
