"""A LoadedModel's lifecycle: ``close()`` (and ``with``) frees the weights; a closed model refuses
use with ModelClosed naming the fix (issue 16, item 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import chatstream_lab as csl
from chatstream_lab.errors import ModelClosed
from chatstream_lab.models import scripted_model
from chatstream_lab.models.loaded import ReleasedWeights
from chatstream_lab.service import Service


def test_a_closed_model_refuses_every_use_with_the_fix() -> None:
    with scripted_model("hello") as model:
        assert not model.closed
        assert csl.stream(model, "hi").text() == "hello"
    assert model.closed and "closed" in repr(model) and "closed" in model._repr_html_()
    assert isinstance(model.model, ReleasedWeights)
    for use in (lambda: csl.Lab(model), lambda: Service.build(model), lambda: csl.stream(model, "hi").text(),
                model.check_open, lambda: model.model.generate):
        with pytest.raises(ModelClosed, match="was closed .* load_model"):
            use()
    model.close()  # idempotent


def test_a_model_closed_under_a_lab_fails_its_next_request_clearly() -> None:
    model = scripted_model("hello")
    lab = csl.Lab(model)
    try:
        assert lab.generate("hi") == "hello"
        model.close()
        with pytest.raises(ModelClosed):
            lab.generate("hi")
    finally:
        lab.close()


def test_closing_a_model_closes_the_engines_built_on_it() -> None:
    from chatstream_lab.engine.core.protocol import EngineState

    model = scripted_model("hello", token_delay=0.02)
    lab = csl.Lab(model)
    try:
        running = lab.submit("hi")  # still generating when the model closes
        engine = lab.engine
        model.close()
        assert engine.health().state is EngineState.CLOSED
        assert running.result(5).finish_reason.value == "cancelled"
        with pytest.raises(ModelClosed):
            lab.generate("hi")
    finally:
        lab.close()


def test_close_closes_what_was_built_on_the_model_once_and_holds_it_weakly() -> None:
    import gc

    class Engine:
        closed = 0

        def close(self) -> None:
            self.closed += 1

    model = scripted_model("x")
    kept, dropped = Engine(), Engine()
    model.close_with(kept)
    model.close_with(dropped)
    del dropped
    gc.collect()
    assert len(model._lifecycle.users) == 1  # an engine dropped on its own is simply forgotten
    model.close()
    model.close()
    assert kept.closed == 1
    with pytest.raises(ModelClosed):
        model.close_with(Engine())


@pytest.mark.real_model
def test_closing_a_torch_model_frees_its_parameters_in_place() -> None:
    """Even a caller that still holds the torch module holds no weights any more."""
    from chatstream_lab.models import load_model

    model = load_model(backend="torch", progress=False)
    module = model.model
    assert csl.stream(model, "What is the capital of France?", max_new_tokens=4).text()
    model.close()
    assert all(p.device.type == "meta" for p in module.parameters())
    assert all(b.device.type == "meta" for b in module.buffers())


CYCLES = textwrap.dedent("""
    import gc, json, sys
    import chatstream_lab as csl
    from chatstream_lab.models import load_model

    def rss_mb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

    figures = []
    for _ in range(10):
        with load_model(backend=sys.argv[1], progress=False) as model:
            assert csl.stream(model, "What is the capital of France?", max_new_tokens=8).text()
            lab = csl.Lab(model, max_new_tokens=8)  # an engine thread, its caches; closed with the model
            assert lab.generate("What is the capital of France?")
        gc.collect()
        figures.append(round(rss_mb(), 1))
    print(json.dumps(figures))
""")


@pytest.mark.real_model
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_ten_load_close_cycles_end_within_50_mb_of_the_first(backend: str, request) -> None:
    """A notebook that loads, uses (inline, and through a Lab's engine thread) and closes the bundled
    model ten times does not grow: the RSS after the tenth close is within 50 MB of the RSS after
    the first (measured by the process itself, in a fresh interpreter). Closing the model alone
    closes the Lab's engine: the Lab is never closed here."""
    if backend == "openvino":
        request.getfixturevalue("openvino_model")  # the IR is exported (cached) before the child runs
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", CYCLES, backend], capture_output=True, text=True,
                          env=env, timeout=880)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{backend} RSS after each load/use/close cycle (MB): {figures}")
    assert len(figures) == 10
    assert figures[-1] - figures[0] <= 50, figures
