"""Fusion rules: steps a training step runs in place of two nodes.

Registered with the step planner (:func:`graphnet.planner.register_fusion`), which
uses them only where nothing else needs the first node's value or gradient.
"""
from __future__ import annotations

from typing import Any

from ..backends.host import is_floating
from ..planner import register_fusion
from .conv import Conv2d, MaxPool2d
from .conv_pool import ConvMaxPool
from .matrix import Linear
from .unary import Activation


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


class ConvActivation:
    """``activation(conv2d(x, w, b))`` as one step, each chunk activated while in cache.

    The same arithmetic as the two nodes (bit-identical); it saves a pass over the
    output each way, and backward turns each chunk's gradient as it goes.
    """

    def __init__(self, conv: Conv2d, activation: Activation) -> None:
        self.conv, self.activation = conv, activation
        self.op = f"conv2d+{activation.op}"
        self.name = activation.name

    def forward(self, ctx: Any, x: Any, w: Any, b: Any = None) -> Any:
        xp, apply = ctx.xp, self.activation.apply
        return self.conv.forward_nchw(ctx, x, w, b, then=lambda block: apply(xp, block, out=block))

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        grad = self.activation.grad_from_output
        per_image = y[0].size

        def upstream(n0: int, n1: int, s: Any) -> Any:
            out = s.extra[:per_image * (n1 - n0)].reshape(y[n0:n1].shape)
            return grad(ctx, y[n0:n1], g[n0:n1], out)

        def extra() -> Any:
            return ctx.xp.empty((per_image * self.conv.geometry(ctx.b, xs[0], xs[1]).step,),
                                dtype=g.dtype)
        return self.conv.backward_nchw(ctx, xs, upstream, g.dtype, extra)


def _floating(node: Any) -> bool:
    # In place needs the producer's result to have the activation's (floating) dtype.
    return node.dtype is not None and is_floating(node.dtype)


register_fusion(Linear, Activation, LinearActivation, when=_floating)
register_fusion(Conv2d, Activation, ConvActivation, when=_floating)
register_fusion(Conv2d, MaxPool2d, ConvMaxPool)
