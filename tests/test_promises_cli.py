"""README promises of the MNIST example and the README's MNIST code block, on the real data
(cached by ``mnist.load()``): ``--resume`` continues, ``--check-numerics`` names the node,
``--plots`` draws the figures, every exit status, and the code block runs as written."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn

from helpers import needs_cached_mnist

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "mnist" / "train.py"

pytestmark = needs_cached_mnist  # slow: every test but the seconds-long check-numerics one


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRAPHNET_BACKEND": "numpy"}
    return subprocess.Popen([sys.executable, str(TRAIN), "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = start(*args)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow
def test_resume_continues_the_run_instead_of_restarting(tmp_path):
    first = run("--preset", "seed-10", "--epochs", "1", "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    resumed = run("--resume", str(tmp_path / "a"), "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout and "at epoch 2" in resumed.stdout
    after = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    assert after["epoch"] == [1, 2]
    # epoch 1 was not run again: its measured time and loss are the first run's, exactly
    assert after["seconds"][0] == before["seconds"][0]
    assert after["train_loss"][0] == before["train_loss"][0]
    straight = run("--preset", "seed-10", "--epochs", "2", "--out", str(tmp_path / "b"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    got, want = arrays(tmp_path / "a" / "model.npz"), arrays(tmp_path / "b" / "model.npz")
    for k in want:
        if k != "__meta__":
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_check_numerics_names_the_first_bad_node(tmp_path):
    args = ["--layers", "10", "--activation", "relu", "--lr", "1e30", "--epochs", "1"]
    plain = run(*args, "--out", str(tmp_path / "plain"))
    checked = run(*args, "--check-numerics", "--out", str(tmp_path / "checked"))
    for res in (plain, checked):
        assert res.returncode == 1, res.stderr[-2000:]  # training failed (diverged)
        assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "training diverged" in plain.stderr and "node '" not in plain.stderr
    assert re.search(r"node '[^']+' .*non-finite", checked.stderr), checked.stderr[-2000:]


@pytest.mark.slow
def test_plots_draws_every_figure(tmp_path):
    from PIL import Image
    res = run("--preset", "seed-10", "--epochs", "1", "--plots", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    page = (tmp_path / "index.html").read_text()
    pngs = re.findall(r'src="([^"]+\.png)"', page)
    assert {"weights.png", "confusion.png", "curves.png", "samples.png"} <= set(pngs)
    for name in pngs:
        with Image.open(tmp_path / name) as im:
            pixels = np.asarray(im.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{name} is (nearly) blank"


@pytest.mark.slow
def test_exit_status_of_each_outcome(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-images-idx3-ubyte").write_bytes(b"not MNIST")
    corrupt = run("--preset", "seed-10", "--data", str(data), "--out", str(tmp_path / "x"),
                  "--epochs", "1")
    assert corrupt.returncode == 2, corrupt.stderr[-2000:]
    assert "error:" in corrupt.stderr and "train-images-idx3-ubyte" in corrupt.stderr
    below = run("--preset", "seed-10", "--epochs", "1", "--min-accuracy", "0.99", "--out",
                str(tmp_path / "b"))
    assert below.returncode == 1 and "FAIL: test accuracy" in below.stderr
    met = run("--preset", "seed-10", "--epochs", "1", "--min-accuracy", "0.85", "--out",
              str(tmp_path / "m"))
    assert met.returncode == 0, met.stderr[-2000:]


@pytest.mark.slow
def test_readme_mnist_block_runs_as_written(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                 if "mnist.load()" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with gn.use_backend("numpy"), contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "README.md (MNIST)", "exec"), scope)
    assert scope["history"].epoch == list(range(1, 11))
    assert scope["history"].test_accuracy[-1] > 0.96
    np.testing.assert_array_equal(gn.to_numpy(scope["labels"]),
                                  gn.to_numpy(scope["model"].predict(scope["x_test"][:10])))
    assert (gn.to_numpy(scope["labels"]) == scope["y_test"][:10]).mean() >= 0.9
    assert (tmp_path / "runs" / "mine" / "checkpoint.npz").exists()
