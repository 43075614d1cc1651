"""Softmax, log-softmax and the losses: softmax cross-entropy and mean squared error."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..checks import integer
from ..errors import FeedError, GraphError, ShapeError
from ..kernels import kernel
from ..node import Input, Node, as_node
from ..shapes import describe, sum_to


class Softmax(Node):
    op = "softmax"

    def __init__(self, x: Any, axis: int = -1) -> None:
        x = as_node(x)
        self.axis = integer(axis, f"{self.op} axis")
        if x.shape is not None and not -len(x.shape) <= self.axis < max(len(x.shape), 1):
            raise ShapeError(f"{self.op} axis {self.axis} is out of range for {describe(x)} "
                             f"of rank {len(x.shape)}")
        super().__init__((x,), shape=x.shape)

    def forward(self, ctx, x):
        z = x - x.max(axis=self.axis, keepdims=True)
        e = ctx.xp.exp(z)
        e /= e.sum(axis=self.axis, keepdims=True)
        return e

    def backward(self, ctx, g, xs, y):
        gy = g * y
        return (gy - y * gy.sum(axis=self.axis, keepdims=True),)


class LogSoftmax(Softmax):
    op = "log_softmax"

    def forward(self, ctx, x):
        z = x - x.max(axis=self.axis, keepdims=True)
        z -= ctx.xp.log(ctx.xp.exp(z).sum(axis=self.axis, keepdims=True))
        return z

    def backward(self, ctx, g, xs, y):
        return (g - ctx.xp.exp(y) * g.sum(axis=self.axis, keepdims=True),)


class SoftmaxCrossEntropy(Node):
    """Mean over the batch of ``-log softmax(logits)[label]`` (or against soft targets).

    Labels must match the batch exactly: class indices of shape ``(N,)`` or targets of the
    logits' shape ``(N, C)``, never broadcast. A class index outside ``[0, C)`` never wraps
    round to another class: its loss term and its row of the gradient are NaN, so the cost
    is NaN, on every backend alike and with no host synchronisation (the check runs on the
    device; :func:`check_class_labels` names the culprit where a sync is affordable, e.g.
    once per epoch on the whole label vector).
    """

    op = "softmax_cross_entropy"

    def __init__(self, logits: Any, labels: Any) -> None:
        logits, labels = as_node(logits), as_node(labels)
        _check_labels(logits, labels)
        super().__init__((logits, labels), shape=(), dtype=logits.dtype)
        classes = logits.shape[-1] if logits.shape else None
        if isinstance(labels, Input) and classes is not None and labels.dtype is not None \
                and labels.dtype.kind in "iu":
            labels.host_checks[self.name] = functools.partial(
                check_fed_labels, classes=classes, name=labels.name, reader=self.name)

    def forward(self, ctx, logits, labels):
        self._check_run_shapes(logits, labels)
        out = ctx.empty(logits.shape, logits.dtype) if logits.dtype.kind == "f" else None
        loss, probs = ctx.kernels[softmax_ce_forward](ctx.b, logits, labels, out)
        ctx.save(probs)
        return loss

    def backward(self, ctx, g, xs, y):
        probs = ctx.saved()
        out = ctx.grad_out(0, probs.dtype) if probs.dtype == xs[0].dtype else None
        return ctx.kernels[softmax_ce_backward](ctx.b, probs, xs[1], g, out), None

    def _check_run_shapes(self, logits: Any, labels: Any) -> None:
        name = self.inputs[1].name
        if labels.ndim == 1:
            if labels.dtype.kind not in "iu":
                raise TypeError(f"class-index labels {name!r} must be integers, got {labels.dtype}")
            if labels.shape[0] != logits.shape[0]:
                raise ShapeError(f"softmax_cross_entropy: labels {name!r} hold {labels.shape[0]} "
                                 f"class indices for a batch of {logits.shape[0]} logits "
                                 f"{tuple(logits.shape)}: they must match exactly")
        elif tuple(labels.shape) != tuple(logits.shape):
            raise ShapeError(f"softmax_cross_entropy: targets {name!r} of shape "
                             f"{tuple(labels.shape)} must have exactly the logits' shape "
                             f"{tuple(logits.shape)} (no broadcasting)")


# --- softmax cross-entropy kernels ---------------------------------------------------------
# The references call the references: a backend's override of one kernel never leaks into
# another kernel's reference (which is what the other backends run).
@kernel
def label_poison(be: Any, labels: Any, classes: int, dtype: Any) -> tuple[Any, Any]:
    """``(index, poison)`` for class-index ``labels``: the labels clipped into range (safe to
    gather with: the GPU does not check bounds) and an ``(N, 1)`` column, NaN where the
    label was out of range and 0 elsewhere, added to that row's loss and gradient
    (None may stand for a column of zeros).

    Computed on the device, with no host synchronisation.
    """
    xp = be.xp
    bad = (labels < 0) | (labels >= classes)
    index = xp.clip(labels, 0, classes - 1)
    dt = np.dtype(dtype)  # typed scalars, not 0-d arrays: no host-to-device copy per step
    poison = xp.where(bad, dt.type(float("nan")), dt.type(0))
    return index, poison[:, None]


@label_poison.override("numpy")
def _label_poison_numpy(be: Any, labels: Any, classes: int, dtype: Any) -> tuple[Any, Any]:
    # The reference's result, but on the host it is free to see that all labels are
    # good (the usual case) and skip the clip and the NaN column: None stands for zeros.
    # One ufunc.reduce, on the labels read as unsigned (negatives become huge): this
    # runs every step, on small arrays.
    unsigned = labels.view(f"u{labels.dtype.itemsize}") if labels.dtype.kind == "i" else labels
    if not labels.size or np.maximum.reduce(unsigned, axis=None) < classes:
        return labels, None
    return label_poison.generic(be, labels, classes, dtype)


@kernel
def softmax_ce_forward(be: Any, logits: Any, labels: Any, out: Any = None) -> tuple[Any, Any]:
    """Mean cross-entropy of ``softmax(logits)`` and the probabilities (in ``out`` if given).

    ``labels`` are class indices (integer, shape ``(N,)``) or one-hot /
    soft targets with the logits' shape. A class index outside ``[0, C)`` makes its
    term NaN (see :func:`label_poison`), never another class's.
    """
    xp = be.xp
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    s = e.sum(axis=1, keepdims=True)
    probs = xp.divide(e, s, out=out)
    logs = xp.log(s)
    n = logits.shape[0]
    if labels.ndim == 1:
        index, poison = label_poison.generic(be, labels, logits.shape[1], logits.dtype)
        picked = xp.take_along_axis(z, index[:, None].astype(xp.intp), axis=1)
        terms = logs - picked
        if poison is not None:
            terms = terms + poison
        loss = terms.sum() / n
    else:
        loss = ((logs - z) * labels).sum() / n
    return loss.astype(logits.dtype), probs


@softmax_ce_forward.override("numpy")
def _softmax_ce_forward_numpy(be: Any, logits: Any, labels: Any,
                              out: Any = None) -> tuple[Any, Any]:
    if labels.ndim != 1 or logits.ndim != 2:
        return softmax_ce_forward.generic(be, logits, labels, out)
    n = logits.shape[0]
    index, poison = _label_poison_numpy(be, labels, logits.shape[1], logits.dtype)  # NumPy only here
    z = np.subtract(logits, np.maximum.reduce(logits, axis=1, keepdims=True), out=out)
    picked = z[_rows(n), index]
    np.exp(z, out=z)
    s = np.add.reduce(z, axis=1, keepdims=True)
    terms = np.log(s) - picked[:, None]
    if poison is not None:
        terms += poison
    loss = np.add.reduce(terms, axis=None) / n
    z /= s
    return loss.astype(logits.dtype), z


@kernel
def softmax_ce_backward(be: Any, probs: Any, labels: Any, g: Any, out: Any = None) -> Any:
    """Gradient of the mean cross-entropy with respect to the logits (in ``out`` if given).

    Rows whose class index is out of range are NaN.
    """
    n = probs.shape[0]
    scale = (g / n).astype(probs.dtype)
    if labels.ndim == 1:
        index, poison = label_poison.generic(be, labels, probs.shape[1], probs.dtype)
        grad = be.xp.multiply(probs, scale, out=out)
        rows = be.xp.arange(n)
        grad[rows, index] -= scale
        if poison is not None:
            grad += poison
        return grad
    return be.xp.multiply(probs - labels.astype(probs.dtype), scale, out=out)


@softmax_ce_backward.override("numpy")
def _softmax_ce_backward_numpy(be: Any, probs: Any, labels: Any, g: Any, out: Any = None) -> Any:
    if labels.ndim != 1:
        return softmax_ce_backward.generic(be, probs, labels, g, out)
    n = probs.shape[0]
    index, poison = _label_poison_numpy(be, labels, probs.shape[1], probs.dtype)
    scale = (g / n).astype(probs.dtype)
    grad = np.multiply(probs, scale, out=out)
    grad[_rows(n), index] -= scale
    if poison is not None:
        grad += poison
    return grad


@functools.lru_cache(maxsize=16)
def _rows(n: int) -> np.ndarray:
    """``arange(n)`` on the host, made once per batch size (never written to)."""
    return np.arange(n)


def check_class_labels(labels: Any, classes: int, name: str = "labels") -> None:
    """FeedError unless ``labels`` (any backend) are integers in ``[0, classes)``.

    One reduction and one host read: meant for a whole label vector once (per epoch or
    per evaluation), not per step.
    """
    from ..errors import FeedError
    kind = getattr(getattr(labels, "dtype", None), "kind", None)
    if kind not in ("i", "u"):
        raise FeedError(f"{name} must be an integer array of class indices, got "
                        f"{type(labels).__name__} of dtype {getattr(labels, 'dtype', None)}")
    if getattr(labels, "size", 0) == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        bad = lo if lo < 0 else hi
        raise FeedError(f"{name} must be class indices in [0, {classes}), got {bad}")


def check_fed_labels(host: np.ndarray, classes: int, name: str, reader: str) -> None:
    """FeedError naming the first class index of the host vector ``host`` (fed to input
    ``name``, read by the loss ``reader``) outside ``[0, classes)``: no device involved."""
    if host.dtype.kind not in "iu" or host.ndim != 1 or not host.size:
        return
    if host.min() >= 0 and host.max() < classes:
        return
    pos = int(np.flatnonzero((host < 0) | (host >= classes))[0])
    raise FeedError(f"input {name!r}: class index {host[pos]} at position {pos} is outside "
                    f"[0, {classes}) (the classes of softmax_cross_entropy {reader!r})")


def _check_labels(logits: Node, labels: Node) -> None:
    if logits.shape is not None and len(logits.shape) != 2:
        raise ShapeError(f"softmax_cross_entropy needs logits of shape (batch, classes), "
                         f"got {describe(logits)}")
    if logits.shape is None or labels.shape is None:
        return
    if len(labels.shape) == 1:
        if labels.dtype is not None and labels.dtype.kind not in "iu":
            raise GraphError(f"softmax_cross_entropy: class-index labels {describe(labels)} must "
                             f"have an integer dtype, got {labels.dtype} "
                             "(e.g. gn.Input('y', shape=(None,), dtype='int64'))")
        n, m = logits.shape[0], labels.shape[0]
        if n is not None and m is not None and n != m:
            raise ShapeError(f"softmax_cross_entropy: {describe(labels)} has {m} labels for "
                             f"{n} rows of {describe(logits)}")
    elif len(labels.shape) == 2:
        if any(a is not None and b is not None and a != b
               for a, b in zip(logits.shape, labels.shape)):
            raise ShapeError(f"softmax_cross_entropy: one-hot labels {describe(labels)} must have "
                             f"the shape of the logits {describe(logits)}")
    else:
        raise ShapeError(f"labels must be class indices (N,) or one-hot (N, C), got {describe(labels)}")


class MSE(Node):
    """Mean over all elements of ``(pred - target) ** 2``.

    The target has exactly the prediction's shape (no broadcasting, which would average
    the wrong pairs), or is a scalar.
    """

    op = "mse"

    def __init__(self, pred: Any, target: Any) -> None:
        pred = as_node(pred)
        target = as_node(target, like=pred)
        _check_targets(pred, target)
        super().__init__((pred, target), shape=())

    def forward(self, ctx, pred, target):
        tshape = getattr(target, "shape", ())
        if tshape != () and tuple(tshape) != tuple(pred.shape):
            raise ShapeError(f"mse: target {self.inputs[1].name!r} of shape {tuple(tshape)} must "
                             f"have exactly the prediction's shape {tuple(pred.shape)} "
                             "(no broadcasting)")
        d = pred - target
        return (d * d).mean()

    def backward(self, ctx, g, xs, y):
        pred, target = xs
        d = pred - target
        gp = d * (2 * g / d.size)
        if not hasattr(target, "shape"):
            return gp, None
        return gp, sum_to(-gp, target.shape)


def _check_targets(pred: Node, target: Node) -> None:
    if pred.shape is None or target.shape is None or target.shape == ():
        return
    if len(pred.shape) != len(target.shape) or any(
            a is not None and b is not None and a != b for a, b in zip(pred.shape, target.shape)):
        raise ShapeError(f"mse: target {describe(target)} must have exactly the shape of the "
                         f"prediction {describe(pred)} (no broadcasting)")


def softmax(x: Any, axis: int = -1) -> Node:
    """Softmax along ``axis``, stable for large inputs."""
    return Softmax(x, axis)


def log_softmax(x: Any, axis: int = -1) -> Node:
    """``log(softmax(x))`` computed without overflow."""
    return LogSoftmax(x, axis)


def softmax_cross_entropy(logits: Any, labels: Any) -> Node:
    """Mean cross-entropy of ``softmax(logits)`` against class indices or one-hot rows."""
    return SoftmaxCrossEntropy(logits, labels)


def mse(pred: Any, target: Any) -> Node:
    """Mean squared error."""
    return MSE(pred, target)
