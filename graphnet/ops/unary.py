"""Elementwise functions: activations, exp and log."""
from __future__ import annotations

from typing import Any

from ..node import Node, as_node


class Unary(Node):
    def __init__(self, x: Any, name: str | None = None) -> None:
        x = as_node(x)
        super().__init__((x,), name=name, shape=x.shape)


class Tanh(Unary):
    op = "tanh"

    def forward(self, ctx, x):
        return ctx.xp.tanh(x)

    def backward(self, ctx, g, xs, y):
        return (ctx.b.tanh_backward(y, g),)


class Sigmoid(Unary):
    op = "sigmoid"

    def forward(self, ctx, x):
        # 0.5 * (1 + tanh(x / 2)) is exact and never overflows
        y = ctx.xp.tanh(x * 0.5)
        y += 1
        y *= 0.5
        return y

    def backward(self, ctx, g, xs, y):
        return (ctx.b.sigmoid_backward(y, g),)


class Relu(Unary):
    op = "relu"

    def forward(self, ctx, x):
        return ctx.xp.maximum(x, 0)

    def backward(self, ctx, g, xs, y):
        return (ctx.b.relu_backward(y, g),)


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
