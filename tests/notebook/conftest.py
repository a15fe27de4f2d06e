"""Fixtures for the notebook faces: Labs on the scripted model, closed after each test."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_lab():
    """``make_lab(reply, token_delay=..., **lab_options)`` -> a Lab on a scripted model (closed after)."""
    from chatstream_lab import Lab
    from chatstream_lab.models import scripted_model

    labs = []

    def make(reply="The capital of France is Paris.", *, token_delay=0.0, **options):
        options.setdefault("temperature", 0)
        options.setdefault("max_new_tokens", 2000)
        lab = Lab(scripted_model(reply, token_delay=token_delay), **options)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


@pytest.fixture
def eventually():
    """``await eventually(predicate, timeout)``: poll on the running loop (widget pumps keep running)."""
    return _eventually


async def _eventually(predicate, timeout: float = 10.0, step: float = 0.02) -> None:
    """Poll ``predicate`` on the running loop (letting widget pumps run) until true or time out."""
    import asyncio

    for _ in range(int(timeout / step)):
        if predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")
