"""The conda environment and the pip metadata name the same dependencies; importing has no side effects."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_covers_pyproject_dependencies() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in meta["dependencies"]}
    for extra in ("notebook", "test"):
        wanted |= {_name(r) for r in meta["optional-dependencies"][extra]}
    wanted = {"pytorch" if n == "torch" else n for n in wanted}
    env = (ROOT / "environment.yml").read_text()
    listed = {_name(m) for m in re.findall(r"^\s+- ([A-Za-z][\w.-]*[^\n]*)$", env, re.M)}
    assert wanted <= listed, sorted(wanted - listed)


def test_import_has_no_side_effects() -> None:
    code = ("import threading, logging, asyncio, signal\n"
            "before = threading.active_count(); h = signal.getsignal(signal.SIGINT)\n"
            "import chatstream_lab as csl\n"
            "assert threading.active_count() == before\n"
            "assert signal.getsignal(signal.SIGINT) is h\n"
            "assert not logging.getLogger('chatstream_lab').handlers\n"
            "import sys; assert 'torch' not in sys.modules and 'fastapi' not in sys.modules\n"
            "assert sorted(csl.__all__) == csl.__all__\n"
            "for n in csl.__all__: getattr(csl, n)\n"
            "assert threading.active_count() == before\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
