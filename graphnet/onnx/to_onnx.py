"""One converter per graphnet op (by ``node.op``): ``convert(em, node, inputs, out)`` appends
the ONNX nodes computing ``out`` from the input tensor names."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .support import OnnxError

INT64_MAX, INT64_MIN = 2**63 - 1, -2**63


def _same(op_type: str) -> Callable:
    def convert(em, node, ins, out):
        em.add(op_type, ins, out)
    return convert


def _power(em, node, ins, out):
    em.add("Pow", [ins[0], em.fixed(np.asarray(node.exponent, np.dtype(node.dtype)), "exponent")], out)


def _transpose(em, node, ins, out):
    perm = node.axes if node.axes is not None else tuple(reversed(range(len(node.shape))))
    em.add("Transpose", ins, out, perm=list(perm))


def _linear(em, node, ins, out):
    em.add("Gemm", ins, out)


def _reshape(em, node, ins, out):
    em.add("Reshape", [ins[0], em.ints(node.target, "shape")], out,
           **({"allowzero": 1} if 0 in node.target else {}))


def _softmax(op_type: str) -> Callable:
    def convert(em, node, ins, out):
        em.add(op_type, ins, out, axis=node.axis)
    return convert


def _reduce_axes(node) -> Any:
    axis = node.axis
    return None if axis is None else [int(a) for a in ((axis,) if np.ndim(axis) == 0 else axis)]


def _sum(em, node, ins, out):
    axes = _reduce_axes(node)
    em.add("ReduceSum", ins + ([em.ints(axes, "axes")] if axes is not None else []), out,
           keepdims=int(node.keepdims))


def _mean(em, node, ins, out):
    axes = _reduce_axes(node)
    em.add("ReduceMean", ins, out, keepdims=int(node.keepdims),
           **({"axes": axes} if axes is not None else {}))


def _concat(em, node, ins, out):
    em.add("Concat", ins, out, axis=node.axis)


def _conv(em, node, ins, out):
    (ph, pw), w = node.padding, node.inputs[1].shape
    em.add("Conv", ins, out, strides=list(node.stride), pads=[ph, pw, ph, pw],
           **({"kernel_shape": list(w[2:])} if w is not None and None not in w[2:] else {}))


def _pool(op_type: str) -> Callable:
    def convert(em, node, ins, out):
        em.add(op_type, ins, out, kernel_shape=list(node.size), strides=list(node.stride))
    return convert


def _batch_norm(em, node, ins, out):
    if node.running is None:
        raise OnnxError(f"cannot export node {node.name!r}: batch_norm without running statistics "
                        "normalises by each batch's own statistics, which ONNX inference has no "
                        "op for (give the layer running_mean/running_var)")
    em.add("BatchNormalization", ins, out, epsilon=float(node.eps), momentum=1.0 - node.momentum)


def _cross_entropy(em, node, ins, out):
    labels = node.inputs[1]
    if labels.dtype is not None and np.dtype(labels.dtype).kind in "iu":
        em.add("SoftmaxCrossEntropyLoss", ins, out, reduction="mean")
        return
    logp = em.add("LogSoftmax", [ins[0]], axis=1)
    per_row = em.add("ReduceSum", [em.add("Mul", [logp, ins[1]]), em.ints([1], "axes")], keepdims=0)
    em.add("Neg", [em.add("ReduceMean", [per_row], keepdims=0)], out)


def _mse(em, node, ins, out):
    d = em.add("Sub", ins)
    em.add("ReduceMean", [em.add("Mul", [d, d])], out, keepdims=0)


def _getitem(em, node, ins, out):
    """Basic indexing (ints, slices, None, ...) as Slice/Squeeze/Unsqueeze; one integer
    array (the other items slices) as Gather."""
    items = _expand(node)
    arrays = [k for k, it in enumerate(items) if isinstance(it, (list, np.ndarray))]
    if arrays and (len(arrays) > 1 or any(isinstance(it, int) for it in items)):
        raise OnnxError(f"cannot export node {node.name!r}: index {node.index!r} mixes several "
                        "integer arrays or arrays and integers (only one integer array is exported)")
    starts, ends, axes, steps, drop, insert = [], [], [], [], [], []
    axis = pos = 0
    for it in items:
        if it is None:
            insert.append(pos)
            pos += 1
            continue
        if isinstance(it, slice) and it != slice(None):
            step = 1 if it.step is None else it.step
            starts.append(it.start if it.start is not None else (0 if step > 0 else INT64_MAX))
            ends.append(it.stop if it.stop is not None else (INT64_MAX if step > 0 else INT64_MIN))
            axes.append(axis), steps.append(step)
        elif isinstance(it, int):
            starts.append(it), ends.append(it + 1 if it != -1 else INT64_MAX)
            axes.append(axis), steps.append(1), drop.append(axis)
        pos += 0 if isinstance(it, int) else 1 if isinstance(it, slice) else np.ndim(it)
        axis += 1
    x = ins[0]
    if axes:
        x = em.add("Slice", [x, em.ints(starts, "starts"), em.ints(ends, "ends"),
                             em.ints(axes, "axes"), em.ints(steps, "steps")])
    if drop:
        x = em.add("Squeeze", [x, em.ints(drop, "axes")])
    if arrays:
        k = arrays[0]
        data_axis = k - sum(1 for i in items[:k] if i is None or isinstance(i, int))
        x = em.add("Gather", [x, em.const(np.asarray(items[k], np.int64), "indices")], axis=data_axis)
    em.add("Unsqueeze", [x, em.ints(insert, "axes")], out) if insert else em.add("Identity", [x], out)


def _expand(node) -> list:
    """The index items with Ellipsis expanded and trailing full slices added."""
    items = list(node.index) if isinstance(node.index, tuple) else [node.index]
    rank = len(node.inputs[0].shape)
    real = sum(1 for i in items if i is not None and i is not Ellipsis)
    k = next((k for k, i in enumerate(items) if i is Ellipsis), None)  # not ``in``: arrays
    if k is not None:
        items[k:k + 1] = [slice(None)] * (rank - real)
    items += [slice(None)] * (rank - sum(1 for i in items if i is not None))
    return [int(i) if isinstance(i, (int, np.integer)) else i for i in items]


CONVERTERS: dict[str, Callable] = {
    "add": _same("Add"), "sub": _same("Sub"), "mul": _same("Mul"), "div": _same("Div"),
    "neg": _same("Neg"), "pow": _power, "matmul": _same("MatMul"), "transpose": _transpose,
    "linear": _linear, "reshape": _reshape, "flatten": _same("Flatten"), "getitem": _getitem,
    "concat": _concat, "sum": _sum, "mean": _mean, "tanh": _same("Tanh"),
    "sigmoid": _same("Sigmoid"), "relu": _same("Relu"), "exp": _same("Exp"), "log": _same("Log"),
    "softmax": _softmax("Softmax"), "log_softmax": _softmax("LogSoftmax"),
    "dropout": _same("Identity"), "conv2d": _conv, "max_pool2d": _pool("MaxPool"),
    "avg_pool2d": _pool("AveragePool"), "batch_norm": _batch_norm,
    "softmax_cross_entropy": _cross_entropy, "mse": _mse,
}
