"""Shared by the ONNX tests: the packages (skip, or fail in CI), ONNX Runtime, and models
built with ``onnx.helper`` the way other frameworks export them."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest


def onnx_packages() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``; a skip naming the install command where they are missing
    (a failure where CI sets GRAPHNET_REQUIRE_ONNX=1)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        why = f"{exc}: ONNX support needs pip install \"graphnet[onnx]\""
        if os.environ.get("GRAPHNET_REQUIRE_ONNX") == "1":
            pytest.fail(f"GRAPHNET_REQUIRE_ONNX=1 but {why}", pytrace=False)
        pytest.skip(why, allow_module_level=True)
    return onnx, onnxruntime


def ort_run(proto: Any, feed: dict) -> list:
    """The outputs ONNX Runtime computes for ``feed`` ({input name: array})."""
    import onnxruntime
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _tensor(onnx: Any, name: str, array: np.ndarray) -> Any:
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def helper_mlp(onnx: Any, rng: np.random.Generator, opset: int = 17) -> Any:
    """(N, 6) -> Gemm(transB) -> Relu -> Gemm(transA on a transposed copy) -> Add (broadcast)
    -> Softmax: the torch-style dense layers."""
    h, oh = onnx.helper, onnx.TensorProto
    w1 = rng.standard_normal((5, 6)).astype(np.float32) * 0.5   # (out, in): transB=1
    b1 = rng.standard_normal(5).astype(np.float32) * 0.1
    w2 = rng.standard_normal((5, 4)).astype(np.float32) * 0.5
    shift = rng.standard_normal((1, 4)).astype(np.float32)
    nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1, alpha=1.0, beta=1.0),
             h.make_node("Relu", ["h1"], ["a1"]),
             h.make_node("Transpose", ["a1"], ["a1t"], perm=[1, 0]),
             h.make_node("Gemm", ["a1t", "w2"], ["h2"], transA=1, alpha=0.5),
             h.make_node("Add", ["h2", "shift"], ["logits"]),
             h.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", oh.FLOAT, ["N", 6])],
                         [h.make_tensor_value_info("probs", oh.FLOAT, ["N", 4])],
                         [_tensor(onnx, n, v) for n, v in
                          (("w1", w1), ("b1", b1), ("w2", w2), ("shift", shift))])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def helper_cnn(onnx: Any, rng: np.random.Generator, opset: int = 17) -> Any:
    """(N, 1, 8, 8) -> Conv (pads 1) -> Relu -> MaxPool 2 -> Flatten -> Reshape (constant
    shape) -> Gemm(transB) -> Softmax."""
    h, oh = onnx.helper, onnx.TensorProto
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(3).astype(np.float32) * 0.1
    fc = rng.standard_normal((5, 48)).astype(np.float32) * 0.2
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1],
                         kernel_shape=[3, 3]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Flatten", ["p"], ["f"], axis=1),
             h.make_node("Reshape", ["f", "shape"], ["f2"]),
             h.make_node("Gemm", ["f2", "fc"], ["logits"], transB=1),
             h.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("x", oh.FLOAT, ["N", 1, 8, 8])],
                         [h.make_tensor_value_info("probs", oh.FLOAT, ["N", 5])],
                         [_tensor(onnx, "w", w), _tensor(onnx, "b", b), _tensor(onnx, "fc", fc),
                          _tensor(onnx, "shape", np.array([-1, 48], np.int64))])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def helper_model(onnx: Any, nodes: list, inputs: list, outputs: list, initializers=(),
                 opset: int = 17) -> Any:
    """A model of ``nodes``; inputs/outputs as ``(name, dims)`` float32 tensors."""
    h, oh = onnx.helper, onnx.TensorProto
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, oh.FLOAT, d) for n, d in inputs],
                         [h.make_tensor_value_info(n, oh.FLOAT, d) for n, d in outputs],
                         [_tensor(onnx, n, v) for n, v in initializers])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
