"""Steps a graph runs in place of two nodes, where the first one's value is needed by no one."""
from __future__ import annotations

from typing import Any

from .matrix import Linear
from .unary import Activation


class LinearActivation:
    """``activation(x @ W + b)`` as one step, the activation applied in place.

    Used by a training step when the linear node's only consumer is the activation and
    nobody asks for its value or gradient. The arithmetic is the two nodes', in the
    same order (the results are bit-identical); what it saves is one array per layer,
    one pass over it and the engine's work for one node, forward and backward.
    """

    def __init__(self, linear: Linear, activation: Activation) -> None:
        self.linear, self.activation = linear, activation
        self.op = f"linear+{activation.op}"
        self.name = activation.name

    def forward(self, ctx: Any, x: Any, w: Any, b: Any = None) -> Any:
        y = self.linear.forward(ctx, x, w, b)  # the activation's own output array
        return self.activation.activate(ctx.xp, y)

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        gz = self.activation.grad_from_output(ctx, y, g, ctx.empty(y.shape, y.dtype, slot=1))
        return self.linear.backward(ctx, gz, xs, None)
