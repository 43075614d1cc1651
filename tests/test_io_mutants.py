"""graphnet.io's .npz reader in the cases the mutation run of io.py found untested.

(Issue 25; see docs/testing.md, "Mutation testing".) What each refused dtype is called, .npy
headers of format 2.0, and every limit at its exact edge: the member count, the inflated
bytes, the metadata's depth and the compression ratio of a zip bomb.
"""
from __future__ import annotations

import io as pyio
import json
import os
import stat
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from graphnet import io
from graphnet.io import CheckpointError, read_npz

META = {"format": io.FORMAT, "version": io.VERSION}


def _npy(arr: np.ndarray, version=(1, 0)) -> bytes:
    buf = pyio.BytesIO()
    np.lib.format.write_array(buf, arr, version=version, allow_pickle=True)
    return buf.getvalue()


def _npz(path: Path, arrays: dict, meta: dict = META, version=(1, 0),
         compression=zipfile.ZIP_STORED) -> Path:
    """An .npz written member by member, whatever the arrays' dtypes (np.savez's layout)."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for key, arr in arrays.items():
            zf.writestr(f"{key}.npy", _npy(np.asarray(arr), version))
        raw = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        zf.writestr("__meta__.npy", _npy(raw))
    return path


def _refusal(path: Path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as err:
        read_npz(path, **kwargs)
    return str(err.value)


@pytest.mark.parametrize("arr,what", [
    (np.zeros(2, np.complex64), "complex numbers (graphnet stores real arrays only)"),
    (np.array(["ab"]), "strings"),
    (np.array([b"ab"]), "bytes"),
    (np.zeros(2, dtype=[("a", "<i4")]), "structured records"),
    (np.zeros(2, "datetime64[s]"), None),
])
def test_each_refused_dtype_is_named_for_what_it_holds(tmp_path, arr, what):
    path = _npz(tmp_path / "x.npz", {"w": arr})
    tail = (f": {what}" if what else "") + "; only real numbers are read"
    assert _refusal(path) == f"{path}: array 'w' has dtype {arr.dtype}{tail}"


def test_pickled_objects_are_refused_before_anything_is_unpickled(tmp_path):
    path = _npz(tmp_path / "x.npz", {"w": np.array([{"a": 1}], dtype=object)})
    assert _refusal(path) == (f"{path}: array 'w' holds pickled Python objects, which graphnet "
                              "never loads (allow_pickle is off)")


def test_npy_format_2_headers_are_read(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.arange(3)}
    got, meta = read_npz(_npz(tmp_path / "x.npz", arrays, version=(2, 0)))
    assert meta == META and sorted(got) == ["n", "w"]
    for key, arr in arrays.items():
        assert got[key].dtype == arr.dtype and np.array_equal(got[key], arr)


def test_npy_format_3_is_refused_by_name(tmp_path):
    path = _npz(tmp_path / "x.npz", {"w": np.zeros(2)}, version=(3, 0))
    assert _refusal(path) == (f"{path}: array 'w' has .npy format version (3, 0), which "
                              "graphnet does not read")


def test_the_member_count_limit_is_inclusive(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_NPZ_MEMBERS", 3)
    read_npz(_npz(tmp_path / "ok.npz", {"a": np.zeros(1), "b": np.zeros(1)}))  # 3 members
    path = _npz(tmp_path / "over.npz", {"a": np.zeros(1), "b": np.zeros(1), "c": np.zeros(1)})
    assert _refusal(path) == f"{path}: holds 4 members, more than the 3 a checkpoint may have"


def test_the_inflated_bytes_limit_is_inclusive(tmp_path):
    path = _npz(tmp_path / "x.npz", {"w": np.zeros(50_000)}, compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as zf:
        declared = sum(i.file_size for i in zf.infolist())
    assert path.stat().st_size < declared - 1
    read_npz(path, max_bytes=declared)
    assert _refusal(path, max_bytes=declared - 1) == (
        f"{path}: its arrays declare {declared} bytes once inflated, more than the "
        f"{declared - 1} allowed: refused (a zip bomb?)")


def _nested(depth: int) -> dict:
    meta, inner = dict(META), None
    node = meta
    for _ in range(depth - 1):
        inner = {}
        node["x"] = inner
        node = inner
    return meta


def test_metadata_may_nest_exactly_the_limit_deep(tmp_path):
    assert io._depth(_nested(io.MAX_META_DEPTH)) == io.MAX_META_DEPTH
    assert io._depth([[], [[1]]]) == 3 and io._depth(5) == 0
    read_npz(_npz(tmp_path / "ok.npz", {}, meta=_nested(io.MAX_META_DEPTH)))
    path = _npz(tmp_path / "deep.npz", {}, meta=_nested(io.MAX_META_DEPTH + 1))
    assert _refusal(path) == (f"{path}: checkpoint metadata is nested more than "
                              f"{io.MAX_META_DEPTH} levels deep")


def _claiming(path: Path, size: int) -> int:
    """Rewrite the central directory so that member ``w.npy`` claims ``size`` bytes; return
    its compressed size."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        compressed = zf.getinfo("w.npy").compress_size
    at = [m.start() for m in re.finditer(b"PK\x01\x02", data)
          if data[m.start() + 46:m.start() + 51] == b"w.npy"][0]
    data[at + 24:at + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(data))
    return compressed


