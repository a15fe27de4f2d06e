"""What a grid may ask of a model's engine: token log-probabilities and scoring.

The one place the grid asks, answered by the engine's declared
:class:`~chatstream_lab.engine.Capabilities` (known without building the engine), never guessed
from the backend's name.
"""

from __future__ import annotations

from typing import Any

from ..engine.factory import backend_name, capabilities_of


def reports_logprobs(model: Any) -> bool:
    """True when requests to ``model`` may ask for token log-probabilities."""
    return capabilities_of(model).logprobs


def why_not_scored(model: Any) -> str | None:
    """None when ``model``'s engine can score a reference reply; else the reason, for the cell."""
    if capabilities_of(model).scoring:
        return None
    return (f"not scored: the {backend_name(model)} engine reports no log-probabilities "
            "(load the model with backend='torch' to score references, or pass scorer=)")


__all__ = ["reports_logprobs", "why_not_scored"]
