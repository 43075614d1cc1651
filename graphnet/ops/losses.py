"""Softmax, log-softmax and the losses: softmax cross-entropy and mean squared error."""
from __future__ import annotations

from typing import Any

from ..checks import integer
from ..errors import GraphError, ShapeError
from ..node import Node, as_node
from ..shapes import broadcast, describe, sum_to


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
    """Mean over the batch of ``-log softmax(logits)[label]`` (or against soft targets)."""

    op = "softmax_cross_entropy"

    def __init__(self, logits: Any, labels: Any) -> None:
        logits, labels = as_node(logits), as_node(labels)
        _check_labels(logits, labels)
        super().__init__((logits, labels), shape=(), dtype=logits.dtype)
        self._probs = None

    def forward(self, ctx, logits, labels):
        if labels.ndim == 1 and labels.dtype.kind not in "iu":
            raise TypeError(f"class-index labels {self.inputs[1].name!r} must be integers, "
                            f"got {labels.dtype}")
        if labels.shape[0] != logits.shape[0] or (labels.ndim == 2 and labels.shape != logits.shape):
            raise ShapeError(f"softmax_cross_entropy: labels {self.inputs[1].name!r} of shape "
                             f"{tuple(labels.shape)} do not match logits of shape "
                             f"{tuple(logits.shape)} (labels are never broadcast)")
        out = ctx.empty(logits.shape, logits.dtype) if logits.dtype.kind == "f" else None
        loss, self._probs = ctx.b.softmax_cross_entropy(logits, labels, out)
        return loss

    def backward(self, ctx, g, xs, y):
        probs = self._probs
        out = ctx.grad_out(0, probs.dtype) if probs.dtype == xs[0].dtype else None
        return ctx.b.softmax_cross_entropy_backward(probs, xs[1], g, out), None


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
    """Mean over all elements of ``(pred - target) ** 2``."""

    op = "mse"

    def __init__(self, pred: Any, target: Any) -> None:
        pred = as_node(pred)
        target = as_node(target, like=pred)
        shape = broadcast("mse", pred, target)
        if shape is not None and pred.shape is not None and shape != pred.shape:
            raise ShapeError(f"mse: target {describe(target)} would broadcast "
                             f"{describe(pred)} up to {shape}")
        super().__init__((pred, target), shape=())

    def forward(self, ctx, pred, target):
        k = getattr(target, "ndim", 0)
        if k and (k > pred.ndim or target.shape != pred.shape[pred.ndim - k:]):
            raise ShapeError(f"mse: target {self.inputs[1].name!r} of shape {tuple(target.shape)} "
                             f"does not match the prediction's {tuple(pred.shape)} (a target is "
                             "never broadcast over the batch; a lower-rank one must equal the "
                             "trailing axes)")
        d = pred - target
        return (d * d).mean()

    def backward(self, ctx, g, xs, y):
        pred, target = xs
        d = pred - target
        gp = d * (2 * g / d.size)
        if not hasattr(target, "shape"):
            return gp, None
        return gp, sum_to(-gp, target.shape)


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
