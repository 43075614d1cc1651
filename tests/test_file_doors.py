"""Every file graphnet reads: regular files only, size caps, no bombs, no NaN weights.

graphnet/io.py (open_regular, read_regular, read_npz, check_path, check_finite), the
Parameter value setter, nn.load, Trainer.load_checkpoint and the MNIST IDX reader.
"""
from __future__ import annotations

import gzip
import math
import os
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
from graphnet import ArgumentError, CheckpointError, nn, optim
from graphnet import io as gio
from graphnet.datasets import mnist
from graphnet.testing import assert_close
from graphnet.train import Trainer


def finishes(call, seconds: float = 10):
    """``call()``'s exception (or None), failing the test if it is still running after ``seconds``."""
    result = {}

    def run():
        try:
            call()
            result["error"] = None
        except Exception as exc:  # noqa: BLE001 (the test inspects it)
            result["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert "error" in result, f"{call} still running after {seconds} s (blocked?)"
    return result["error"]


def unblock(fifo: Path) -> None:
    """Open the writing end so a reader stuck on the pipe returns (when the guard failed)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(fifo) else None
    if fd is not None:
        os.close(fd)


def _has_reader(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        return True
    except OSError:
        return False


# --- the shared reader ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_read_regular_refuses_what_is_not_a_regular_file(tmp_path, kind):
    path = {"device": Path("/dev/zero"), "folder": tmp_path}.get(kind, tmp_path / "pipe")
    if kind == "fifo":
        os.mkfifo(path)
    err = finishes(lambda: gio.read_regular(path, 1 << 20, CheckpointError))
    unblock(path) if kind == "fifo" else None
    assert isinstance(err, CheckpointError), err
    assert str(path) in str(err) and "not a regular file" in str(err)


def test_read_regular_caps_the_bytes_it_reads(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 1001)
    assert gio.read_regular(path, 1001) == b"x" * 1001
    with pytest.raises(CheckpointError, match=f"{path}: is 1001 bytes, more than the 1000"):
        gio.read_regular(path, 1000)


def test_read_regular_counts_bytes_instead_of_trusting_the_size():
    # /proc files say 0 bytes and hold more: only counting while reading catches them
    path = Path("/proc/self/maps")
    if not path.exists() or path.stat().st_size != 0:
        pytest.skip("no /proc file reporting size 0 here")
    with pytest.raises(ValueError, match="more than the 16 bytes allowed"):
        gio.read_regular(path, 16, ValueError)


def test_read_regular_names_a_missing_file_with_the_callers_error(tmp_path):
    with pytest.raises(KeyError, match="nope.bin: cannot be read: no such file"):
        gio.read_regular(tmp_path / "nope.bin", 10, KeyError)


# --- read_npz: bombs and caps ---------------------------------------------------------
def _npz(path: Path, arrays: dict, compress: bool = False) -> Path:
    """A graphnet .npz of ``arrays`` (model kind: its config is not checked by read_npz)."""
    gio.atomic_write_npz(path, arrays, {"kind": "weights"})
    if compress:  # rewrite every member deflated
        members = {}
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: zf.read(i) for i in zf.infolist()}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    return path


def test_a_zip_declaring_more_than_the_cap_is_refused_before_inflating(tmp_path, monkeypatch):
    path = _npz(tmp_path / "bomb.npz", {"z": np.zeros(2_000_000, np.uint8)}, compress=True)
    assert path.stat().st_size < 50_000  # two megabytes of zeros deflate to a few kilobytes
    inflated = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **k: inflated.append(name) or
                        real_open(self, name, *a, **k))
    with pytest.raises(CheckpointError, match=r"declare \d+ bytes once inflated, more than "
                                              r"the 1000000 allowed"):
        gio.read_npz(path, max_bytes=1_000_000)
    assert inflated == []
    arrays, _ = gio.read_npz(path, max_bytes=3_000_000)
    assert arrays["z"].shape == (2_000_000,)


def test_a_file_larger_than_the_cap_is_refused_by_name(tmp_path):
    path = _npz(tmp_path / "w.npz", {"w": np.ones(1000)})
    with pytest.raises(CheckpointError, match=f"{path}: is \\d+ bytes, more than the 5000"):
        gio.read_npz(path, max_bytes=5000)


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    path = _npz(tmp_path / "w.npz", {f"a{i}": np.ones(1) for i in range(5)})
    monkeypatch.setattr(gio, "MAX_NPZ_MEMBERS", 4)
    with pytest.raises(CheckpointError, match="holds 6 members, more than the 4"):
        gio.read_npz(path)


# --- non-finite weights -----------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_read_npz_names_the_array_and_counts_its_non_finite_values(tmp_path, bad):
    w = np.ones((3, 4), np.float32)
    w[0, 1] = w[2, 2] = bad
    path = _npz(tmp_path / "w.npz", {"ok": np.ones(3), "net.0.W": w, "n": np.arange(3)})
    with pytest.raises(CheckpointError, match=r"array 'net.0.W' holds 2 non-finite values "
                                              r"\(NaN or inf\) out of 12"):
        gio.read_npz(path)
    arrays, _ = gio.read_npz(path, finite=False)  # the raw reader can still look at it
    assert np.isnan(arrays["net.0.W"][0, 1]) == math.isnan(bad)


def _classifier() -> nn.Classifier:
    return nn.Classifier(nn.MLP([8, 10], 784, "tanh"), (784,))


def _poison(path: Path, key: str, out: Path) -> Path:
    """A copy of the .npz at ``path`` with one NaN in array ``key``."""
    arrays, meta = gio.read_npz(path)
    arrays = {k: v.copy() for k, v in arrays.items()}
    arrays[key].flat[0] = np.nan
    gio.atomic_write_npz(out, arrays, {k: v for k, v in meta.items()
                                       if k not in ("format", "version")})
    return out


def test_nn_load_refuses_a_model_with_nan_weights(tmp_path, backend):
    model = _classifier()
    model.save(tmp_path / "m.npz")
    bad = _poison(tmp_path / "m.npz", "net.0.W", tmp_path / "nan.npz")
    with pytest.raises(CheckpointError, match=f"{bad}: array 'net.0.W' holds 1 non-finite"):
        nn.load(bad)
    good = nn.load(tmp_path / "m.npz")
    for (k, p), q in zip(model.named_arrays().items(), good.named_arrays().values()):
        assert_close(q.value, p.value, what=k)


def test_resume_refuses_a_checkpoint_with_nan_optimizer_state(tmp_path, backend):
    model = _classifier()
    trainer = Trainer(model, optim.Adam(model.parameters()), batch_size=8, progress=False,
                      checkpoint_dir=tmp_path)
    rng = np.random.default_rng(0)
    trainer.fit(rng.integers(0, 256, (16, 784), dtype=np.uint8), np.arange(16) % 10, epochs=1)
    path = trainer.save_checkpoint()
    keys = [k for k in gio.read_npz(path)[0] if k.startswith("optim/")]
    bad = _poison(path, keys[0], tmp_path / "nan.npz")
    other = _classifier()
    again = Trainer(other, optim.Adam(other.parameters()), batch_size=8, progress=False)
    with pytest.raises(CheckpointError, match=f"array '{keys[0]}' holds 1 non-finite"):
        again.load_checkpoint(bad)
    again.load_checkpoint(path)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_the_parameter_setter_refuses_non_finite_values_by_name(backend, bad):
    p = gn.Parameter(np.ones((2, 3)), name="W")
    new = np.full((2, 3), 2.0)
    new[1, :2] = bad
    with pytest.raises(ArgumentError, match=r"parameter 'W': the new value holds 2 NaN or inf "
                                            r"values out of 6"):
        p.value = new
    assert_close(p.value, np.ones((2, 3)), what="W after the refused value")
    p.value = np.full((2, 3), 2.0)
    assert_close(p.value, np.full((2, 3), 2.0), what="W")


def test_check_finite_ignores_integers_and_names_floats():
    gio.check_finite(np.arange(3), "ints")
    with pytest.raises(ArgumentError, match="x holds 1 non-finite value \\(NaN or inf\\) out of 2"):
        gio.check_finite(np.array([1.0, np.inf]), "x")


# --- paths ------------------------------------------------------------------------------
@pytest.mark.parametrize("path, message", [
    ("a" * 300, "--out: .* has a component of 300 bytes"),
    ("/tmp/" + "d/" * 2100, "--out: the path is 4205 bytes long"),
    ("", "--out: '' is not a file path"),
    ("a\0b", "is not a file path"),
    (3, "--out: expected a file path, got int 3"),
])
def test_check_path_names_the_argument_and_the_problem(path, message):
    with pytest.raises(ArgumentError, match=message):
        gio.check_path(path, "--out")


def test_check_path_accepts_ordinary_paths(tmp_path):
    assert gio.check_path(tmp_path / ("b" * 255), "--out") == tmp_path / ("b" * 255)


# --- MNIST IDX files --------------------------------------------------------------------
def _labels(n: int = 4) -> bytes:
    return mnist.encode_idx(np.arange(n, dtype=np.uint8) % 10)


def test_mnist_reader_refuses_a_pipe_a_device_and_a_folder(tmp_path):
    fifo = tmp_path / "labels"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        err = finishes(lambda: mnist.read_idx(path))
        assert isinstance(err, mnist.MNISTError) and "not a regular file" in str(err), err
        assert str(path) in str(err)
    unblock(fifo)


def test_mnist_gzip_bomb_is_refused_once_past_the_cap(tmp_path, monkeypatch):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(_labels(4) + bytes(5_000_000)))
    monkeypatch.setattr(mnist, "MAX_IDX_BYTES", 1_000_000)
    inflated = []
    real = zlib.decompressobj

    class Recording:  # records how many bytes each inflation step returns
        def __init__(self, *args):
            self.inner = real(*args)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def decompress(self, *args):
            out = self.inner.decompress(*args)
            inflated.append(len(out))
            return out
    monkeypatch.setattr(zlib, "decompressobj", Recording)
    with pytest.raises(mnist.MNISTError, match="inflates to more than 1000000 bytes"):
        mnist.read_idx(path)
    assert inflated and max(inflated) <= 1_000_001  # stopped at the cap, not inflated whole


def test_mnist_gzip_with_trailing_bytes_or_cut_short_is_refused(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(_labels()))
    np.testing.assert_array_equal(mnist.read_idx(path), np.arange(4) % 10)
    path.write_bytes(gzip.compress(_labels()) + b"junk")
    with pytest.raises(mnist.MNISTError, match="4 bytes after its gzip stream"):
        mnist.read_idx(path)
    path.write_bytes(gzip.compress(_labels())[:-12])
    with pytest.raises(mnist.MNISTError, match="truncated"):
        mnist.read_idx(path)


def test_mnist_load_names_a_folder_standing_in_for_a_file(tmp_path):
    for name in mnist.FILES:
        (tmp_path / name).mkdir()
    with pytest.raises(mnist.MNISTError, match="not a regular file"):
        mnist.load(tmp_path, download=False)


# --- JSON files (metrics.json, config.json) ---------------------------------------------
def test_read_json_file_reads_and_names_each_problem(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"test_accuracy": 0.9}')
    assert gio.read_json_file(path) == {"test_accuracy": 0.9}
    for content, message in ((b"{", "not valid JSON"), (b"\xff", "not valid JSON"),
                             (b"[" * 100 + b"]" * 100, "JSON nested more than 64"),
                             (b"[" * 100_000 + b"]" * 100_000, "JSON nested|not valid JSON")):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"{path}: ({message})"):
            gio.read_json_file(path, error=ValueError)
    with pytest.raises(ValueError, match="more than the 10 allowed"):
        gio.read_json_file(path, max_bytes=10, error=ValueError)
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    err = finishes(lambda: gio.read_json_file(fifo, error=ValueError))
    unblock(fifo)
    assert isinstance(err, ValueError) and "not a regular file" in str(err)


def test_running_statistics_are_set_unchecked(backend):
    """BatchNorm's running mean may turn NaN when training diverges: that is the training
    loop's to report (DivergenceError), not an error from inside the forward pass."""
    p = gn.Parameter(np.zeros(3), name="running_mean", trainable=False)
    p.set_running(backend.xp.asarray(np.array([1.0, np.nan, 2.0])))
    got = backend.to_numpy(p.value)
    assert got.dtype == p.dtype and np.isnan(got[1]) and got[0] == 1.0 and got[2] == 2.0
