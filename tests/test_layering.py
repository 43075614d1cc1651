"""Issue 21, parts 5-7: training apart from data parallelism, the library apart from the examples."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "graphnet" / "training"
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
