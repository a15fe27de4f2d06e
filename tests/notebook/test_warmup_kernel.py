"""No notebook cell waits on an engine build (ARCHITECTURE.md, invariant 8), in a real kernel.

A fresh ``Lab()`` on the bundled model (the default backend) and ``lab.preview(...)`` right away:
the preview cell returns while the engine is built on its own thread, and the reply then streams
into the widget. The cells time themselves; the numbers are printed (``-s``) for the closing note.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.real_model, pytest.mark.timeout(600)]

CELLS = [
    "import time, json\nt0 = time.perf_counter()\nimport chatstream_lab as csl\n"
    "lab = csl.Lab(temperature=0, max_new_tokens=12)\nlab_s = time.perf_counter() - t0",
    "t0 = time.perf_counter()\npreview = lab.preview('What is the capital of France?')\n"
    "preview_s = time.perf_counter() - t0\nstate_after_preview = lab.service.health().state.value",
    "import asyncio\nfor _ in range(1200):\n    if preview.finished is not None:\n        break\n"
    "    await asyncio.sleep(0.05)\n"
    "print(json.dumps({'lab_s': lab_s, 'preview_s': preview_s, 'state': state_after_preview,\n"
    "                  'backend': lab.service.backend, 'text': preview.text,\n"
    "                  'reason': preview.finished.finish_reason.value}))\nlab.close()",
]


def test_a_fresh_lab_preview_returns_at_once_in_a_kernel() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in CELLS])
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    out = json.loads("".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream"))
    print(f"in a kernel: Lab() {out['lab_s']:.2f} s, lab.preview() {out['preview_s'] * 1000:.0f} ms "
          f"(engine {out['state']} when it returned; backend {out['backend']})")
    assert out["text"] == "The capital of France is Paris." and out["reason"] == "stop"
    assert out["preview_s"] < 0.2
