"""Elementwise functions: activations, exp and log."""
from __future__ import annotations

from typing import Any

from ..node import Node, as_node


class Unary(Node):
    def __init__(self, x: Any, name: str | None = None) -> None:
        x = as_node(x)
        super().__init__((x,), name=name, shape=x.shape)


def _out(ctx, x):
    """The node's own output array for a float ``x`` (None otherwise: let NumPy pick)."""
    if getattr(x, "ndim", 0) and x.dtype.kind == "f":
        return ctx.empty(x.shape, x.dtype)
    return None


def _gout(ctx, x, g):
    """Where the gradient for ``x`` may go (when ``g`` already has its shape and dtype)."""
    if getattr(x, "ndim", 0) and getattr(g, "shape", None) == x.shape:
        return ctx.grad_out(0, g.dtype) if g.dtype == x.dtype else None
    return None


class Tanh(Unary):
    op = "tanh"

    def forward(self, ctx, x):
        return ctx.xp.tanh(x, out=_out(ctx, x))

    def backward(self, ctx, g, xs, y):
        return (ctx.b.tanh_backward(y, g, _gout(ctx, xs[0], g)),)


class Sigmoid(Unary):
    op = "sigmoid"

    def forward(self, ctx, x):
        # 0.5 * (1 + tanh(x / 2)) is exact and never overflows
        y = ctx.xp.tanh(x * 0.5)
        y += 1
        y *= 0.5
        return y

    def backward(self, ctx, g, xs, y):
        return (ctx.b.sigmoid_backward(y, g, _gout(ctx, xs[0], g)),)


class Relu(Unary):
    op = "relu"

    def forward(self, ctx, x):
        return ctx.xp.maximum(x, 0, out=_out(ctx, x))

    def backward(self, ctx, g, xs, y):
        return (ctx.b.relu_backward(y, g, _gout(ctx, xs[0], g)),)


class Exp(Unary):
    op = "exp"

    def forward(self, ctx, x):
        return ctx.xp.exp(x)

    def backward(self, ctx, g, xs, y):
        return (g * y,)


class Log(Unary):
    op = "log"

    def forward(self, ctx, x):
        return ctx.xp.log(x)

    def backward(self, ctx, g, xs, y):
        return (g / xs[0],)


def tanh(x: Any, name: str | None = None) -> Node:
    """Hyperbolic tangent."""
    return Tanh(x, name)


def sigmoid(x: Any, name: str | None = None) -> Node:
    """Logistic sigmoid ``1 / (1 + exp(-x))``."""
    return Sigmoid(x, name)


def relu(x: Any, name: str | None = None) -> Node:
    """``max(x, 0)``."""
    return Relu(x, name)


def exp(x: Any, name: str | None = None) -> Node:
    """``e ** x``."""
    return Exp(x, name)


def log(x: Any, name: str | None = None) -> Node:
    """Natural logarithm."""
    return Log(x, name)
