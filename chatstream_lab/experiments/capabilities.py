"""What a grid may ask of a model's engine: token log-probabilities and scoring.

The one place that decides it, so the switch to the generator's declared capabilities (a
``Capabilities`` value on the request-level protocol, being added in branch ``core``) is one
edit here. Until then it reads :attr:`Backend.reports_logprobs <chatstream_lab.models.Backend>`:
only our own sampler on torch (and the scripted stand-in) sees the model's logits.
"""

from __future__ import annotations

from typing import Any


def reports_logprobs(model: Any) -> bool:
    """True when requests to ``model`` may ask for token log-probabilities."""
    backend = getattr(model, "backend", None)
    return bool(getattr(backend, "reports_logprobs", False))


def why_not_scored(model: Any) -> str | None:
    """None when ``model``'s engine can score a reference reply; else the reason, for the cell."""
    if reports_logprobs(model):
        return None
    backend = str(getattr(model, "backend", "?"))
    return (f"not scored: the {backend} engine reports no log-probabilities "
            "(load the model with backend='torch' to score references)")


__all__ = ["reports_logprobs", "why_not_scored"]
