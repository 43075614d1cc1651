"""``python -m graphnet``: the environment report and its error exit."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn

ROOT = Path(__file__).resolve().parents[1]


def run_cli(**env):
    full = {k: v for k, v in os.environ.items() if k != "GRAPHNET_BACKEND"}
    full.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "graphnet"], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=60)


def test_report_lists_backend_versions_device_and_availability():
    res = run_cli()
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"graphnet {gn.__version__}" in out
    assert "active backend: numpy" in out
    assert f"numpy {np.__version__}" in out
    assert "device: " in out and "memory: " in out
    assert "available backends: " in out and "numpy" in out.split("available backends: ")[1]
    if "cupy" not in gn.available_backends():
        assert "unavailable: cupy: " in out


@pytest.mark.skipif("cupy" in gn.available_backends(), reason="CuPy and a CUDA device are here")
def test_cupy_requested_without_it_is_a_clear_error():
    res = run_cli(GRAPHNET_BACKEND="cupy")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "CuPy" in res.stderr and ("not installed" in res.stderr or "CUDA" in res.stderr)


def test_unknown_backend_is_a_clear_error():
    res = run_cli(GRAPHNET_BACKEND="tpu")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "'tpu'" in res.stderr and "numpy" in res.stderr