def test_a_member_claiming_more_than_1100_to_1_plus_a_mebibyte_is_a_zip_bomb(tmp_path):
    edge = _npz(tmp_path / "edge.npz", {"w": np.zeros(1000)}, compression=zipfile.ZIP_DEFLATED)
    over = _npz(tmp_path / "over.npz", {"w": np.zeros(1000)}, compression=zipfile.ZIP_DEFLATED)
    c = _claiming(edge, 0)
    _claiming(edge, 1100 * c + 2**20)
    _claiming(over, 1100 * c + 2**20 + 1)
    assert "zip bomb" not in _refusal(edge)  # allowed by the ratio, refused for other reasons
    assert _refusal(over) == (f"{over}: member 'w.npy' claims {1100 * c + 2**20 + 1} bytes from "
                              f"{c} compressed: refused (a zip bomb?)")


def test_a_fortran_ordered_array_keeps_its_values(tmp_path):
    arr = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    assert np.lib.format.header_data_from_array_1_0(arr)["fortran_order"]
    got, _ = read_npz(_npz(tmp_path / "x.npz", {"w": arr}))
    assert np.array_equal(got["w"], arr)


def test_a_member_that_is_not_an_array_is_named(tmp_path):
    path = _npz(tmp_path / "x.npz", {"w": np.zeros(2)})
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("notes.txt", b"hello")
    assert _refusal(path) == f"{path}: holds 'notes.txt', which is not a .npy array"


