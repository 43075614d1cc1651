"""Elementwise functions: activations, exp and log."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backends.host import is_floating
from ..kernels import kernel
from ..node import Node, as_node


class Unary(Node):
    def __init__(self, x: Any, name: str | None = None) -> None:
        x = as_node(x)
        super().__init__((x,), name=name, shape=x.shape)


def _out(ctx, x):
    """The node's own output array for a float ``x`` (None otherwise: let NumPy pick)."""
    if getattr(x, "ndim", 0) and x.dtype.kind == "f":
        return ctx.empty(x.shape, x.dtype)
    return None


def _gout(ctx, x, g):
    """Where the gradient for ``x`` may go (when ``g`` already has its shape and dtype)."""
    if getattr(x, "ndim", 0) and getattr(g, "shape", None) == x.shape:
        return ctx.grad_out(0, g.dtype) if g.dtype == x.dtype else None
    return None


def floating_output(node: Any) -> bool:
    """Whether ``node``'s value is floating: an activation can then be applied in place on it
    (the condition of the fusion rules that end in an activation)."""
    return node.dtype is not None and is_floating(node.dtype)


class Activation(Unary):
    """An elementwise activation whose gradient needs only its output ``y``.

    A subclass writes the function once, :meth:`apply`, and its gradient once,
    :meth:`grad_from_output`; the node's forward and backward and the fused steps all call
    those two. With ``plan="reference"`` (or ``check_numerics``) the node's :meth:`forward`
    and :meth:`backward` always run; a training step or a ``Graph.run`` runs them too, except
    where the activation follows a ``Linear`` node (``gn.linear``, ``nn.Linear``) or a conv2d
    whose value nothing else reads: then the planner runs the fused ``LinearActivation``
    (``ops/fused.py``) or ``ConvActivation`` (``ops/conv/fusion.py``) in place of both nodes.
    """

    def apply(self, xp: Any, x: Any, out: Any = None) -> Any:
        """The function of ``x``, written into ``out`` (which may be ``x``) if given."""
        raise NotImplementedError

    def grad_from_output(self, ctx: Any, y: Any, g: Any, out: Any = None) -> Any:
        """``g * f'(x)`` from ``y = f(x)``, written into ``out`` if given."""
        raise NotImplementedError

    def forward(self, ctx, x):
        return self.apply(ctx.xp, x, _out(ctx, x))

    def backward(self, ctx, g, xs, y):
        return (self.grad_from_output(ctx, y, g, _gout(ctx, xs[0], g)),)


class Tanh(Activation):
    op = "tanh"

    def apply(self, xp, x, out=None):
        return xp.tanh(x, out=out)

    def grad_from_output(self, ctx, y, g, out=None):
        return ctx.kernels[tanh_backward](ctx.b, y, g, out)


class Sigmoid(Activation):
    op = "sigmoid"

    def apply(self, xp, x, out=None):
        # 0.5 * (1 + tanh(x / 2)) is exact and never overflows
        if out is None:
            y = xp.tanh(x * 0.5)
        else:
            y = xp.multiply(x, 0.5, out=out)
            xp.tanh(y, out=y)
        y += 1
        y *= 0.5
        return y

    def grad_from_output(self, ctx, y, g, out=None):
        return ctx.kernels[sigmoid_backward](ctx.b, y, g, out)


class Relu(Activation):
    op = "relu"

    def apply(self, xp, x, out=None):
        return xp.maximum(x, 0, out=out)

    def grad_from_output(self, ctx, y, g, out=None):
        return ctx.kernels[relu_backward](ctx.b, y, g, out)


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


# --- activation-backward kernels: the reference, then the NumPy and CUDA versions -------------
# NumPy ufuncs give 0-d operands back as scalars, which cannot be written in place.
_UINT_OF = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def _elementwise_yg(be: Any, name: str, body: str, y: Any, g: Any, out: Any) -> Any:
    """Run the CUDA elementwise kernel ``out = f(y, g)`` called ``name``."""
    kern = be.elementwise(name, "T y, T g", "T out", body)
    return kern(y, g) if out is None else kern(y, g, out)


