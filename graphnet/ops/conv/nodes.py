"""2-D convolution and pooling nodes on NCHW batches: ``conv2d``, ``max_pool2d``, ``avg_pool2d``.

Which methods run where. The reference executor (``Graph(..., plan="reference")``) and any
step in which the planner does not fuse them call these nodes' ``forward`` and
``backward``. Where an activation or a max-pool follows a convolution and nothing else
reads its output, the planner runs the fused step of :mod:`.fusion` instead (training
steps and forward passes alike): then ``Conv2d.forward``/``backward`` are not called (nor
the activation's or ``MaxPool2d``'s), and the fused step drives :mod:`.engine` itself.

The convolution (:mod:`.engine` has the method and its memory bound):

* forward: ``y[n, o] = b[o] + sum_c w[o, c] (*) x[n, c]`` (cross-correlation), as
  ``w.reshape(C_out, -1) @ im2col(x)`` chunk by chunk (or, for 3x3 stride-1 kernels, by
  Winograd F(2x2, 3x3): :mod:`.winograd`, :func:`.winograd.set_algorithm`);
* backward, with ``g2`` the upstream gradient (C_out, n*OH*OW) and ``cols = im2col(x)``:
  ``gw = g2 @ cols.T``, ``gb = g2.sum(axis=1)``, ``gx = col2im(w.reshape(C_out, -1).T @ g2)``.

Pooling loops over the kh*kw window offsets with strided slices (no copies of windows);
max pooling sends each gradient to the first maximum of its window.
"""
from __future__ import annotations

from typing import Any, Optional

from ...checks import int_pair
from ...errors import ShapeError
from ...node import Node, as_node
from ...shapes import describe
from . import engine, threads
from .engine import ConvGeometry, Epilogue, out_size
from .kernels import max_pool_backward, pool_offsets


class Conv2d(Node):
    """``y[n, o] = b[o] + sum_c w[o, c] (*) x[n, c]`` (cross-correlation), NCHW.

    :meth:`forward` and :meth:`backward` run in the reference executor and in steps where
    the planner does not fuse the node; followed by an activation or a max-pool that alone
    read its output, the planner runs :mod:`.fusion`'s ``ConvActivation`` or ``ConvMaxPool``
    instead, which call the same engine with their own epilogue.
    """

    op = "conv2d"
    host_chunks = True  # runs chunks on worker threads (.threads)
    step_scope = staticmethod(threads.blas_held)  # a training step holds the BLAS at one thread

    def __init__(self, x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0) -> None:
        x = as_node(x)
        w = as_node(w, like=x)
        inputs = (x, w) if b is None else (x, w, as_node(b, like=x))
        self.stride = int_pair(stride, "conv2d stride")
        self.padding = int_pair(padding, "conv2d padding", 0)
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"conv2d needs stride >= 1 and padding >= 0, "
                             f"got stride={stride!r}, padding={padding!r}")
        super().__init__(inputs, shape=self._infer(x, w, inputs[2] if b is not None else None))

    def _infer(self, x: Node, w: Node, b: Optional[Node]) -> Any:
        if x.shape is not None and len(x.shape) != 4:
            raise ShapeError(f"conv2d needs an NCHW input (N, C, H, W), got {describe(x)}")
        if w.shape is not None and len(w.shape) != 4:
            raise ShapeError(f"conv2d needs a weight (C_out, C_in, kh, kw), got {describe(w)}")
        if b is not None and b.shape is not None:
            if len(b.shape) != 1 or (w.shape is not None and b.shape[0] not in (None, w.shape[0])):
                raise ShapeError(f"conv2d bias {describe(b)} must have shape (C_out,) "
                                 f"for the weight {describe(w)}")
        if x.shape is None or w.shape is None:
            return None
        n, c, h, wd = x.shape
        co, ci, kh, kw = w.shape
        if c is not None and ci is not None and c != ci:
            raise ShapeError(f"conv2d: input {describe(x)} has {c} channels but weight "
                             f"{describe(w)} expects {ci}")
        (sh, sw), (ph, pw) = self.stride, self.padding
        for size, k, p, axis in ((h, kh, ph, "height"), (wd, kw, pw, "width")):
            if size is not None and k is not None and size + 2 * p < k:
                raise ShapeError(f"conv2d: kernel {axis} {k} of weight {describe(w)} is larger "
                                 f"than the padded input {axis} {size} + 2*{p} of {describe(x)}")
        return (n, co, out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw))

    def geometry(self, be: Any, x: Any, w: Any) -> ConvGeometry:
        """The sizes of one call on arrays ``x`` and ``w`` (:func:`.engine.geometry`)."""
        return engine.geometry(be, x, w, self.stride, self.padding)

    def forward(self, ctx: Any, x: Any, w: Any, b: Any = None) -> Any:
        """The output: ``w2 @ im2col(x)`` plus ``b``, NCHW. Reference executor and unfused steps."""
        geo = self.geometry(ctx.b, x, w)
        out = ctx.empty((geo.n, geo.co, geo.oh, geo.ow), ctx.xp.result_type(x.dtype, w.dtype))
        engine.forward(ctx, x, w, geo, Epilogue(out, b))
        return out

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        """``(gx, gw[, gb])`` for the output's gradient ``g``. Reference executor and unfused steps."""
        return engine.backward(ctx, xs, self.geometry(ctx.b, xs[0], xs[1]), Epilogue(g=g), g.dtype)


