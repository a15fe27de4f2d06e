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
    """The bundled SmolLM2-135M-Instruct on the torch backend, fp32 on CPU (the reference)."""
    from chatstream_lab.models import load_model

    return load_model(backend="torch", progress=False)


@pytest.fixture(scope="session")
def openvino_model():
    """The bundled model on the OpenVINO backend in the precision calibration chose for this machine
    (``make test``'s setup exports the candidates and calibrates once, ~2-3 min; then read from the
    cache in ~1 s)."""
    from chatstream_lab.models import load_model

    return load_model(backend="openvino", progress=False)


@pytest.fixture(scope="session")
def openvino_fp32_model():
    """The bundled model on the OpenVINO backend with fp32 weights and fp32 compute."""
    from chatstream_lab.models import load_model

    return load_model(backend="openvino", dtype="float32", progress=False)


REAL_BACKENDS = ("torch", "openvino")


@pytest.fixture(params=REAL_BACKENDS)
def real_backend_model(request):
    """The bundled model on each real backend: a test using it runs once per backend."""
    return request.getfixturevalue("real_model" if request.param == "torch" else "openvino_model")


@pytest.fixture
def scripted():
    """Factory for fast deterministic models: ``scripted(reply, token_delay=..., fail_after=...)``."""
    from chatstream_lab.models import scripted_model

    return scripted_model
