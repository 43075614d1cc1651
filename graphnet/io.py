"""Host-side file I/O: atomic ``.npz`` writes and safe, validated reads."""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Optional, Union

import numpy as np
from numpy.typing import ArrayLike

from .errors import ArgumentError, GraphnetError
from .hints import PathLike

FORMAT = "graphnet-checkpoint"
VERSION = 1


class CheckpointError(GraphnetError, ValueError):
    """A file is not a readable graphnet checkpoint, or does not fit the model."""


Content = Union[Iterable[bytes], Callable[[BinaryIO], None]]


def atomic_write(path: PathLike, content: Content,
                 verify: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``content`` (byte chunks, or a function writing into a binary file) to ``path``
    atomically: a temp file beside it, fsync, ``verify(temp path)``, rename, then an fsync of
    the folder so that the rename itself survives a crash. On any failure ``path`` is
    untouched and no temp file is left. The file gets the usual permissions (umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.writelines(content)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_npz(path: PathLike, arrays: Mapping[str, ArrayLike],
                     meta: Mapping[str, Any]) -> Path:
    """Write host arrays plus JSON metadata to ``path`` atomically (see :func:`atomic_write`)."""
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    header = {"format": FORMAT, "version": VERSION, **meta}
    payload["__meta__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **payload))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


MAX_NPZ_BYTES = 4 * 2**30   #: default cap on a .npz file and on its arrays' inflated bytes
MAX_NPZ_MEMBERS = 100_000


def read_npz(path: PathLike, finite: bool = True, max_bytes: int = MAX_NPZ_BYTES
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a graphnet ``.npz``; CheckpointError names the file on any problem.

    Total and bounded: only regular files of at most ``max_bytes`` are opened (a pipe or a
    device never blocks), the members' declared sizes are checked (at most ``max_bytes``
    together) before anything is inflated, every array's header is checked against the bytes
    the file really holds before anything is allocated, only real numeric arrays are read (no
    pickle, no complex, strings or objects), and the metadata must be small, shallow JSON of
    a known version. ``finite``: refuse floating arrays holding NaN or inf, naming the array.
    """
    path = Path(path)
    with open_regular(path, CheckpointError, max_bytes) as f:
        if f.read(6) == b"\x93NUMPY":
            raise CheckpointError(f"{path}: is a single-array .npy file, not a .npz checkpoint")
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as zf:
                infos = _checked_members(path, zf, max_bytes)
                arrays = {info.filename[:-4]: _read_member(path, zf, info) for info in infos}
        except CheckpointError:
            raise
        except Exception as exc:  # untrusted bytes: whatever the zip or .npy parsers raise
            raise CheckpointError(f"{path}: not a readable .npz checkpoint (truncated or "
                                  f"corrupted?): {type(exc).__name__}: {str(exc)[:200]}") from None
    meta = _read_meta(path, arrays.pop("__meta__", None))
    if finite:
        for key, arr in arrays.items():
            check_finite(arr, f"{path}: array {key!r}", CheckpointError)
    return arrays, meta


def check_finite(arr: np.ndarray, what: str, error: Callable[[str], Exception] = ArgumentError
                 ) -> None:
    """Raise ``error`` naming ``what`` and how many values are NaN or inf, if any are."""
    if arr.dtype.kind != "f" or not arr.size:
        return
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise error(f"{what} holds {bad} non-finite value{'s' * (bad != 1)} (NaN or inf) "
                    f"out of {arr.size}; refusing it")


def _checked_members(path: Path, zf: zipfile.ZipFile, max_bytes: int) -> list[zipfile.ZipInfo]:
    """The zip's members, once their count and declared sizes are known to be bounded."""
    infos = zf.infolist()
    if len(infos) > MAX_NPZ_MEMBERS:
        raise CheckpointError(f"{path}: holds {len(infos)} members, more than the "
                              f"{MAX_NPZ_MEMBERS} a checkpoint may have")
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise CheckpointError(f"{path}: its arrays declare {declared} bytes once inflated, more "
                              f"than the {max_bytes} allowed: refused (a zip bomb?)")
    return infos


MAX_META_BYTES = 16 * 2**20
MAX_META_DEPTH = 64
# Top-level metadata entries each kind of file must have, with their JSON type.
REQUIRED = {"model": {"model": dict}, "checkpoint": {"model": dict, "optimizer": dict, "state": dict}}


def open_regular(path: PathLike, error: Callable[[str], Exception] = CheckpointError,
                 max_bytes: Optional[int] = None) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file (checked without blocking)
    of at most ``max_bytes`` by its size; otherwise ``error`` naming the file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: cannot be read: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise error(f"{path}: cannot be read: {_reason(exc)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is not a regular file (a folder, pipe or device)")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{path}: is {st.st_size} bytes, more than the {max_bytes} allowed")
    try:  # O_NONBLOCK: should it have become a pipe since the stat, opening still returns
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"{path}: cannot be opened: {_reason(exc)}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{path}: is not a regular file (a folder, pipe or device)")
    return os.fdopen(fd, "rb")


def read_regular(path: PathLike, max_bytes: int,
                 error: Callable[[str], Exception] = CheckpointError) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them (counted while
    reading, not trusted to the file's size); otherwise ``error`` naming the file."""
    with open_regular(path, error, max_bytes) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot be read: {_reason(exc)}") from None
    if len(data) > max_bytes:
        raise error(f"{path}: holds more than the {max_bytes} bytes allowed (still growing?)")
    return data


MAX_JSON_BYTES = 64 * 2**20


def read_json_file(path: PathLike, max_bytes: int = MAX_JSON_BYTES,
                   error: Callable[[str], Exception] = CheckpointError) -> Any:
    """The JSON value in the regular file ``path`` (at most ``max_bytes``, nested at most
    MAX_META_DEPTH deep); otherwise ``error`` naming the file."""
    data = read_regular(path, max_bytes, error)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if _depth(value) > MAX_META_DEPTH:
        raise error(f"{path}: JSON nested more than {MAX_META_DEPTH} levels deep")
    return value


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))[:200]


NAME_MAX, PATH_MAX = 255, 4096  # bytes, POSIX limits of Linux file systems


def check_path(path: Any, name: str) -> Path:
    """``path`` as a Path, if it can name a file here: a non-empty str or path of at most
    PATH_MAX bytes without NUL, each component at most NAME_MAX bytes; otherwise
    ArgumentError naming the argument ``name`` (e.g. ``--out``) and the culprit."""
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f"{name}: expected a file path, got {type(path).__name__} {path!r:.80}")
    text = os.fspath(path)
    shown = text if len(text) <= 80 else text[:60] + "..." + text[-15:]
    raw = os.fsencode(text)
    if not raw or b"\0" in raw:
        raise ArgumentError(f"{name}: {shown!r} is not a file path (empty, or holds a NUL byte)")
    if len(raw) >= PATH_MAX:
        raise ArgumentError(f"{name}: the path is {len(raw)} bytes long, more than the "
                            f"{PATH_MAX - 1} a path may have: {shown!r}")
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            bad = os.fsdecode(part)
            raise ArgumentError(f"{name}: {shown!r} has a component of {len(part)} bytes "
                                f"({bad[:30]!r}...), more than the {NAME_MAX} a file name may have")
    return Path(text)


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, its header checked before its data is allocated."""
    name = info.filename
    if not name.endswith(".npy"):
        raise CheckpointError(f"{path}: holds {name!r}, which is not a .npy array")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > 1100 * info.compress_size + 2**20:
        raise CheckpointError(f"{path}: member {name!r} claims {info.file_size} bytes from "
                              f"{info.compress_size} compressed: refused (a zip bomb?)")
    key = name[:-4]
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise CheckpointError(f"{path}: array {key!r} has .npy format version {version}, "
                                  "which graphnet does not read")
        _check_dtype(path, key, dtype)
        count = 1
        for d in shape:
            count *= d
        nbytes = count * dtype.itemsize
        held = info.file_size - fp.tell()
        if nbytes != held:
            raise CheckpointError(f"{path}: array {key!r} claims shape {shape} ({nbytes} bytes) "
                                  f"but the file holds {held} bytes for it (truncated or forged)")
        buf = bytearray(nbytes)
        if fp.readinto(buf) != nbytes or fp.read(1):
            raise CheckpointError(f"{path}: array {key!r} is truncated")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _check_dtype(path: Path, key: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise CheckpointError(f"{path}: array {key!r} holds pickled Python objects, which "
                              "graphnet never loads (allow_pickle is off)")
    if dtype.kind not in "biuf":
        what = {"c": "complex numbers (graphnet stores real arrays only)",
                "U": "strings", "S": "bytes", "V": "structured records"}.get(dtype.kind, "")
        raise CheckpointError(f"{path}: array {key!r} has dtype {dtype}"
                              + (f": {what}" if what else "") + "; only real numbers are read")


def _read_meta(path: Path, raw: Optional[np.ndarray]) -> dict[str, Any]:
    """The JSON metadata, checked: small, shallow, a dict of the graphnet format and a known version."""
    if raw is None:
        raise CheckpointError(f"{path}: not a graphnet checkpoint (no metadata)")
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_META_BYTES:
        raise CheckpointError(f"{path}: checkpoint metadata is malformed (expected at most "
                              f"{MAX_META_BYTES} bytes of JSON)")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is corrupted: "
                              f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a graphnet checkpoint")
    if _depth(meta) > MAX_META_DEPTH:
        raise CheckpointError(f"{path}: checkpoint metadata is nested more than "
                              f"{MAX_META_DEPTH} levels deep")
    version = meta.get("version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path}: checkpoint format version must be a positive integer, "
                              f"got {version!r}")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer "
                              f"than this graphnet understands ({VERSION}); upgrade graphnet")
    kind_ = meta.get("kind")
    for key, kind in (REQUIRED.get(kind_, {}) if isinstance(kind_, str) else {}).items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: a {meta['kind']} file needs a {key!r} entry "
                                  f"({kind.__name__}), got {meta.get(key)!r:.80}")
    if "model" in meta and not isinstance(meta["model"], dict):
        raise CheckpointError(f"{path}: the 'model' entry must be a dict, got "
                              f"{type(meta['model']).__name__}")
    return meta


def _depth(obj: object) -> int:
    """How deeply lists and dicts nest in ``obj`` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest
