"""Hostile ONNX files are refused with a clear error, before anything is built; nothing
outside the model's folder is read (graphnet refuses external data altogether)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from onnx_cases import helper_mlp, helper_model, onnx_packages

onnx, ort = onnx_packages()
from graphnet import onnx as gx  # noqa: E402


def _save(tmp_path, proto, name="model.onnx"):
    path = tmp_path / name
    path.write_bytes(proto.SerializeToString())
    return path


def _mlp():
    return helper_mlp(onnx, np.random.default_rng(0))


def test_garbage_and_truncated_files_are_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xfe not a protobuf at all \x00" * 10)
    with pytest.raises(gx.OnnxError, match="not a readable ONNX model"):
        gx.load(bad)
    data = _mlp().SerializeToString()
    for cut in (len(data) // 2, len(data) - 3, 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(gx.OnnxError, match=r"bad\.onnx"):
            gx.load(bad)


def test_an_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(gx.OnnxError, match="no graph with outputs"):
        gx.load(tmp_path / "empty.onnx")


@pytest.mark.parametrize("opset", [18, 11])
def test_an_opset_outside_the_supported_range_is_refused(tmp_path, opset):
    proto = helper_mlp(onnx, np.random.default_rng(0), opset=opset)
    with pytest.raises(gx.OnnxError, match=f"opset {opset} .* opsets 13 to 17"):
        gx.load(_save(tmp_path, proto))


def test_a_newer_ir_version_is_refused(tmp_path):
    proto = _mlp()
    proto.ir_version = onnx.IR_VERSION + 1
    with pytest.raises(gx.OnnxError, match="IR version"):
        gx.load(_save(tmp_path, proto))


def test_a_cycle_is_refused(tmp_path):
    h = onnx.helper
    nodes = [h.make_node("Add", ["x", "b"], ["a"], name="first"),
             h.make_node("Relu", ["a"], ["b"], name="second")]
    proto = helper_model(onnx, nodes, [("x", ["N", 2])], [("b", ["N", 2])])
    with pytest.raises(gx.OnnxError, match="cycle through nodes.*first"):
        gx.load(_save(tmp_path, proto))


def test_a_tensor_nothing_produces_is_refused(tmp_path):
    h = onnx.helper
    proto = helper_model(onnx, [h.make_node("Add", ["x", "ghost"], ["y"])], [("x", ["N", 2])],
                         [("y", ["N", 2])])
    with pytest.raises(gx.OnnxError, match="no input, initializer or node provides: \\['ghost'\\]"):
        gx.load(_save(tmp_path, proto))


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "weights.bin"])
def test_external_data_is_refused_and_not_read(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 120)
    (folder / "weights.bin").write_bytes(b"\0" * 120)
    proto = _mlp()
    w = proto.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    path = _save(folder, proto)
    before = {p: os.stat(p).st_atime_ns for p in (tmp_path / "secret.bin", folder / "weights.bin")}
    with pytest.raises(gx.OnnxError, match="initializer 'w1' refers to external data"):
        gx.load(path)
    assert {p: os.stat(p).st_atime_ns for p in before} == before


def test_dimensions_that_would_allocate_terabytes_are_refused(tmp_path):
    h, tp = onnx.helper, onnx.TensorProto
    huge = tp(name="w", data_type=tp.FLOAT, dims=[10**6, 10**6])  # declared, no data at all
    graph = h.make_graph([h.make_node("Add", ["x", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", tp.FLOAT, ["N", 10**6, 10**6])],
                         [h.make_tensor_value_info("y", tp.FLOAT, None)], [huge])
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    with pytest.raises(gx.OnnxError) as err:
        gx.load(_save(tmp_path, proto))
    assert "initializer 'w' declares shape (1000000, 1000000): 4e+12 bytes, more than this " \
        "machine's memory" in str(err.value)
    assert "input 'x' declares dimensions" in str(err.value)


def test_an_initializer_holding_fewer_values_than_its_shape_is_refused(tmp_path):
    proto = _mlp()
    w = proto.graph.initializer[0]
    w.raw_data = w.raw_data[:8]
    with pytest.raises(gx.OnnxError, match=r"declares shape \(5, 6\) \(30 values\) but holds 2"):
        gx.load(_save(tmp_path, proto))


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(gx.OnnxError, match="not a regular file"):
        gx.load(tmp_path)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)  # no writer: opening it for reading would block
    with pytest.raises(gx.OnnxError, match="not a regular file"):
        gx.load(fifo)


def test_an_endless_stream_is_refused():
    with pytest.raises(gx.OnnxError, match="not a regular file"):
        gx.load("/dev/zero")


def test_a_missing_file_and_a_bad_path_are_named(tmp_path):
    with pytest.raises(gx.OnnxError, match="no such ONNX file"):
        gx.load(tmp_path / "nope.onnx")
    with pytest.raises(gx.OnnxError, match="path must be a file path"):
        gx.load(42)
    with pytest.raises(gx.OnnxError, match="expected an onnx.ModelProto"):
        gx.from_proto(b"bytes")


def test_an_oversized_file_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    from graphnet.onnx import checks
    monkeypatch.setattr(checks, "MAX_FILE_BYTES", 100)
    path = _save(tmp_path, _mlp())
    with pytest.raises(gx.OnnxError, match="larger than 100 bytes"):
        gx.load(path)


def test_a_model_that_cannot_be_built_names_the_node(tmp_path):
    h = onnx.helper
    proto = helper_model(onnx, [h.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                         [("x", ["N", 3])], [("y", ["N", 2])],
                         [("w", np.ones((4, 2), np.float32))])
    with pytest.raises(gx.OnnxError, match=r"node 'mm' \(MatMul\): cannot be built: .*inner sizes"):
        gx.load(_save(tmp_path, proto))


def test_a_model_the_onnx_checker_rejects_is_refused(tmp_path):
    h = onnx.helper
    proto = helper_model(onnx, [h.make_node("MaxPool", ["x"], ["y"])],  # kernel_shape missing
                         [("x", ["N", 1, 4, 4])], [("y", ["N", 1, 2, 2])])
    with pytest.raises(gx.OnnxError, match="not a valid ONNX model"):
        gx.load(_save(tmp_path, proto))
