"""Batch normalisation over every axis but the channel axis 1: (N, C) or (N, C, H, W).

Training (``graph.run(..., training=True)`` and ``graph.gradients``): the batch's own mean
and (biased) variance normalise it, and the running statistics move toward them,
``running = (1 - momentum) * running + momentum * batch`` (the variance unbiased, as in
PyTorch). Evaluation: the running statistics normalise. Running statistics are
non-trainable Parameters, so they are saved and loaded with the model.
"""
from __future__ import annotations

from typing import Any, Optional

from ..checks import real
from ..errors import ShapeError
from ..node import Node, Parameter, as_node
from ..shapes import describe


class BatchNorm(Node):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` per channel (axis 1)."""

    op = "batch_norm"

    def __init__(self, x: Any, gamma: Any, beta: Any, running_mean: Optional[Parameter] = None,
                 running_var: Optional[Parameter] = None, momentum: float = 0.1,
                 eps: float = 1e-5) -> None:
        x = as_node(x)
        gamma, beta = as_node(gamma, like=x), as_node(beta, like=x)
        if (running_mean is None) != (running_var is None):
            raise ValueError("batch_norm needs both running_mean and running_var, or neither")
        for r in (running_mean, running_var):
            if r is not None and not isinstance(r, Parameter):
                raise TypeError(f"batch_norm running statistics must be Parameters "
                                f"(Parameter(..., trainable=False)), got {type(r).__name__}")
        self.momentum = real(momentum, "batch_norm momentum", 0.0, 1.0)
        self.eps = real(eps, "batch_norm eps", 0.0, low_open=True)
        self.running = None if running_mean is None else (running_mean, running_var)
        inputs = (x, gamma, beta) + (() if self.running is None else self.running)
        if x.shape is not None and len(x.shape) < 2:
            raise ShapeError(f"batch_norm needs (N, C, ...) input, got {describe(x)}")
        channels = None if x.shape is None else x.shape[1]
        for p in inputs[1:]:
            if p.shape is None:
                continue
            if len(p.shape) != 1 or (channels is not None and p.shape[0] not in (None, channels)):
                raise ShapeError(f"batch_norm: {describe(p)} must have shape ({channels},) "
                                 f"for the channels of {describe(x)}")
        super().__init__(inputs, shape=x.shape, dtype=x.dtype)

    @staticmethod
    def _axes(x: Any) -> tuple:
        return (0,) + tuple(range(2, x.ndim))

    @staticmethod
    def _per_channel(v: Any, x: Any) -> Any:
        return v.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, ctx, x, gamma, beta, running_mean=None, running_var=None):
        xp = ctx.xp
        axes = self._axes(x)
        use_batch = ctx.training or running_mean is None
        if use_batch:
            count = x.size // x.shape[1]
            if count < 2 and ctx.training:
                raise ValueError(f"batch_norm {self.name!r} in training needs more than one value "
                                 f"per channel, got input shape {tuple(x.shape)}")
            mean = x.mean(axis=axes, keepdims=True)
            d = x - mean
            var = (d * d).mean(axis=axes, keepdims=True)
            if ctx.training and running_mean is not None:
                self._update_running(var, mean, count)
        else:
            mean = self._per_channel(running_mean, x).astype(x.dtype)
            d = x - mean
            var = self._per_channel(running_var, x).astype(x.dtype)
        inv = 1.0 / xp.sqrt(var + self.eps)
        ctx.save((x, use_batch, mean, inv))
        d *= inv * self._per_channel(gamma, x)
        d += self._per_channel(beta, x)
        return d

    def _update_running(self, var: Any, mean: Any, count: int) -> None:
        rm, rv = self.running
        m = self.momentum
        unbiased = var.reshape(-1) * (count / max(count - 1, 1))
        rm.set_running(rm.value * (1 - m) + mean.reshape(-1).astype(rm.dtype) * m)
        rv.set_running(rv.value * (1 - m) + unbiased.astype(rv.dtype) * m)

    def backward(self, ctx, g, xs, y):
        x, gamma = xs[0], xs[1]
        cache = ctx.saved()
        if cache is None or cache[0] is not x:
            raise RuntimeError(f"batch_norm {self.name!r}: backward without its forward "
                               "(run the graph forward first)")
        _, use_batch, mean, inv = cache
        axes = self._axes(x)
        xhat = (x - mean) * inv
        gbeta = g.sum(axis=axes)
        ggamma = (g * xhat).sum(axis=axes)
        scale = inv * self._per_channel(gamma, x)
        if use_batch:
            count = x.size // x.shape[1]
            # dx = gamma * inv * (g - mean(g) - xhat * mean(g * xhat))
            gx = xhat
            gx *= -self._per_channel(ggamma / count, x)
            gx += g
            gx -= self._per_channel(gbeta / count, x)
            gx *= scale
        else:
            gx = g * scale
        out = (gx, ggamma.astype(gamma.dtype) if hasattr(gamma, "shape") else None,
               gbeta.astype(xs[2].dtype) if hasattr(xs[2], "shape") else None)
        return out + (None,) * (len(xs) - 3)


def batch_norm(x: Any, gamma: Any, beta: Any, running_mean: Optional[Parameter] = None,
               running_var: Optional[Parameter] = None, momentum: float = 0.1,
               eps: float = 1e-5) -> Node:
    """Batch normalisation of ``x`` (N, C, ...) per channel, scaled by ``gamma`` and shifted by ``beta``.

    With ``running_mean``/``running_var`` (non-trainable Parameters of shape (C,)), a
    training run updates them and an evaluation run normalises with them; without,
    every run uses the batch statistics.
    """
    return BatchNorm(x, gamma, beta, running_mean, running_var, momentum, eps)


__all__ = ["batch_norm"]
