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


class Activation(Unary):
    """An elementwise activation whose gradient needs only its output ``y``.

    ``activate`` applies it in place and ``grad_from_output`` gives ``d/dx`` from ``y``:
    what a graph uses to fuse ``activation(linear(...))`` into one step.
    """

    def activate(self, xp, y):
        raise NotImplementedError

    def grad_from_output(self, ctx, y, g, out):
        raise NotImplementedError

    def backward(self, ctx, g, xs, y):
        return (self.grad_from_output(ctx, y, g, _gout(ctx, xs[0], g)),)


class Tanh(Activation):
    op = "tanh"

    def forward(self, ctx, x):
        return ctx.xp.tanh(x, out=_out(ctx, x))

    def activate(self, xp, y):
        return xp.tanh(y, out=y)

    def grad_from_output(self, ctx, y, g, out):
        return ctx.b.tanh_backward(y, g, out)


class Sigmoid(Activation):
    op = "sigmoid"

    def forward(self, ctx, x):
        # 0.5 * (1 + tanh(x / 2)) is exact and never overflows
        y = ctx.xp.tanh(x * 0.5)
        y += 1
        y *= 0.5
        return y

    def activate(self, xp, y):
        y *= 0.5  # the same operations as forward, in the same order
        xp.tanh(y, out=y)
        y += 1
        y *= 0.5
        return y

    def grad_from_output(self, ctx, y, g, out):
        return ctx.b.sigmoid_backward(y, g, out)


class Relu(Activation):
    op = "relu"

    def forward(self, ctx, x):
        return ctx.xp.maximum(x, 0, out=_out(ctx, x))

    def activate(self, xp, y):
        return xp.maximum(y, 0, out=y)

    def grad_from_output(self, ctx, y, g, out):
        return ctx.b.relu_backward(y, g, out)


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
