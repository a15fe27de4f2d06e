"""Labs for grid tests (closed after each test)."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_lab():
    """``make_lab(model_or_reply, **lab_options)``: a Lab on a scripted model (or the given model)."""
    from chatstream_lab import Lab
    from chatstream_lab.models import LoadedModel, scripted_model

    labs = []

    def make(model="The capital of France is Paris.", *, token_delay=0.0, **options):
        options.setdefault("temperature", 0)
        options.setdefault("max_new_tokens", 64)
        lm = model if isinstance(model, LoadedModel) else scripted_model(model, token_delay=token_delay)
        lab = Lab(lm, **options)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()