@kernel
def tanh_backward(be: Any, y: Any, g: Any, out: Any = None) -> Any:
    """``g * (1 - y**2)`` for ``y = tanh(x)`` (in ``out`` if given).

    A product: NaN in ``g`` or ``y`` gives NaN, and so does inf times a zero factor.
    """
    return be.xp.multiply(g, 1 - y * y, out=out)


@tanh_backward.override("numpy")
def _tanh_backward_numpy(be: Any, y: Any, g: Any, out: Any = None) -> Any:
    if not getattr(y, "ndim", 0) or getattr(g, "shape", None) != y.shape:
        return tanh_backward.generic(be, y, g, out)
    out = np.multiply(y, y, out=out)
    np.subtract(1, out, out=out)
    out *= g
    return out


@tanh_backward.override("cupy")
def _tanh_backward_cuda(be: Any, y: Any, g: Any, out: Any = None) -> Any:
    return _elementwise_yg(be, "tanh_bw", "out = g * (1 - y * y)", y, g, out)


@kernel
def sigmoid_backward(be: Any, y: Any, g: Any, out: Any = None) -> Any:
    """``(g * y) * (1 - y)`` for ``y = sigmoid(x)`` (in ``out`` if given); NaN as for tanh."""
    return be.xp.multiply(g * y, 1 - y, out=out)


@sigmoid_backward.override("cupy")
def _sigmoid_backward_cuda(be: Any, y: Any, g: Any, out: Any = None) -> Any:
    return _elementwise_yg(be, "sigmoid_bw", "out = g * y * (1 - y)", y, g, out)


@kernel
def keep_where(be: Any, cond: Any, a: Any, out: Any = None) -> Any:
    """``a`` where ``cond``, else exactly +0, even where ``a`` is NaN or inf (in ``out`` if given).

    A select, not ``a * cond`` (whose ``inf * 0`` is NaN and ``-1 * 0`` is -0).
    """
    xp = be.xp
    res = xp.where(cond, a, xp.zeros((), dtype=a.dtype))
    if out is None:
        return res
    out[...] = res
    return out


@keep_where.override("numpy")
def _keep_where_numpy(be: Any, cond: Any, a: Any, out: Any = None) -> Any:
    uint = _UINT_OF.get(getattr(a, "dtype", None))
    if (uint is None or cond.shape != a.shape
            or (out is not None and (out.dtype != a.dtype or out.shape != a.shape))):
        return keep_where.generic(be, cond, a, out)
    # The select on the bits: a's bit pattern times 1 or 0 (a float product would turn
    # inf * 0 into NaN). Several times faster than np.where or a masked write.
    if out is None:
        out = np.empty_like(a)
    np.multiply(a.view(uint), cond, out=out.view(uint))
    return out


@kernel
def relu_backward(be: Any, y: Any, g: Any, out: Any = None) -> Any:
    """``g`` where ``y > 0``, else exactly 0 even where ``g`` is NaN or inf (in ``out`` if given).

    A select, not ``g * (y > 0)`` (whose ``inf * 0`` is NaN): an inactive unit passes
    no gradient at all, as in PyTorch and JAX. Every backend gives these same bits.
    """
    return keep_where.generic(be, y > 0, g, out)


@relu_backward.override("numpy")
def _relu_backward_numpy(be: Any, y: Any, g: Any, out: Any = None) -> Any:
    # _keep_where_numpy(be, y > 0, g, out) written out: the fused conv + relu step calls this
    # under the chunk engine, and the call chain below an op stays at most 5 frames deep
    uint = _UINT_OF.get(getattr(g, "dtype", None))
    if (uint is None or not getattr(y, "ndim", 0) or g.shape != y.shape
            or (out is not None and (out.dtype != g.dtype or out.shape != g.shape))):
        return relu_backward.generic(be, y, g, out)
    out = np.empty_like(g) if out is None else out
    np.multiply(g.view(uint), y > 0, out=out.view(uint))
    return out


@relu_backward.override("cupy")
def _relu_backward_cuda(be: Any, y: Any, g: Any, out: Any = None) -> Any:
    return _elementwise_yg(be, "relu_bw", "out = y > 0 ? g : (T)0", y, g, out)
