"""Convolutional layers (NCHW): Conv2d, MaxPool2d, AvgPool2d, BatchNorm1d/2d, and ``mnist_cnn``."""
from __future__ import annotations

import math
from typing import Any, Optional

from .. import ops
from ..backends.host import host_normal, host_uniform, host_zeros
from ..checks import choice, fits_in_memory, flag, int_pair, integer, real
from ..node import Node, Parameter
from .layers import Dropout, Flatten, Layer, Linear, ReLU, Sequential, register


def _pair(v: Any, what: str, minimum: int = 1) -> list:
    """An int or a pair (each ``>= minimum``) as a JSON-friendly [h, w] list."""
    return list(int_pair(v, what, minimum))


@register
class Conv2d(Layer):
    """2-D convolution with weight ``W`` (out_channels, in_channels, kh, kw) and bias ``b``.

    ``in_channels=None`` takes the count from the input's axis 1 at the first call.
    ``init``: ``"he"`` (normal, std sqrt(2 / fan_in), for ReLU) or ``"glorot"`` (uniform).
    """

    def __init__(self, in_channels: Optional[int], out_channels: int, kernel_size: Any = 3,
                 stride: Any = 1, padding: Any = 0, bias: bool = True, init: str = "he") -> None:
        self.out_channels = integer(out_channels, "Conv2d out_channels", 1)
        self.init = choice(init, "Conv2d init", ("he", "glorot"))
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
        shape = (c_out, c_in, kh, kw)
        if self.init == "he":
            w = host_normal(math.sqrt(2.0 / fan_in), shape)
        else:
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            w = host_uniform(-limit, limit, shape)
        self.W = Parameter(w, name=f"conv_W{c_out}x{c_in}x{kh}x{kw}")
        if self.bias:
            self.b = Parameter(host_zeros((c_out,)), name=f"conv_b{c_out}")

    def __call__(self, x: Node) -> Node:
        if self.W is None:
            if x.shape is None or len(x.shape) != 4 or x.shape[1] is None:
                raise ValueError(f"Conv2d(None, {self.out_channels}) cannot infer in_channels: "
                                 f"input {x.name!r} has no known channel axis 1")
            self._build(int(x.shape[1]))
        return ops.conv2d(x, self.W, self.b, tuple(self.stride), tuple(self.padding))

    def named_parameters(self) -> dict[str, Parameter]:
        out = {}
        if self.W is not None:
            out["W"] = self.W
        if self.b is not None:
            out["b"] = self.b
        return out

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "bias": self.bias, "init": self.init}


class _Pool(Layer):
    fn: Any

    def __init__(self, size: Any = 2, stride: Any = None) -> None:
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
        self.gamma = self.beta = self.running_mean = self.running_var = None
        if num_features is not None:
            fits_in_memory((self.num_features,), 8, f"{name} statistics")
            self._build(self.num_features)

    def _build(self, c: int) -> None:
        if c <= 0:
            raise ValueError(f"{type(self).__name__} needs num_features > 0, got {c}")
        self.num_features = c
        self.gamma = Parameter(host_zeros((c,)) + 1, name=f"bn_gamma{c}")
        self.beta = Parameter(host_zeros((c,)), name=f"bn_beta{c}")
        self.running_mean = Parameter(host_zeros((c,)), name=f"bn_mean{c}", trainable=False)
        self.running_var = Parameter(host_zeros((c,)) + 1, name=f"bn_var{c}", trainable=False)

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

    def named_parameters(self) -> dict[str, Parameter]:
        if self.gamma is None:
            return {}
        return {"gamma": self.gamma, "beta": self.beta, "running_mean": self.running_mean,
                "running_var": self.running_var}

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


def mnist_cnn(cfg: Optional[dict] = None) -> Sequential:
    """The MNIST example's convolutional networks, for input (N, 1, 28, 28).

    ``cfg["model"]``:

    * ``"cnn"``: conv 32 3x3, ReLU, conv 64 3x3, ReLU, max-pool 2, dropout 0.25,
      flatten, dense 128, ReLU, dropout 0.5, dense 10 (1.2 M parameters);
    * ``"cnn-best"``: two blocks of [conv 3x3, BatchNorm, ReLU] x 2 then max-pool 2
      (32 then 64 channels, no padding: 28 -> 24 -> 12 -> 8 -> 4), dropout 0.25, dense 256
      with BatchNorm and ReLU, dropout 0.4, dense 10 (0.36 M parameters).

    Where a ReLU meets a max-pool the pool comes first: ``relu(max(...)) == max(relu(...))``
    (and so are the gradients), on a quarter of the values. Other keys of ``cfg`` are
    ignored. The first layer is always the Conv2d whose ``W`` is (32, 1, 3, 3).
    """
    cfg = dict(cfg or {})
    model = cfg.get("model", "cnn")
    if model == "cnn":
        # Glorot-uniform weights, like the Keras reference: with He-normal convolutions the
        # same training reached a mean loss of 0.375 in epoch 1 instead of 0.239.
        return Sequential([
            Conv2d(1, 32, 3, init="glorot"), ReLU(),
            Conv2d(32, 64, 3, init="glorot"), MaxPool2d(2), ReLU(), Dropout(0.25), Flatten(),
            Linear(64 * 12 * 12, 128), ReLU(), Dropout(0.5),
            Linear(128, 10),
        ])
    if model == "cnn-best":
        def block(c_in: int, c_out: int, pool: bool = False) -> list:
            return ([Conv2d(c_in, c_out, 3, bias=False), BatchNorm2d(c_out)]
                    + ([MaxPool2d(2)] if pool else []) + [ReLU()])
        return Sequential(
            block(1, 32) + block(32, 32, pool=True) + block(32, 64) + block(64, 64, pool=True)
            + [Dropout(0.25), Flatten(), Linear(64 * 4 * 4, 256, bias=False, init="he"),
               BatchNorm1d(256), ReLU(), Dropout(0.4), Linear(256, 10)])
    raise ValueError(f"unknown convolutional model {model!r}; choose 'cnn' or 'cnn-best'")


__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "mnist_cnn"]
