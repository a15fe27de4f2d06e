"""Where calibration keeps what it learned about one model, next to the model's IRs.

``<cache>/openvino/<source key>-precision.json``: one :class:`PrecisionChoice` per CPU signature
(a cache directory shared by several machines keeps each one's choice).
``<cache>/openvino/<source key>-reference.json``: the torch fp32 gate reference (the same on
every CPU, so computed once per model). Both are written atomically; :meth:`PrecisionCache.locked`
serialises calibrations of one model across processes (a second one waits, then reads the cache).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .gate import Reference
from .precision import PrecisionChoice

log = logging.getLogger(__name__)

FORMAT = 1


class PrecisionCache:
    """The calibration files of one model (``source_key``) under ``directory``."""

    def __init__(self, directory: Path, source_key: str) -> None:
        self.directory = Path(directory)
        self.source_key = source_key

    @property
    def choices_path(self) -> Path:
        return self.directory / f"{self.source_key}-precision.json"

    @property
    def reference_path(self) -> Path:
        return self.directory / f"{self.source_key}-reference.json"

    def choice(self, key: str) -> PrecisionChoice | None:
        """The choice cached under ``key`` (a CPU signature + plan key), or None."""
        entry = self._read(self.choices_path).get("choices", {}).get(key)
        if not isinstance(entry, dict):
            return None
        try:
            return PrecisionChoice.from_dict(entry)
        except (KeyError, TypeError, ValueError) as exc:  # an older or damaged entry: measure again
            log.warning("ignoring the cached precision choice in %s: %s", self.choices_path, exc)
            return None

    def store_choice(self, key: str, choice: PrecisionChoice) -> None:
        stored = self._read(self.choices_path).get("choices")
        choices: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
        choices[key] = choice.as_dict()
        self._write(self.choices_path, {"format": FORMAT, "choices": choices})

    def keys(self) -> list[str]:
        return sorted(self._read(self.choices_path).get("choices", {}))

    def reference(self, gate_id: str) -> Reference | None:
        data = self._read(self.reference_path)
        if data.get("gate_id") != gate_id:
            return None
        try:
            return Reference.from_dict(data["reference"])
        except (KeyError, TypeError, ValueError):
            return None

    def store_reference(self, gate_id: str, reference: Reference) -> None:
        self._write(self.reference_path, {"format": FORMAT, "gate_id": gate_id, "reference": reference.as_dict()})

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on this model's calibration (waits for another process's)."""
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{self.source_key}-precision.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("format") == FORMAT else {}

    @staticmethod
    def _write(path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, ensure_ascii=False)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
