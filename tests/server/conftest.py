"""Fixtures for the server tests: real uvicorn servers on 127.0.0.1 port 0."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from chatstream_lab.server import SEED_DELIMITER, BackgroundServer


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    server = BackgroundServer(app, port=0, graceful_timeout_s=1.0).start(timeout=15)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def serve() -> Callable[[Any], Any]:
    return serving


def seed_reply(body: str) -> str:
    """What ChatStream's JS client shows: the last complete record."""
    records = body.split(SEED_DELIMITER)[:-1]
    return records[-1] if records else ""


def sse_events(body: str) -> list[tuple[str, Any]]:
    import json

    out = []
    for frame in body.split("\n\n"):
        event, data = "message", None
        for line in frame.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:].strip())
        if data is not None:
            out.append((event, data))
    return out


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stats(url: str) -> dict[str, Any]:
    return httpx.get(url + "/stats", timeout=5).json()
