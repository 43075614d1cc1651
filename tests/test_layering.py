"""The library's layers point one way, and a training step stays short enough to follow.

Lower layers never import higher ones (read from the source, imports inside
``if TYPE_CHECKING:`` excepted); the only import cycles left are annotation-only; no
module is over 450 lines; one training step of a small MLP and of a small CNN enters at
most 7 graphnet files outside ``ops/`` through a chain of at most 10 graphnet frames
(``tools/step_trace.py``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import graphnet as gn

PACKAGE = Path(gn.__file__).resolve().parent
MAX_LINES = 450


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path) -> set[str]:
    """The graphnet modules ``path`` imports at run time (anywhere but under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "graphnet")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "graphnet":
                continue
            found.add(target)
            for alias in node.names:  # ``from . import nn`` imports the module graphnet.nn
                found.add(f"{target}.{alias.name}")
    return found


def _modules() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _runtime_imports(p) if m in files} for name, p in files.items()}


def _reaches(modules: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in modules.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


# Each entry: a module (or package prefix) and the modules it must never import, directly
# or through others (the package's __init__ files aside, which gather the public names).
FORBIDDEN = {
    "graphnet.reference": ("graphnet.planner", "graphnet.stepgen", "graphnet.graph",
                           "graphnet.ops", "graphnet.nn", "graphnet.optim"),
    "graphnet.planner": ("graphnet.graph", "graphnet.ops", "graphnet.nn", "graphnet.optim"),
    "graphnet.stepgen": ("graphnet.graph", "graphnet.planner", "graphnet.ops", "graphnet.nn"),
    "graphnet.graph": ("graphnet.ops", "graphnet.nn", "graphnet.optim"),
    "graphnet.node": ("graphnet.reference", "graphnet.planner", "graphnet.graph", "graphnet.ops"),
    "graphnet.backends": ("graphnet.node", "graphnet.reference", "graphnet.graph", "graphnet.ops"),
}


def _without_inits(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph with package ``__init__`` modules as dead ends (they only re-export)."""
    inits = {m for m in modules if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    return {m: ({d for d in deps if d not in inits} if m not in inits else set())
            for m, deps in modules.items()}


@pytest.mark.parametrize("low", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(low):
    graph = _without_inits(_modules())
    starts = [m for m in graph if m == low or m.startswith(low + ".")]
    assert starts, f"no module {low}"
    for start in starts:
        reached = _reaches(graph, start) | {start}
        bad = sorted(m for m in reached for high in FORBIDDEN[low]
                     if m == high or m.startswith(high + "."))
        assert not bad, f"{start} imports (directly or not) {bad}"


def test_the_reference_executor_is_small_and_imports_only_the_bottom_layer():
    path = PACKAGE / "reference.py"
    assert len(path.read_text().splitlines()) <= 250
    allowed = {"graphnet.backends", "graphnet.errors", "graphnet.graph_checks", "graphnet.node",
               "graphnet.shapes", "graphnet.checks"}
    direct = {m for m in _runtime_imports(path) if m.startswith("graphnet.")}
    assert {m for m in direct if not any(m == a or m.startswith(a + ".") for a in allowed)} == set()


def test_no_runtime_import_cycles():
    """Cycles through package __init__ files (which gather names) aside, none: the layers
    can be read, tested and replaced one at a time."""
    graph = _without_inits(_modules())
    cycles = sorted(m for m in graph if m in _reaches(graph, m))
    assert cycles == []


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_a_training_step_stays_short(numpy_backend, net):
    from tools import step_trace
    trace = step_trace.trace((step_trace.mlp_step if net == "mlp" else step_trace.cnn_step)())
    assert len(trace.files) <= 7, trace.files
    assert trace.depth <= 10, "\n".join(trace.chain)
