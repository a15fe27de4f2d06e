"""Results as rows: the one optional pandas import and the record shape the notebook faces share.

``CompareView.to_records()``, ``ChatWidget.to_records()`` and a grid's ``to_records()`` give one
dict per reply with at least :data:`ROW_COLUMNS` (``model``, ``variant``, ``input``, ``seed``,
``output``, ``completion_tokens``, ``ttft_s``, ``latency_s``), so the tables stack with
``pd.concat``. pandas is an optional import of the ``notebook`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import MissingExtra

ROW_COLUMNS = ("model", "variant", "input", "seed", "output", "completion_tokens", "ttft_s", "latency_s")


def require_pandas() -> Any:
    """The pandas module, or MissingExtra saying how to install it."""
    try:
        import pandas
    except ImportError as exc:
        raise MissingExtra("this needs pandas: pip install 'chatstream_lab[notebook]' (or pip install pandas)",
                           extra="notebook") from exc
    return pandas


def records_frame(records: Sequence[dict[str, Any]]) -> Any:
    """A DataFrame of ``records`` with :data:`ROW_COLUMNS` first (empty: just those columns)."""
    pd = require_pandas()
    frame = pd.DataFrame.from_records(list(records), columns=None if records else list(ROW_COLUMNS))
    first = [c for c in ROW_COLUMNS if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


__all__ = ["ROW_COLUMNS", "records_frame", "require_pandas"]
