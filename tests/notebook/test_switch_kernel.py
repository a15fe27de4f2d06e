"""Switching a Lab's model in a real kernel (issue 16, item 4): ``lab.use_model(...)`` returns at
once while the new engine warms and the old one drains; a preview started right after it waits for
the new engine (its cell returns at once too) and streams the new model's reply; ``await switch``
in a cell does not block the kernel's loop. The cells time themselves (printed with ``-s``).
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.real_model, pytest.mark.timeout(600)]

CELLS = [
    "import time, json, asyncio\nimport chatstream_lab as csl\n"
    "lab = csl.Lab(csl.load_model(backend='openvino', progress=False), temperature=0, max_new_tokens=12)\n"
    "first = lab.preview('What is the capital of France?')\n"
    "torch_model = csl.load_model(backend='torch', progress=False)  # the user's load cell",
    "t0 = time.perf_counter()\nswitch = lab.use_model(torch_model)\nswitch_s = time.perf_counter() - t0\n"
    "t0 = time.perf_counter()\nsecond = lab.preview('What is the capital of France?')\n"
    "preview_s = time.perf_counter() - t0\nphase = str(switch.phase)",
    "report = await switch\n"
    "for _ in range(1200):\n    if first.finished is not None and second.finished is not None:\n        break\n"
    "    await asyncio.sleep(0.05)\n"
    "print(json.dumps({'switch_s': switch_s, 'preview_s': preview_s, 'phase': phase,\n"
    "                  'first': first.text, 'second': second.text, 'backend': lab.service.backend,\n"
    "                  'switch_took_s': report.seconds}))\nlab.close()",
]


def test_use_model_and_a_preview_right_after_it_return_at_once_in_a_kernel() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in CELLS])
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    out = json.loads("".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream"))
    print(f"in a kernel: lab.use_model() {out['switch_s'] * 1000:.0f} ms, the preview after it "
          f"{out['preview_s'] * 1000:.0f} ms (switch {out['phase']!r} then; done in {out['switch_took_s']:.1f} s)")
    assert out["first"] == out["second"] == "The capital of France is Paris."
    assert out["backend"] == "torch"
    assert out["switch_s"] < 0.2 and out["preview_s"] < 0.2
