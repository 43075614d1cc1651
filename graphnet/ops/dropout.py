"""Inverted dropout: active only when the graph runs with ``training=True``."""
from __future__ import annotations

import math
from typing import Any

from ..backends.keyed import dropout_mask, dropout_words, philox_key
from ..checks import real
from ..node import Node, as_node


class Dropout(Node):
    """Zeroes elements with probability ``rate`` in training, scaling the rest by 1/(1-rate).

    With a run's ``rng_key`` the mask is a pure function of (key, this node's position in
    the graph), the same on every backend; without one it comes from the backend's generator.
    """

    op = "dropout"

    def __init__(self, x: Any, rate: float) -> None:
        self.rate = real(rate, "dropout rate", 0.0, 1.0, high_open=True)
        x = as_node(x)
        super().__init__((x,), shape=x.shape)

    @property
    def random(self) -> bool:
        """Whether a training run draws random numbers here (CUDA-graph capture refuses it)."""
        return self.rate > 0

    def mask(self, ctx: Any, shape: tuple, dtype: Any) -> Any:
        """The run's mask for an input of ``shape`` and ``dtype``."""
        b = ctx.b
        if ctx.rng_key is None:
            keep = b.uniform(shape, dtype) >= self.rate
            m = keep.astype(dtype)
            m *= 1 / (1 - self.rate)
            return m
        words = b.keyed_bits(philox_key(ctx.rng_key, ctx.key), (dropout_words(math.prod(shape)),))
        return dropout_mask(ctx.xp, words, shape, dtype, self.rate)

    def forward(self, ctx, x):
        if not ctx.training or self.rate == 0:
            return x
        m = self.mask(ctx, x.shape, x.dtype)
        ctx.save(m)
        return x * m

    def backward(self, ctx, g, xs, y):
        m = ctx.saved()
        return (g if m is None else g * m,)


def dropout(x: Any, rate: float) -> Node:
    """Zero each element with probability ``rate`` in training, scaling the rest by 1/(1-rate)."""
    return Dropout(x, rate)