class _Pool2d(Node):
    """Shared shape logic of the pooling ops: windows of ``size`` every ``stride``."""

    def __init__(self, x: Any, size: Any, stride: Any = None) -> None:
        x = as_node(x)
        self.size = int_pair(size, f"{self.op} size")
        self.stride = int_pair(stride if stride is not None else size, f"{self.op} stride")
        if min(self.size) < 1 or min(self.stride) < 1:
            raise ValueError(f"{self.op} needs size and stride >= 1, got size={size!r}, "
                             f"stride={stride!r}")
        shape = None
        if x.shape is not None:
            if len(x.shape) != 4:
                raise ShapeError(f"{self.op} needs an NCHW input (N, C, H, W), got {describe(x)}")
            n, c, h, w = x.shape
            for d, k, axis in ((h, self.size[0], "height"), (w, self.size[1], "width")):
                if d is not None and d < k:
                    raise ShapeError(f"{self.op}: window {axis} {k} is larger than the input "
                                     f"{axis} {d} of {describe(x)}")
            shape = (n, c, out_size(h, self.size[0], self.stride[0], 0),
                     out_size(w, self.size[1], self.stride[1], 0))
        super().__init__((x,), shape=shape)

    def _offsets(self, x: Any) -> Any:
        """``(index, slice)`` of every kernel offset: the strided view it reads of ``x``."""
        self._check_fits(x)
        return pool_offsets(x.shape[2:], self.size, self.stride)

    def _check_fits(self, x: Any) -> None:
        if x.shape[2] < self.size[0] or x.shape[3] < self.size[1]:
            raise ShapeError(f"{self.op}: window {self.size} is larger than the input {tuple(x.shape)}")


class MaxPool2d(_Pool2d):
    """The maximum of each window. Its forward and backward run in the reference executor
    and in steps where it is not fused; after a conv2d whose output nothing else reads, the
    planner runs :class:`.fusion.ConvMaxPool` instead."""

    op = "max_pool2d"

    def forward(self, ctx: Any, x: Any) -> Any:
        xp = ctx.xp
        y = None
        for _, sl in self._offsets(x):
            if y is None:
                y = ctx.empty(x[sl].shape, x.dtype)
                y[...] = x[sl]
            else:
                xp.maximum(y, x[sl], out=y)
        return y

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        # Each window's gradient goes to its first maximum (in row-major window order);
        # a window whose maximum is NaN passes none. No host synchronisation.
        x = xs[0]
        self._check_fits(x)
        return (ctx.kernels[max_pool_backward](ctx.b, x, y, g, self.size, self.stride,
                                               ctx.grad_out(0, g.dtype)),)


class AvgPool2d(_Pool2d):
    """The mean of each window (never fused: its forward and backward run in every step)."""

    op = "avg_pool2d"

    def forward(self, ctx: Any, x: Any) -> Any:
        y = None
        for _, sl in self._offsets(x):
            if y is None:
                y = x[sl].copy()
            else:
                y += x[sl]
        y *= 1.0 / (self.size[0] * self.size[1])
        return y

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        x = xs[0]
        gk = g * (1.0 / (self.size[0] * self.size[1]))
        gx = ctx.xp.zeros(x.shape, dtype=gk.dtype)
        for _, sl in self._offsets(x):
            gx[sl] += gk
        return (gx,)


def conv2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0) -> Node:
    """2-D cross-correlation of NCHW ``x`` with ``w`` (C_out, C_in, kh, kw), plus bias ``b`` (C_out,).

    ``stride`` and ``padding`` (zeros) are ints or (height, width) pairs. The output is
    (N, C_out, (H + 2p - kh) // s + 1, (W + 2p - kw) // s + 1). See the module docstring
    for the im2col method and its memory bound.
    """
    return Conv2d(x, w, b, stride, padding)


def max_pool2d(x: Any, size: Any = 2, stride: Any = None) -> Node:
    """The maximum of each ``size`` window of NCHW ``x``, every ``stride`` (default: ``size``)."""
    return MaxPool2d(x, size, stride)


def avg_pool2d(x: Any, size: Any = 2, stride: Any = None) -> Node:
    """The mean of each ``size`` window of NCHW ``x``, every ``stride`` (default: ``size``)."""
    return AvgPool2d(x, size, stride)