def test_atomic_write_makes_missing_folders_and_verifies_a_temp_file_beside_the_target(tmp_path):
    target = tmp_path / "new" / "deeper" / "m.npz"
    seen = []

    def verify(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.read_bytes() == b"abcdef"  # flushed before it is verified

    io.atomic_write(target, [b"abc", b"def"], verify)  # byte chunks
    assert target.read_bytes() == b"abcdef"
    (tmp,) = seen
    assert tmp.parent == target.parent and tmp.name.startswith("m.npz.")
    assert tmp.name.endswith(".tmp") and not tmp.exists()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600


@pytest.mark.parametrize("meta,message", [
    ({**META, "kind": "model", "model": [1]}, "a model file needs a 'model' entry (dict), got [1]"),
    ({**META, "model": "mlp"}, "the 'model' entry must be a dict, got str"),
])
def test_malformed_model_entries_are_named(tmp_path, meta, message):
    path = _npz(tmp_path / "x.npz", {}, meta=meta)
    assert _refusal(path) == f"{path}: {message}"


def test_the_metadata_size_limit_is_inclusive(tmp_path, monkeypatch):
    raw = json.dumps(META).encode()
    monkeypatch.setattr(io, "MAX_META_BYTES", len(raw))
    read_npz(_npz(tmp_path / "ok.npz", {}))
    path = _npz(tmp_path / "big.npz", {}, meta={**META, "x": 1})
    assert _refusal(path) == (f"{path}: checkpoint metadata is malformed (expected at most "
                              f"{len(raw)} bytes of JSON)")


@pytest.mark.parametrize("name,reason", [("file.npz/inside.npz", "Not a directory"),
                                         ("nul\0byte.npz", "embedded null byte")])
def test_an_unreadable_path_says_why_in_words(tmp_path, name, reason):
    (tmp_path / "file.npz").write_bytes(b"x")
    path = f"{tmp_path}/{name}"
    assert _refusal(Path(path) if "\0" not in name else path) == \
        f"{path}: cannot be read: {reason}"


def test_a_path_of_path_max_bytes_is_refused_showing_its_ends(tmp_path):
    limit = io.PATH_MAX
    fine = "a/" * ((limit - 2) // 2) + "b"  # limit - 1 bytes, short components
    assert len(fine) == limit - 1 and io.check_path(fine, "--out") == Path(fine)
    long = fine + "c"
    with pytest.raises(io.ArgumentError) as err:
        io.check_path(long, "--out")
    assert str(err.value) == (f"--out: the path is {limit} bytes long, more than the {limit - 1} "
                              f"a path may have: {long[:60] + '...' + long[-15:]!r}")


@pytest.mark.parametrize("length", [80, 81])
def test_a_path_is_shown_whole_up_to_80_characters(length):
    text = "x" * (length - 1) + "\0"
    shown = text if length <= 80 else text[:60] + "..." + text[-15:]
    with pytest.raises(io.ArgumentError) as err:
        io.check_path(text, "--model")
    assert str(err.value) == (f"--model: {shown!r} is not a file path (empty, or holds a NUL "
                              "byte)")


def test_metadata_that_is_missing_malformed_or_not_json_is_named(tmp_path):
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", _npy(np.zeros(2)))
    assert _refusal(path) == f"{path}: not a graphnet checkpoint (no metadata)"
    for raw in (np.zeros(4, np.int32), np.zeros((2, 2), np.uint8)):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("__meta__.npy", _npy(raw))
        assert _refusal(path).startswith(f"{path}: checkpoint metadata is malformed (expected")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__meta__.npy", _npy(np.frombuffer(b"{not json", np.uint8)))
    assert _refusal(path) == (f"{path}: checkpoint metadata is corrupted: JSONDecodeError: "
                              "Expecting property name enclosed in double quotes: line 1 "
                              "column 2 (char 1)")


def test_a_kind_that_is_not_a_string_has_no_required_entries(tmp_path):
    _, meta = read_npz(_npz(tmp_path / "x.npz", {}, meta={**META, "kind": ["model"]}))
    assert meta["kind"] == ["model"]  # the callers compare kind with "checkpoint" or "model"


def test_bytes_that_are_not_a_zip_are_named_unreadable(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert _refusal(path) == (f"{path}: not a readable .npz checkpoint (truncated or "
                              "corrupted?): BadZipFile: File is not a zip file")


def test_a_path_component_over_name_max_is_shown_by_its_first_30_characters():
    part = "n" * 40 + "m" * (io.NAME_MAX - 39)
    with pytest.raises(io.ArgumentError) as err:
        io.check_path(f"runs/{part}/model.npz", "--out")
    assert f"has a component of {io.NAME_MAX + 1} bytes ('{'n' * 30}'...), more than the " \
           f"{io.NAME_MAX} a file name may have" in str(err.value)


def test_read_json_file_names_bad_json_its_depth_limit_and_raises_the_callers_error(tmp_path):
    class Mine(ValueError):
        pass
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(Mine) as err:
        io.read_json_file(bad, error=Mine)
    assert str(err.value) == (f"{bad}: not valid JSON: JSONDecodeError: Expecting property name "
                              "enclosed in double quotes: line 1 column 2 (char 1)")
    with pytest.raises(Mine, match="cannot be read: no such file"):
        io.read_json_file(tmp_path / "missing.json", error=Mine)
    edge, deep = tmp_path / "edge.json", tmp_path / "deep.json"
    edge.write_text("[" * io.MAX_META_DEPTH + "]" * io.MAX_META_DEPTH)
    deep.write_text("[" * (io.MAX_META_DEPTH + 1) + "]" * (io.MAX_META_DEPTH + 1))
    assert io._depth(io.read_json_file(edge)) == io.MAX_META_DEPTH
    with pytest.raises(CheckpointError, match=f"JSON nested more than {io.MAX_META_DEPTH} levels"):
        io.read_json_file(deep)
