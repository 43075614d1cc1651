"""Reductions: sum and mean over axes."""
from __future__ import annotations

from typing import Any

from ..checks import axes, flag
from ..node import Node, as_node
from ..shapes import normalize_axes, reduce_shape


class Sum(Node):
    op = "sum"

    def __init__(self, x: Any, axis: Any = None, keepdims: bool = False) -> None:
        x = as_node(x)
        self.axis = axes(axis, f"{self.op} axis")
        self.keepdims = flag(keepdims, f"{self.op} keepdims")
        super().__init__((x,), shape=reduce_shape(x.shape, self.axis, keepdims, x))

    def forward(self, ctx, x):
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, ctx, g, xs, y):
        return (ctx.xp.broadcast_to(self._expand(g, xs[0].ndim), xs[0].shape),)

    def _expand(self, g: Any, ndim: int) -> Any:
        if self.keepdims or self.axis is None and g.ndim == 0:
            return g
        axes = normalize_axes(self.axis, ndim, self)
        shape = list(g.shape)
        for a in axes:
            shape.insert(a, 1)
        return g.reshape(shape)


class Mean(Sum):
    op = "mean"

    def forward(self, ctx, x):
        return x.mean(axis=self.axis, keepdims=self.keepdims)

    def backward(self, ctx, g, xs, y):
        count = xs[0].size // max(y.size, 1)
        return (ctx.xp.broadcast_to(self._expand(g / count, xs[0].ndim), xs[0].shape),)


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Node:  # noqa: A001
    """Sum over ``axis`` (None: all)."""
    return Sum(x, axis, keepdims)


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Node:
    """Mean over ``axis`` (None: all)."""
    return Mean(x, axis, keepdims)
