"""The benchmark harness still runs and writes the JSON it promises (benchmarks/run.py)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import graphnet as gn

REPO = Path(__file__).resolve().parent.parent


def test_overhead_benchmark_quick(tmp_path):
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--only",
                        "overhead", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "overhead.json").read_text())
    for key in ("benchmark", "machine", "config", "results", "engine_us_per_node_above_numpy_floor",
                "ratios", "targets", "quick"):
        assert key in r, key
    assert r["benchmark"] == "overhead" and r["quick"] is True
    for key in ("cpu_model", "logical_cores", "numpy", "blas", "torch", "date"):
        assert key in r["machine"], key
    g = r["results"]["graphnet fwd+bwd"]
    assert g["us_per_node"] > 0 and g["n"] >= 1 and r["config"]["op_nodes"] >= 40
    assert "numpy fwd+bwd" in r["results"]
    if importlib.util.find_spec("torch") is None:
        assert any("PyTorch" in n for n in r["notes"])
    else:
        assert "pytorch fwd+bwd" in r["results"]
        assert r["gradient_agreement_max_abs_diff_vs_torch"] < 1e-4
    index = json.loads((out / "index.json").read_text())
    assert index["benchmarks"] == {"overhead": "overhead.json"}
    assert "overhead" in (out / "summary.md").read_text()
    assert "graphnet fwd+bwd" in p.stdout


def test_gpu_benchmark_skips_or_runs_without_cuda(tmp_path):
    """Without CuPy/CUDA the GPU benchmark says why it skipped, and still writes its JSON."""
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--only", "gpu",
                        "--no-torch", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "gpu.json").read_text())
    if "cupy" in gn.available_backends():  # a GPU is here: skipping would hide a failure
        assert not r.get("skipped"), f"the GPU benchmark skipped on a GPU machine: {r.get('reason')}"
        assert r["cases"]
    else:
        assert r.get("skipped"), "no usable CuPy here, yet the GPU benchmark did not skip"
        assert "cupy" in r["reason"].lower() or "cuda" in r["reason"].lower()


def test_cli_benchmark_quick(tmp_path):
    """The CLI-epoch benchmark runs, splits the epoch, and its two contenders did the same
    training (weights equal bit for bit after every epoch)."""
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--only",
                        "cli_small", "--threads", "1", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "cli_small.json").read_text())
    assert r["agreement"]["weights_bit_identical_every_round"] is True
    for key in ("engine", "cli_steps", "cli_loop", "curve", "end", "end_evaluate", "end_checkpoint"):
        assert r["results"][key]["n"] >= 1, key
    assert r["results"]["engine"]["median"] > 0 and r["results"]["end"]["median"] > 0
    assert "cli_loop/engine" in r["ratios"] and r["targets"][0]["ratio"] == "cli_loop/engine"
    assert "_run_epoch" in (out / "profile_cli_small.txt").read_text()


def test_cnn_cli_benchmark_quick(tmp_path):
    """The CNN's CLI-epoch benchmark trains the preset's Trainer for the rounds asked and
    reports the epoch times the Trainer recorded."""
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cnn_cli.py"), "--quick",
                        "--rounds", "2", "--threads", "1", "--no-torch", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "cnn_cli_threads1.json").read_text())
    assert r["config"]["augment"] is True and r["config"]["model"] == "cnn-pool"
    assert r["images_per_epoch"] == 1280 and list(r["contenders"]) == ["cli"]
    times = r["contenders"]["cli"]["rounds"]
    assert len(times) == 2 and all(t > 0 for t in times)
    assert "ratio_cli_over_pytorch" not in r


@pytest.mark.parametrize("rounds", ["0", "-2", "1.5", "x"])
def test_cnn_cli_benchmark_refuses_a_bad_round_count(rounds):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cnn_cli.py"),
                        "--rounds", rounds, "--no-torch", "--quick"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--rounds" in p.stderr and repr(rounds) in p.stderr
    assert "Traceback" not in p.stderr
