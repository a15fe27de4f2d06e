"""The package-level import graph points inward (ARCHITECTURE.md, "Layers").

Every import counts: module level, inside functions (lazy) and under ``TYPE_CHECKING``, so a
dependency cannot hide behind laziness. Each top-level part of ``chatstream_lab`` may import only
the parts of the layers below it (and itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chatstream_lab"

# layer -> the parts in it; a part may import parts of lower layers (and of its own layer where
# SAME_LAYER_OK allows it)
LAYERS: list[set[str]] = [
    {"types", "errors", "config", "constraint"},
    {"models", "prompts", "structured", "admission", "sessions", "stats"},
    {"engine"},
    {"service", "switch"},
    {"server", "notebook"},
    {"experiments"},  # the prompt-experiment grid: a client of service, shown by notebook widgets
    {"lab", "cli", "console"},
]
SAME_LAYER_OK = {
    ("config", "errors"), ("config", "types"), ("errors", "types"),
    ("config", "constraint"), ("constraint", "errors"),
    ("prompts", "structured"),  # a request's schemas are checked where they are read
    ("notebook", "server"),  # Endpoint serves the app; the server never imports the notebook
    ("cli", "console"), ("lab", "notebook"),
    ("service", "switch"),  # Service.switch_model runs a ModelSwitch; the switch never imports the service
}


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "chatstream_lab":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Fully qualified chatstream_lab modules that ``path`` imports."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    pkg = list(rel.parts[:-1])  # the package a relative import starts from
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # "from . import presets"
    return {m for m in found if m.startswith("chatstream_lab")}


def _layer_of(part: str) -> int:
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"chatstream_lab.{part} is in no layer: add it to LAYERS in {__file__}")


def package_edges() -> set[tuple[str, str]]:
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        src = _part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if src in (None, "__init__"):
            continue
        for module in _imports(path):
            dst = _part(module)
            if dst is not None and dst != src and ((PACKAGE / dst).is_dir() or (PACKAGE / f"{dst}.py").exists()):
                edges.add((src, dst))
    return edges


def test_every_import_points_inward() -> None:
    wrong = sorted((a, b) for a, b in package_edges()
                   if _layer_of(b) > _layer_of(a) or (_layer_of(b) == _layer_of(a) and (a, b) not in SAME_LAYER_OK))
    assert not wrong, "imports that point outward or sideways: " + ", ".join(f"{a} -> {b}" for a, b in wrong)


def test_the_graph_has_no_cycles() -> None:
    edges = package_edges()
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [])


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The walker must see imports inside functions and under TYPE_CHECKING (else it proves nothing)."""
    edges = package_edges()
    assert ("lab", "notebook") in edges  # lazy, inside Lab.preview
    assert ("engine", "models") in edges  # TYPE_CHECKING only, in engine/protocol.py
