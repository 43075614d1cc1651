"""Fusion rules: steps a training step runs in place of two nodes (here linear + activation).

Registered with the step planner (:func:`graphnet.planner.register_fusion`), which
uses them only where nothing else needs the first node's value or gradient. The
convolution's fused steps (conv2d + activation, conv2d + max-pool) are in
:mod:`graphnet.ops.conv.fusion`.
"""
from __future__ import annotations

from typing import Any

from ..planner import register_fusion
from .matrix import Linear
from .unary import Activation, floating_output


class LinearActivation:
    """``activation(x @ W + b)`` as one step, the activation applied in place.

    The arithmetic is the two nodes', in the same order (the results are bit-identical);
    what it saves is one array per layer, one pass over it and the engine's work for one
    node, forward and backward.
    """

    def __init__(self, linear: Linear, activation: Activation) -> None:
        self.linear, self.activation = linear, activation
        self.op = f"linear+{activation.op}"
        self.name = activation.name

    def forward(self, ctx: Any, x: Any, w: Any, b: Any = None) -> Any:
        y = self.linear.forward(ctx, x, w, b)  # the activation's own output array
        return self.activation.apply(ctx.xp, y, out=y)

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        gz = self.activation.grad_from_output(ctx, y, g, ctx.empty(y.shape, y.dtype, slot=1))
        return self.linear.backward(ctx, gz, xs, None)


register_fusion(Linear, Activation, LinearActivation, when=floating_output)


def __getattr__(name: str) -> Any:
    if name in ("ConvActivation", "ConvMaxPool"):  # moved to graphnet.ops.conv.fusion
        from .conv import fusion
        return getattr(fusion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
