"""Inverted dropout: active only when the graph runs with ``training=True``."""
from __future__ import annotations

from typing import Any

from ..checks import real
from ..node import Node, as_node


class Dropout(Node):
    op = "dropout"

    def __init__(self, x: Any, rate: float) -> None:
        self.rate = real(rate, "dropout rate", 0.0, 1.0, high_open=True)
        x = as_node(x)
        self._mask = None
        super().__init__((x,), shape=x.shape)

    def forward(self, ctx, x):
        if not ctx.training or self.rate == 0:
            self._mask = None
            return x
        keep = ctx.b.uniform(x.shape, x.dtype) >= self.rate
        self._mask = keep.astype(x.dtype)
        self._mask *= 1 / (1 - self.rate)
        return x * self._mask

    def backward(self, ctx, g, xs, y):
        return (g if self._mask is None else g * self._mask,)


def dropout(x: Any, rate: float) -> Node:
    """Zero each element with probability ``rate`` in training, scaling the rest by 1/(1-rate)."""
    return Dropout(x, rate)
