"""Convolutional layers (NCHW): Conv2d, MaxPool2d, AvgPool2d, BatchNorm1d/2d."""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

from .. import ops
from ..backends.host import host_zeros
from ..checks import choice, fits_in_memory, flag, int_pair, integer, real
from ..node import Node, Parameter
from .init import INITS, Init, initial_weights
from .layers import Layer, register

IntPair = Union[int, tuple[int, int], list[int]]


def _pair(v: IntPair, what: str, minimum: int = 1) -> list[int]:
    """:func:`graphnet.checks.int_pair` as a JSON-friendly [h, w] list (layer configs)."""
    return list(int_pair(v, what, minimum))


@register
class Conv2d(Layer):
    """2-D convolution with weight ``W`` (out_channels, in_channels, kh, kw) and bias ``b``.

    ``in_channels=None`` takes the count from the input's axis 1 at the first call.
    ``init``: ``"he"`` (normal, std sqrt(2 / fan_in), for ReLU) or ``"glorot"`` (uniform).
    """

    def __init__(self, in_channels: Optional[int], out_channels: int, kernel_size: IntPair = 3,
                 stride: IntPair = 1, padding: IntPair = 0, bias: bool = True,
                 init: Init = "he") -> None:
        self.out_channels = integer(out_channels, "Conv2d out_channels", 1)
        self.init: Init = choice(init, "Conv2d init", INITS[::-1])  # type: ignore[assignment]
        self.kernel_size = _pair(kernel_size, "Conv2d kernel_size")
        self.stride = _pair(stride, "Conv2d stride")
        self.padding = _pair(padding, "Conv2d padding", 0)
        self.bias = flag(bias, "Conv2d bias")
        self.in_channels = in_channels
        self.W: Optional[Parameter] = None
        self.b: Optional[Parameter] = None
        if in_channels is not None:
            self._build(integer(in_channels, "Conv2d in_channels", 1))

    def _build(self, c_in: int) -> None:
        kh, kw = self.kernel_size
        c_out = self.out_channels
        fits_in_memory((c_out, c_in, kh, kw), 8, "Conv2d weights")
        self.in_channels = c_in
        fan_in, fan_out = c_in * kh * kw, c_out * kh * kw
        self.add_parameter("W", initial_weights(self.init, (c_out, c_in, kh, kw), fan_in, fan_out),
                           f"conv_W{c_out}x{c_in}x{kh}x{kw}")
        if self.bias:
            self.add_parameter("b", host_zeros((c_out,)), f"conv_b{c_out}")

    def __call__(self, x: Node) -> Node:
        if self.W is None:
            if x.shape is None or len(x.shape) != 4 or x.shape[1] is None:
                raise ValueError(f"Conv2d(None, {self.out_channels}) cannot infer in_channels: "
                                 f"input {x.name!r} has no known channel axis 1")
            self._build(int(x.shape[1]))
        return ops.conv2d(x, self.W, self.b, tuple(self.stride), tuple(self.padding))

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "bias": self.bias, "init": self.init}


class _Pool(Layer):
    fn: Callable[..., Node]

    def __init__(self, size: IntPair = 2, stride: Optional[IntPair] = None) -> None:
        self.size = _pair(size, f"{type(self).__name__} size")
        self.stride = None if stride is None else _pair(stride, f"{type(self).__name__} stride")

    def __call__(self, x: Node) -> Node:
        return type(self).fn(x, tuple(self.size), None if self.stride is None else tuple(self.stride))

    def config(self) -> dict[str, Any]:
        return {"size": self.size, "stride": self.stride}


@register
class MaxPool2d(_Pool):
    """The maximum of each ``size`` window, every ``stride`` (default: ``size``)."""

    fn = staticmethod(ops.max_pool2d)


@register
class AvgPool2d(_Pool):
    """The mean of each ``size`` window, every ``stride`` (default: ``size``)."""

    fn = staticmethod(ops.avg_pool2d)


class _BatchNorm(Layer):
    """Batch normalisation per channel (axis 1) with learned ``gamma``/``beta``.

    ``running_mean`` and ``running_var`` are non-trainable Parameters: updated by training
    runs, used by evaluation runs, saved with the model. ``num_features=None`` takes the
    count from the input's axis 1 at the first call.
    """

    rank: int

    def __init__(self, num_features: Optional[int] = None, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        name = type(self).__name__
        self.num_features = None if num_features is None else integer(
            num_features, f"{name} num_features", 1)
        self.momentum = real(momentum, f"{name} momentum", 0.0, 1.0)
        self.eps = real(eps, f"{name} eps", 0.0, low_open=True)
        self.gamma: Optional[Parameter] = None
        self.beta: Optional[Parameter] = None
        self.running_mean: Optional[Parameter] = None
        self.running_var: Optional[Parameter] = None
        if num_features is not None:
            fits_in_memory((self.num_features,), 8, f"{name} statistics")
            self._build(self.num_features)

    def _build(self, c: int) -> None:
        if c <= 0:
            raise ValueError(f"{type(self).__name__} needs num_features > 0, got {c}")
        self.num_features = c
        self.add_parameter("gamma", host_zeros((c,)) + 1, f"bn_gamma{c}")
        self.add_parameter("beta", host_zeros((c,)), f"bn_beta{c}")
        self.add_parameter("running_mean", host_zeros((c,)), f"bn_mean{c}", trainable=False)
        self.add_parameter("running_var", host_zeros((c,)) + 1, f"bn_var{c}", trainable=False)

    def __call__(self, x: Node) -> Node:
        if x.shape is not None and len(x.shape) != self.rank:
            raise ValueError(f"{type(self).__name__} expects rank-{self.rank} input, "
                             f"got {x.name!r} of shape {x.shape}")
        if self.gamma is None:
            if x.shape is None or x.shape[1] is None:
                raise ValueError(f"{type(self).__name__}(None) cannot infer num_features: input "
                                 f"{x.name!r} has no known axis 1")
            self._build(int(x.shape[1]))
        return ops.batch_norm(x, self.gamma, self.beta, self.running_mean, self.running_var,
                              self.momentum, self.eps)

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}


@register
class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) per channel."""

    rank = 4


@register
class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) features."""

    rank = 2


__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d"]
