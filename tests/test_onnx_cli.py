"""examples/mnist/export.py: flags checked (exit 2, one line), the model written; the
documented ONNX Runtime lines run as written; the MNIST networks on the real test set."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn
from graphnet.testing import assert_close
from onnx_cases import onnx_packages, ort_run
from test_onnx_export import _classifier

onnx, ort = onnx_packages()
from graphnet import onnx as gx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPORT = ROOT / "examples" / "mnist" / "export.py"
DOC = ROOT / "docs" / "onnx.md"


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(EXPORT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    with gn.use_backend("numpy"):
        gn.seed(0)
        model = nn.Classifier(nn.MLP([16, 10], in_features=784, activation="tanh"))
        model.fit_preprocessing(np.random.default_rng(0).integers(0, 256, (32, 28, 28)))
        model.save(folder / "model.npz")
    return folder / "model.npz"


def test_the_cli_writes_a_model_onnx_runtime_runs(saved_model, tmp_path):
    out = tmp_path / "model.onnx"
    r = _cli("--model", str(saved_model), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and str(out) in r.stdout and "opset 17" in r.stdout
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    with gn.use_backend("numpy"):
        want = nn.load(saved_model).predict_proba(images)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    got = ort_run(onnx.load(str(out)), {"images": images.astype(np.float32)})[0]
    assert_close(got, want, rtol=1e-5, atol=1e-6, what="probabilities")


@pytest.mark.parametrize("args, message", [
    (["--out", "x.onnx"], "required: --model"),
    (["--model", "m.npz", "--out", "x.onnx", "--bogus"], "unrecognized arguments: --bogus"),
    (["--model", "{tmp}/missing.npz", "--out", "{tmp}/x.onnx"], "does not exist"),
    (["--model", "{tmp}/garbage.npz", "--out", "{tmp}/x.onnx"], "cannot load the model"),
    (["--model", "{model}", "--out", "{tmp}/no/such/folder/x.onnx"], "does not exist"),
    (["--model", "{model}", "--out", "{tmp}"], "is a folder"),
    (["--model", "{model}", "--out", "{tmp}/garbage.npz/x.onnx"], "garbage.npz is not a folder"),
    (["--model", "{model}", "--out", "{tmp}/locked/x.onnx"], "cannot be written"),
])
def test_bad_flags_exit_2_with_one_line(saved_model, tmp_path, args, message):
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        args = [a.format(tmp=tmp_path, model=saved_model) for a in args]
        r = _cli(*args)
    finally:
        locked.chmod(0o700)
    if "locked" in args[-1] and os.geteuid() == 0 and r.returncode == 0:
        pytest.skip("running as root: a read-only folder is still writable")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not list(tmp_path.rglob("*.onnx"))


def _documented_lines() -> str:
    text = DOC.read_text()
    block = re.search(r"<!-- onnx-runtime-lines -->\n```python\n(.*?)```", text, re.S)
    assert block, "docs/onnx.md lost its ONNX Runtime block"
    return block.group(1)


def test_the_documented_onnx_runtime_lines_run_as_written(saved_model, tmp_path):
    lines = _documented_lines()
    assert len(lines.strip().splitlines()) == 5
    readme = (ROOT / "README.md").read_text()
    if "## Use your model elsewhere" in readme:  # once the section is in the README: the same lines
        assert lines in readme
    assert _cli("--model", str(saved_model), "--out", str(tmp_path / "model.onnx")).returncode == 0
    images = np.random.default_rng(2).integers(0, 256, (6, 28, 28)).astype(np.uint8)
    np.save(tmp_path / "digits.npy", images)
    r = subprocess.run([sys.executable, "-c", lines], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    with gn.use_backend("numpy"):
        want = gn.to_numpy(nn.load(saved_model).predict(images))
    assert r.stdout.strip() == str(want)


def _mnist_test_set():
    from graphnet.datasets import mnist
    try:
        return mnist.load(download=False)[2:]
    except Exception as exc:  # no data here: the loader says why
        pytest.skip(f"MNIST is not in the cache ({exc})")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["fast", "cnn"])
def test_mnist_networks_agree_with_onnx_runtime_on_the_real_test_set(numpy_backend, tmp_path,
                                                                    preset):
    """The presets' networks (trained one short pass) on all 10000 test images: the same
    predictions, probabilities within 1e-5."""
    from graphnet import optim
    from graphnet.train import fit
    x_test, y_test = _mnist_test_set()
    rng = np.random.default_rng(7)
    model = _classifier(preset, rng)
    model.fit_preprocessing(x_test)
    fit(model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9), x_test[:2000],
        y_test[:2000], epochs=1, batch_size=100, progress=False)
    proto = onnx.load(str(gx.export(model, tmp_path / "m.onnx")))
    onnx.checker.check_model(proto, full_check=True)
    got = ort_run(proto, {"images": x_test.astype(np.float32)})[0]
    want = model.predict_proba(x_test)
    assert_close(got, want, rtol=1e-5, atol=1e-6, what=f"{preset} probabilities")
    assert np.array_equal(got.argmax(1), gn.to_numpy(model.predict(x_test)))
    assert (got.argmax(1) == y_test).mean() > 0.5  # it did learn: predictions are not noise
