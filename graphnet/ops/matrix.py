"""Matrix products, transposition and the fused affine map ``x @ W + b``."""
from __future__ import annotations

from typing import Any, Optional

from ..checks import integer
from ..errors import ArgumentTypeError, ShapeError
from ..kernels import kernel
from ..node import Node, as_node
from ..shapes import broadcast, describe, sum_to
from .arith import _pair


def _matmul_shape(a: Node, b: Node) -> Optional[tuple]:
    sa, sb = a.shape, b.shape
    if sa is None or sb is None:
        return None
    if len(sa) < 2 or len(sb) < 2:
        raise ShapeError(f"matmul needs operands of rank 2 or more: {describe(a)} @ {describe(b)}"
                         " (reshape vectors to (n, 1) or (1, n))")
    k1, k2 = sa[-1], sb[-2]
    if k1 is not None and k2 is not None and k1 != k2:
        raise ShapeError(f"matmul: inner sizes differ: {describe(a)} @ {describe(b)} "
                         f"({k1} != {k2})")
    try:
        batch = broadcast("matmul", _Shaped(f"batch axes of {a.name}", sa[:-2]),
                          _Shaped(f"batch axes of {b.name}", sb[:-2]))
    except ShapeError as exc:
        raise ShapeError(f"matmul: batch axes differ: {describe(a)} @ {describe(b)} "
                         f"({exc})") from None
    return batch + (sa[-2], sb[-1])


class _Shaped:
    """A stand-in operand for shape checks on part of a node's shape."""

    def __init__(self, name: str, shape: tuple) -> None:
        self.name, self.shape = name, shape


class MatMul(Node):
    op = "matmul"

    def __init__(self, a: Any, b: Any) -> None:
        a, b = _pair(a, b)
        super().__init__((a, b), shape=_matmul_shape(a, b))

    def forward(self, ctx, a, b):
        if a.ndim == 2 and b.ndim == 2:
            return _product(ctx, a, b)
        return a @ b

    def backward(self, ctx, g, xs, y):
        a, b = xs
        need_a, need_b = ctx.needs or (True, True)
        if a.ndim == 2 and b.ndim == 2:
            return _product_grads(ctx, g, a, b, need_a, need_b)
        xp = ctx.xp
        ga = sum_to(g @ xp.swapaxes(b, -1, -2), a.shape) if need_a else None
        gb = sum_to(xp.swapaxes(a, -1, -2) @ g, b.shape) if need_b else None
        return ga, gb


class Transpose(Node):
    op = "transpose"

    def __init__(self, x: Any, axes: Optional[tuple] = None) -> None:
        x = as_node(x)
        if axes is not None and (isinstance(axes, str) or not isinstance(axes, (tuple, list))):
            raise ArgumentTypeError(f"transpose axes must be a tuple of ints, got {axes!r}")
        self.axes = None if axes is None else tuple(integer(a, "transpose axis") for a in axes)
        shape = None
        if x.shape is not None:
            n = len(x.shape)
            order = self.axes if self.axes is not None else tuple(reversed(range(n)))
            if len(order) != n or any(not -n <= a < n for a in order) \
                    or sorted(a % n for a in order) != list(range(n)):
                raise ShapeError(f"transpose axes {order} do not match {describe(x)}")
            if self.axes is not None:
                self.axes = tuple(a % n for a in order)
            shape = tuple(x.shape[i] for i in order)
        super().__init__((x,), shape=shape)

    def forward(self, ctx, x):
        return x.transpose(self.axes)

    def backward(self, ctx, g, xs, y):
        if self.axes is None:
            return (g.transpose(),)
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a % len(self.axes)] = i
        return (g.transpose(inverse),)


@kernel
def sum_rows(be: Any, g: Any, out: Any = None) -> Any:
    """``g.sum(axis=0)`` (a bias gradient), in ``out`` if given."""
    return g.sum(axis=0, out=out)


@sum_rows.override("numpy")
def _sum_rows_numpy(be: Any, g: Any, out: Any = None) -> Any:
    return be.xp.add.reduce(g, axis=0, out=out)  # .sum() adds a Python-level wrapper per call


class Linear(Node):
    """``x @ W + b`` for x (N, in), W (in, out), b (out,), as one node.

    Its :meth:`forward` and :meth:`backward` run in the reference executor, and in training
    steps and forward passes unless an activation alone reads it: the planner then runs the
    fused ``LinearActivation`` (``ops/fused.py``), which calls these same methods.
    """

    op = "linear"

    def __init__(self, x: Any, w: Any, b: Any = None) -> None:
        x = as_node(x)
        w = as_node(w, like=x)
        inputs = (x, w) if b is None else (x, w, as_node(b, like=x))
        shape = _matmul_shape(x, w)
        if shape is not None and len(shape) != 2:
            raise ShapeError(f"linear needs 2-D x and W: {describe(x)}, {describe(w)}")
        if b is not None:
            shape = broadcast("linear bias", _Shaped(x.name + " @ " + w.name, shape), inputs[2]) \
                if shape is not None else None
        super().__init__(inputs, shape=shape)

    def forward(self, ctx, x, w, b=None):
        y = _product(ctx, x, w)
        if b is not None:
            y += b
        return y

    def backward(self, ctx, g, xs, y):
        x, w = xs[0], xs[1]
        needs = ctx.needs or (True,) * len(xs)
        # needs[0] is False for the images: nobody needs d loss / d images
        gx, gw = _product_grads(ctx, g, x, w, needs[0], needs[1])
        if len(xs) == 2:
            return gx, gw
        b = xs[2]
        if not (needs[2] and hasattr(b, "shape")):
            return gx, gw, None
        if b.ndim == 1 and g.ndim == 2:
            return gx, gw, ctx.kernels[sum_rows](ctx.b, g, ctx.grad_out(2, g.dtype))
        return gx, gw, sum_to(g, b.shape)


def _product(ctx, a, b):
    """``a @ b`` for 2-D operands, into the node's own output array."""
    dt = a.dtype if a.dtype == b.dtype else ctx.xp.result_type(a.dtype, b.dtype)
    return ctx.xp.matmul(a, b, out=ctx.empty((a.shape[0], b.shape[1]), dt))


def _product_grads(ctx, g, a, b, need_a: bool, need_b: bool) -> tuple:
    """The gradients of ``a @ b`` (2-D) that are needed, into the arrays the graph offers."""
    mm = ctx.xp.matmul
    ga = mm(g, b.T, out=_dest(ctx, 0, g, b)) if need_a else None
    gb = mm(a.T, g, out=_dest(ctx, 1, g, a)) if need_b else None
    return ga, gb


def _dest(ctx, k: int, g, other):
    # Only when no type promotion happens: the product then has g's dtype exactly.
    return ctx.grad_out(k, g.dtype) if g.dtype == other.dtype else None


def matmul(a: Any, b: Any) -> Node:
    """Matrix product ``a @ b`` (batched over leading axes)."""
    return MatMul(a, b)


def transpose(x: Any, axes: Optional[tuple] = None) -> Node:
    """Permute axes (reverse them by default)."""
    return Transpose(x, axes)


def linear(x: Any, w: Any, b: Any = None) -> Node:
    """The affine map ``x @ w + b`` as one fused node."""
    return Linear(x, w, b)
