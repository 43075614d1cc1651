"""The library's layers point one way, and a training step stays short enough to follow.

Lower layers never import higher ones (read from the source, imports inside
``if TYPE_CHECKING:`` excepted); the only import cycles left are annotation-only; no
module is over 450 lines; one training step of a small MLP and of a small CNN enters at
most 7 graphnet files outside ``ops/`` through a chain of at most 10 graphnet frames
(``tools/step_trace.py``). Training knows nothing of data parallelism, and the library
nothing of the examples.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import graphnet as gn
from cupy_emulation.catalog import package_source

# the source as written (under mutmut, the checkout its mutants/ copy was made from)
PACKAGE = package_source()
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


# --- training apart from data parallelism; the library apart from the examples ---------
ROOT = PACKAGE.parent
TRAINING = PACKAGE / "training"
DATA_PARALLEL_WORDS = ("distributed", "mpi4py", "MPI", "World", "world", "rank", "dist", "nccl")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, absolute, (``from . import x`` resolved to its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = node.module if not node.level else ".".join(filter(None, [base, node.module]))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args + n.kwonlyargs}
    return names


@pytest.mark.parametrize("path", sorted(TRAINING.glob("*.py")), ids=lambda p: p.name)
def test_training_imports_and_names_nothing_of_data_parallelism(path):
    bad = {m for m in _imports(path) if "distributed" in m or m.startswith(("mpi4py", "cupy.cuda.nccl"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"
    words = sorted(_names(path) & set(DATA_PARALLEL_WORDS))
    allowed = {"trainer.py": ["distributed"]}  # the deprecated Trainer(distributed=world) keyword
    assert words == allowed.get(path.name, []), f"{path.name} uses {words}"


def test_the_training_loop_has_no_data_parallel_branch():
    source = (TRAINING / "trainer.py").read_text()
    assert "self.dist" not in source and "if distributed" not in source.replace(
        "if distributed is not None:", "")  # the one deprecated keyword, turned into a strategy
    assert "ShardedSampler" not in source and "stop_agreed" not in source


def test_importing_the_trainer_loads_no_data_parallelism():
    code = ("import sys, graphnet.training, graphnet.nn; "
            "print(sorted(m for m in sys.modules if 'distributed' in m or m.startswith('mpi4py')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted((ROOT / "graphnet").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_imports_nothing_of_the_examples(path):
    text = path.read_text()
    bad = {m for m in _imports(path) if m == "examples" or m.startswith("examples.")}
    assert not bad, f"{path} imports {sorted(bad)}"
    assert "import_module(\"examples" not in text and "import_module('examples" not in text


def test_importing_every_library_module_loads_no_example():
    code = ("import importlib, pkgutil, sys, graphnet\n"
            "for m in pkgutil.walk_packages(graphnet.__path__, 'graphnet.'):\n"
            "    importlib.import_module(m.name)\n"
            "getattr(__import__('graphnet.nn').nn, 'mnist_cnn', None)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'examples'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=ROOT / "tests", env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_the_examples_have_no_bootstrap_glue_and_no_import_circle():
    mnist = ROOT / "examples" / "mnist"
    assert not (mnist / "_bootstrap.py").exists()
    for path in (ROOT / "examples").rglob("*.py"):
        imports = _imports(path)
        assert not {m for m in imports if "_bootstrap" in m or m.startswith("runpy")}, path
    common = {m for m in _imports(mnist / "common.py")}
    assert not {m for m in common if m.endswith(".train") or m == "train"}, \
        "common.py imports train.py, which imports common.py"


# --- a reader finds what runs -------------------------------------------------------------
def _documented_rules() -> set[tuple[str, str, str]]:
    """The fusion rules docs/architecture.md lists: (producer, consumer, built by)."""
    import re
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- FUSION RULES")[1].split("<!-- /FUSION RULES -->")[0]
    return set(re.findall(r"^- `(\w+) -> (\w+)`: built by `(\w+)`", block, re.M))


def test_every_fusion_rule_is_documented_and_every_documented_rule_exists():
    from graphnet.planner import fusion_rules
    registered = {(r.producer.__name__, r.consumer.__name__, r.build.__name__)
                  for r in fusion_rules()}
    assert registered and _documented_rules() == registered


def test_the_nodes_of_each_fusion_rule_name_the_step_that_replaces_them():
    """Each fused op's docstring says which step runs instead of its forward and backward."""
    from graphnet.planner import fusion_rules
    for rule in fusion_rules():
        for cls in (rule.producer, rule.consumer):
            assert rule.build.__name__ in (cls.__doc__ or ""), (cls.__name__, rule.build.__name__)
