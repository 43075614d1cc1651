"""The MNIST example's command line: bad flags fail before any work; real runs are checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "mnist" / "train.py"


def run(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.mark.parametrize("args, message", [
    (["--epochs", "-1"], "--epochs must be >= 0"),
    (["--layers", "128,64"], "--layers must end in 10"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--batch-size", "0"], "--batch-size must be > 0"),
    (["--dropout", "1.0"], "--dropout must be in [0, 1)"),
    (["--layers", "12,x,10"], "comma-separated integers"),
    (["--preset", "nope"], "invalid choice"),
])
def test_bad_flags_rejected_before_any_work(args, message, tmp_path):
    res = run(*args, "--out", str(tmp_path / "out"), timeout=30)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_backend_is_a_clear_error(tmp_path):
    res = run("--backend", "tpu", "--out", str(tmp_path), timeout=30)
    assert res.returncode == 2
    assert "unknown graphnet backend 'tpu'" in res.stderr and "'numpy'" in res.stderr


@pytest.mark.slow
def test_seed_10_preset_reproduces_reference_and_writes_outputs(tmp_path):
    res = run("--preset", "seed-10", "--out", str(tmp_path), "--no-progress",
              "--min-accuracy", "0.91", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test_accuracy", "train_accuracy", "epochs", "seconds_per_epoch", "backend",
                "device", "config", "history"):
        assert key in metrics
    assert abs(metrics["test_accuracy"] - 0.915) <= 0.005
    assert (tmp_path / "model.npz").exists()


@pytest.mark.slow
def test_min_accuracy_fails_the_run_when_missed(tmp_path):
    res = run("--preset", "seed-10", "--out", str(tmp_path), "--no-progress",
              "--min-accuracy", "0.99", timeout=600)
    assert res.returncode == 1
    assert "FAIL: test accuracy" in res.stderr


@pytest.mark.slow
def test_default_preset_reaches_98_percent(tmp_path):
    res = run("--out", str(tmp_path), "--no-progress", "--min-accuracy", "0.98", timeout=1200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
