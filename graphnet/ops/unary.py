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

    A subclass writes the function once, :meth:`apply`, and its gradient once,
    :meth:`grad_from_output`; the node's forward and backward and the fused
    linear+activation step (``ops/fused.py``) all call those two.
    """

    def apply(self, xp: Any, x: Any, out: Any = None) -> Any:
        """The function of ``x``, written into ``out`` (which may be ``x``) if given."""
        raise NotImplementedError

    def grad_from_output(self, ctx: Any, y: Any, g: Any, out: Any = None) -> Any:
        """``g * f'(x)`` from ``y = f(x)``, written into ``out`` if given."""
        raise NotImplementedError

    def forward(self, ctx, x):
        return self.apply(ctx.xp, x, _out(ctx, x))

    def backward(self, ctx, g, xs, y):
        return (self.grad_from_output(ctx, y, g, _gout(ctx, xs[0], g)),)


class Tanh(Activation):
    op = "tanh"

    def apply(self, xp, x, out=None):
        return xp.tanh(x, out=out)

    def grad_from_output(self, ctx, y, g, out=None):
        return ctx.b.tanh_backward(y, g, out)


class Sigmoid(Activation):
    op = "sigmoid"

    def apply(self, xp, x, out=None):
        # 0.5 * (1 + tanh(x / 2)) is exact and never overflows
        if out is None:
            y = xp.tanh(x * 0.5)
        else:
            y = xp.multiply(x, 0.5, out=out)
            xp.tanh(y, out=y)
        y += 1
        y *= 0.5
        return y

    def grad_from_output(self, ctx, y, g, out=None):
        return ctx.b.sigmoid_backward(y, g, out)


class Relu(Activation):
    op = "relu"

    def apply(self, xp, x, out=None):
        return xp.maximum(x, 0, out=out)

    def grad_from_output(self, ctx, y, g, out=None):
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
