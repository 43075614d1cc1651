"""benchmarks/gpu_check.sh cannot pass without a GPU, and its dry run says EMULATED everywhere."""
from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
needs_tools = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash and coreutils' timeout")


def _real_gpu() -> bool:
    from conftest import cupy_mode
    return cupy_mode()[0] == "real"


def _run_check(tmp_path: Path, env: dict, limit: float) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_PYTHON": sys.executable, **env}
    env.pop("GRAPHNET_CUPY_EMULATION", None)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=limit)
    return proc, (out / "summary.txt").read_text()


@needs_tools
def test_without_cupy_the_check_stops_at_once_with_a_clear_line(tmp_path):
    blocker = tmp_path / "block" / "cupy"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('cupy blocked by the test')\n")
    proc, summary = _run_check(tmp_path, {"PYTHONPATH": str(blocker.parent)}, 60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "STOP: CuPy is not importable here: ImportError: cupy blocked by the test" in summary
    assert "STOPPED: no GPU check was run" in summary
    assert "tests:" not in summary and "epoch" not in summary and "fast" not in summary


@needs_tools
def test_without_a_device_the_check_stops_at_once(tmp_path):
    if _real_gpu():
        pytest.skip("a CUDA device is present")
    pytest.importorskip("cupy_backends.cuda.api.runtime")  # real CuPy installed, no device
    proc, summary = _run_check(tmp_path, {}, 60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "sees no usable CUDA device" in summary and "STOPPED" in summary


def test_forbidding_the_emulation_stops_pytest_without_a_gpu():
    if _real_gpu():
        pytest.skip("a CUDA device is present: the switch lets the session run")
    env = {**os.environ, "GRAPHNET_CUPY_EMULATION": "forbid", "PYTHONPATH": str(REPO)}
    target = "tests/test_cupy_emulation.py::test_python_and_numpy_scalars_are_fine"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "GRAPHNET_CUPY_EMULATION=forbid: real CuPy on a CUDA device is required" in proc.stdout


@needs_tools
@pytest.mark.slow
def test_the_emulated_dry_run_completes_and_says_emulated_on_every_line(tmp_path):
    proc, summary = _run_check(tmp_path, {"GPU_CHECK_EMULATE": "1"}, 540)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = summary.splitlines()
    assert lines and all(line.startswith("EMULATED: ") for line in lines), summary
    for part in ("preflight: ok", "warm: ok", "tests: ok", "gpu tests", "epoch mlp:", "epoch cnn:",
                 "CUDA-graph replay", "fast preset (--epochs 1):"):
        assert part in summary, part
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["logs.tar.gz", "summary.txt"]


@pytest.mark.gpu
def test_the_epoch_benchmark_times_replay_or_says_why_not(cupy_backend):
    """The MLP gets a replay column (graphnet.capture); the preset CNN's dropout is refused
    with a line naming the node, never dropped silently."""
    from benchmarks.bench_gpu_epoch import run_case
    mlp = run_case("mlp", steps=2, rounds=1, seed=0, emulated=True)
    assert "graphnet-cupy-replay" in mlp["epoch_seconds"]
    cnn = run_case("cnn", steps=2, rounds=1, seed=0, emulated=True)
    assert "graphnet-cupy-replay" not in cnn["epoch_seconds"]
    assert any("replay: refused" in n and "dropout" in n for n in cnn["notes"]), cnn["notes"]


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_the_epoch_benchmark_gives_pytorch_graphnets_network(numpy_backend, case):
    """Same initial weights and layers: the first batch's loss agrees (PyTorch on the CPU here)."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from benchmarks.bench_gpu_epoch import BATCH, GraphnetNet, TorchNet
    rng = np.random.default_rng(0)
    shape = (BATCH, 784) if case == "mlp" else (BATCH, 1, 28, 28)
    X = rng.standard_normal(shape, dtype=np.float32)
    Y = rng.integers(0, 10, BATCH).astype(np.int64)
    g = GraphnetNet(case, X, Y, 0, {})
    t = TorchNet(torch, case, X, Y, g.weights(), "cpu")
    assert t.first_loss() == pytest.approx(g.first_loss(), rel=1e-4)
    t.run_steps(0, 1)
    g.run_steps(0, 1)
    if case == "mlp":  # no dropout: one step of the same optimizer gives the same loss
        assert t.first_loss() == pytest.approx(g.first_loss(), rel=1e-3)
