"""One builder per ONNX operator graphnet imports, with the attributes (and values) it
accepts. ``build(b, node, args, attrs)`` gets the input nodes (None for absent optional
inputs) and returns the graphnet node of the ONNX node's output."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .. import ops


@dataclass(frozen=True)
class Spec:
    build: Callable
    attrs: dict = field(default_factory=dict)   # name -> check(value) -> why not, or None
    max_inputs: int = 1
    consts: tuple = ()                          # input positions that must be constants


def _any(v: Any) -> Optional[str]:
    return None


def _equal(want: Any) -> Callable:
    return lambda v: None if v == want or (isinstance(v, bytes) and v.decode() == want) \
        else f"only {want!r} is supported"


def _ones(v: Any) -> Optional[str]:
    return None if all(d == 1 for d in v) else "only 1 is supported"


def _zeros(v: Any) -> Optional[str]:
    return None if all(d == 0 for d in v) else "pooling windows with padding are not supported"


def _pair(v: Any) -> Optional[str]:
    return None if len(v) == 2 else "only 2-D (H, W) windows are supported"


def _symmetric(v: Any) -> Optional[str]:
    ok = len(v) == 4 and v[0] == v[2] and v[1] == v[3]
    return None if ok else "only the same padding before and after (top = bottom, left = right)"


def _auto_pad(v: Any) -> Optional[str]:
    return None if v in (b"NOTSET", b"VALID", "NOTSET", "VALID") else "only NOTSET or VALID"


def _unary(fn: Callable) -> Spec:
    return Spec(lambda b, n, a, at: fn(a[0]))


def _binary(fn: Callable) -> Spec:
    return Spec(lambda b, n, a, at: fn(a[0], a[1]), max_inputs=2)


def _gemm(b, n, a, at):
    x = ops.transpose(a[0]) if at.get("transA", 0) else a[0]
    w = ops.transpose(a[1]) if at.get("transB", 0) else a[1]
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    c = a[2] if len(a) > 2 else None
    if alpha == 1.0 and beta == 1.0:
        return ops.linear(x, w, c)
    y = ops.linear(x, w)
    y = y * alpha if alpha != 1.0 else y
    return y if c is None else y + (c * beta if beta != 1.0 else c)


def _power(b, n, a, at):
    p = b.const(n.input[1])
    if p.size != 1:
        raise b.error(n, f"the exponent must be one number, got shape {p.shape}")
    p = float(p.reshape(()))
    return ops.power(a[0], int(p) if p.is_integer() else p)


def _reshape(b, n, a, at):
    x, target = a[0], [int(d) for d in b.const(n.input[1])]
    for i, d in enumerate(target):
        if d == 0:  # ONNX: copy the input's size
            known = x.shape is not None and i < len(x.shape) and x.shape[i] is not None
            if not known and -1 in target:
                raise b.error(n, f"target {target}: size 0 (copy) of an unknown input size "
                                 "together with -1 is not supported")
            target[i] = x.shape[i] if known else -1
    return ops.reshape(x, tuple(target))


def _axes_of(b, n, k: int) -> Optional[tuple]:
    return tuple(int(v) for v in b.const(n.input[k]).reshape(-1)) \
        if len(n.input) > k and n.input[k] else None


def _rank(b, n, x) -> int:
    if x.shape is None:
        raise b.error(n, "needs an input of known rank")
    return len(x.shape)


def _slice(b, n, a, at):
    x = a[0]
    starts, ends = _axes_of(b, n, 1), _axes_of(b, n, 2)
    axes = _axes_of(b, n, 3) or tuple(range(len(starts)))
    steps = _axes_of(b, n, 4) or (1,) * len(starts)
    rank = _rank(b, n, x)
    items = [slice(None)] * rank
    for s, e, ax, st in zip(starts, ends, axes, steps):
        items[ax % rank] = slice(s, e, st)
    return ops.getitem(x, tuple(items))


def _squeeze(b, n, a, at):
    x = a[0]
    rank = _rank(b, n, x)
    axes = _axes_of(b, n, 1)
    if axes is None:
        if None in x.shape:
            raise b.error(n, "Squeeze without axes needs a fully known input shape")
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    axes = {ax % rank for ax in axes}
    return ops.getitem(x, tuple(0 if i in axes else slice(None) for i in range(rank)))


def _unsqueeze(b, n, a, at):
    x = a[0]
    axes = _axes_of(b, n, 1)
    out_rank = _rank(b, n, x) + len(axes)
    axes = {ax % out_rank for ax in axes}
    return ops.getitem(x, tuple(None if i in axes else slice(None) for i in range(out_rank)))


def _gather(b, n, a, at):
    x, idx = a[0], b.const(n.input[1]).astype(np.int64)
    axis = at.get("axis", 0) % _rank(b, n, x)
    item = int(idx) if idx.ndim == 0 else idx
    return ops.getitem(x, (slice(None),) * axis + (item,))


def _conv(b, n, a, at):
    pads = at.get("pads", [0, 0, 0, 0])
    return ops.conv2d(a[0], a[1], a[2] if len(a) > 2 else None,
                      stride=tuple(at.get("strides", (1, 1))), padding=(pads[0], pads[1]))


def _pool(fn: Callable) -> Callable:
    def build(b, n, a, at):
        return fn(a[0], tuple(at["kernel_shape"]), tuple(at.get("strides", (1, 1))))
    return build


def _batch_norm(b, n, a, at):
    return ops.batch_norm(a[0], a[1], a[2], a[3], a[4], momentum=1.0 - at.get("momentum", 0.9),
                          eps=at.get("epsilon", 1e-5))


def _dropout(b, n, a, at):
    rate = float(b.const(n.input[1]).reshape(())) if len(n.input) > 1 and n.input[1] else 0.5
    return ops.dropout(a[0], rate)


def _reduce(fn: Callable, axes_input: bool) -> Callable:
    def build(b, n, a, at):
        axes = _axes_of(b, n, 1) if axes_input else at.get("axes")
        return fn(a[0], tuple(axes) if axes else None, bool(at.get("keepdims", 1)))
    return build


POOL_ATTRS = dict(auto_pad=_auto_pad, ceil_mode=_equal(0), kernel_shape=_pair, pads=_zeros,
                  strides=_pair)
SPECS: dict[str, Spec] = {
    "Add": _binary(ops.add), "Sub": _binary(ops.sub), "Mul": _binary(ops.mul),
    "Div": _binary(ops.div), "MatMul": _binary(ops.matmul), "Neg": _unary(ops.neg),
    "Relu": _unary(ops.relu), "Tanh": _unary(ops.tanh), "Sigmoid": _unary(ops.sigmoid),
    "Exp": _unary(ops.exp), "Log": _unary(ops.log), "Identity": _unary(lambda x: x),
    "Pow": Spec(_power, max_inputs=2, consts=(1,)),
    "Gemm": Spec(_gemm, dict(alpha=_any, beta=_any, transA=_any, transB=_any), max_inputs=3),
    "Softmax": Spec(lambda b, n, a, at: ops.softmax(a[0], at.get("axis", -1)), dict(axis=_any)),
    "LogSoftmax": Spec(lambda b, n, a, at: ops.log_softmax(a[0], at.get("axis", -1)),
                       dict(axis=_any)),
    "Flatten": Spec(lambda b, n, a, at: ops.flatten(a[0]), dict(axis=_equal(1))),
    "Reshape": Spec(_reshape, dict(allowzero=_equal(0)), max_inputs=2, consts=(1,)),
    "Transpose": Spec(lambda b, n, a, at: ops.transpose(a[0], at.get("perm")), dict(perm=_any)),
    "Concat": Spec(lambda b, n, a, at: ops.concat(list(a), at["axis"]), dict(axis=_any),
                   max_inputs=2**31),
    "ReduceSum": Spec(_reduce(ops.sum, True), dict(keepdims=_any, noop_with_empty_axes=_equal(0)),
                      max_inputs=2, consts=(1,)),
    "ReduceMean": Spec(_reduce(ops.mean, False), dict(axes=_any, keepdims=_any)),
    "Slice": Spec(_slice, max_inputs=5, consts=(1, 2, 3, 4)),
    "Squeeze": Spec(_squeeze, max_inputs=2, consts=(1,)),
    "Unsqueeze": Spec(_unsqueeze, max_inputs=2, consts=(1,)),
    "Gather": Spec(_gather, dict(axis=_any), max_inputs=2, consts=(1,)),
    "Conv": Spec(_conv, dict(auto_pad=_auto_pad, dilations=_ones, group=_equal(1),
                             kernel_shape=_pair, pads=_symmetric, strides=_pair), max_inputs=3),
    "MaxPool": Spec(_pool(ops.max_pool2d), dict(POOL_ATTRS, dilations=_ones,
                                                storage_order=_equal(0))),
    "AveragePool": Spec(_pool(ops.avg_pool2d), dict(POOL_ATTRS, count_include_pad=_any)),
    "BatchNormalization": Spec(_batch_norm, dict(epsilon=_any, momentum=_any,
                                                 training_mode=_equal(0)), max_inputs=5),
    "Dropout": Spec(_dropout, dict(seed=_any), max_inputs=2, consts=(1,)),
    "SoftmaxCrossEntropyLoss": Spec(lambda b, n, a, at: ops.softmax_cross_entropy(a[0], a[1]),
                                    dict(reduction=_equal("mean")), max_inputs=2),
    "Constant": Spec(lambda b, n, a, at: None, dict(value=_any), max_inputs=0),
}
