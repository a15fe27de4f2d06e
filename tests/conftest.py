"""Session-wide fixtures shared by every test package.

The real model is loaded once per test session (the first load on a fresh machine converts the
bundled GGUF, ~30 s; later sessions read the converted copy in ~1 s).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def real_model():
    """The bundled SmolLM2-135M-Instruct, fp32 on CPU."""
    from chatstream_lab.models import load_model

    return load_model(progress=False)


@pytest.fixture
def scripted():
    """Factory for fast deterministic models: ``scripted(reply, token_delay=..., fail_after=...)``."""
    from chatstream_lab.models import scripted_model

    return scripted_model
