"""Elementwise arithmetic with NumPy broadcasting; gradients reduced back to each operand."""
from __future__ import annotations

from typing import Any

import numbers

from ..checks import real
from ..errors import ArgumentTypeError
from ..node import Constant, Node, as_node
from ..shapes import broadcast, sum_to


class Binary(Node):
    """An elementwise op of two broadcast operands."""

    def __init__(self, a: Any, b: Any) -> None:
        a, b = _pair(a, b)
        super().__init__((a, b), shape=broadcast(self.op, a, b))


def _pair(a: Any, b: Any) -> tuple:
    """Both operands as nodes; an array operand takes the node operand's float dtype."""
    if isinstance(a, Node):
        return a, as_node(b, like=a)
    b = as_node(b)
    return as_node(a, like=b), b


def _reduce(g: Any, x: Any) -> Any:
    """Reduce ``g`` to the operand's shape (Python scalars need no gradient)."""
    return sum_to(g, x.shape) if hasattr(x, "shape") else None


class Add(Binary):
    op = "add"

    def forward(self, ctx, a, b):
        return a + b

    def backward(self, ctx, g, xs, y):
        return _reduce(g, xs[0]), _reduce(g, xs[1])


class Sub(Binary):
    op = "sub"

    def forward(self, ctx, a, b):
        return a - b

    def backward(self, ctx, g, xs, y):
        gb = _reduce(g, xs[1])
        return _reduce(g, xs[0]), None if gb is None else -gb


class Mul(Binary):
    op = "mul"

    def forward(self, ctx, a, b):
        return a * b

    def backward(self, ctx, g, xs, y):
        a, b = xs
        return _reduce(g * b, a), _reduce(g * a, b)


class Div(Binary):
    op = "div"

    def forward(self, ctx, a, b):
        return a / b

    def backward(self, ctx, g, xs, y):
        a, b = xs
        ga = g / b
        return _reduce(ga, a), _reduce(-ga * y, b)


class Neg(Node):
    op = "neg"

    def __init__(self, x: Any) -> None:
        x = as_node(x)
        super().__init__((x,), shape=x.shape)

    def forward(self, ctx, x):
        return -x

    def backward(self, ctx, g, xs, y):
        return (-g,)


class Power(Node):
    """``x ** p`` for a fixed Python number ``p``."""

    op = "pow"

    def __init__(self, x: Any, exponent: float) -> None:
        if isinstance(exponent, Node):
            raise ArgumentTypeError("x ** p needs a fixed number p, not a node (use gn.exp(p * gn.log(x)))")
        real(exponent, "the exponent p of x ** p")
        x = as_node(x)
        self.exponent = int(exponent) if isinstance(exponent, numbers.Integral) else float(exponent)
        super().__init__((x,), shape=x.shape)

    def forward(self, ctx, x):
        return x ** self.exponent

    def backward(self, ctx, g, xs, y):
        p = self.exponent
        if p == 0:
            return (g * 0,)  # d/dx x**0 = 0 everywhere (x**-1 would give 0 * inf at x = 0)
        return (g * (p * xs[0] ** (p - 1)),)


def add(a: Any, b: Any) -> Node:
    """``a + b``."""
    return Add(a, b)


def sub(a: Any, b: Any) -> Node:
    """``a - b``."""
    return Sub(a, b)


def mul(a: Any, b: Any) -> Node:
    """``a * b``."""
    return Mul(a, b)


def div(a: Any, b: Any) -> Node:
    """``a / b``."""
    return Div(a, b)


def neg(x: Any) -> Node:
    """``-x``."""
    return Neg(x)


def power(x: Any, exponent: float) -> Node:
    """``x ** exponent``."""
    return Power(x, exponent)


__all__ = ["add", "sub", "mul", "div", "neg", "power", "Constant"]
