"""The fused steps of conv2d: the step planner runs them in place of two nodes.

Registered here with :func:`graphnet.planner.register_fusion`; the planner uses a rule only
where nothing else needs the convolution's value or gradient, in training steps and forward
passes alike (then these steps' ``forward``/``backward`` run, not the two nodes'). Each step
passes the engine (:mod:`.engine`) an :class:`~.engine.Epilogue` that works on each block of
the convolution's product while it is in cache, with the two nodes' arithmetic in the same
order, so the results are bit-identical:

* ``activation(conv2d(x, w, b))`` (:class:`ConvActivation`): forward applies the activation
  to each block of the output in place; backward turns each chunk's gradient through the
  activation's ``grad_from_output`` as it goes.
* ``max_pool2d(conv2d(x, w, b))`` (:class:`ConvMaxPool`), for windows that tile the output
  (size == stride): forward copies the ``P = size[0] * size[1]`` window offsets of each
  block apart, ``d[p]`` (C_out, m, PH, PW), the bias added on the way, takes their maximum
  in window order and, where a backward follows, records per window which offset held the
  first maximum (:func:`~.kernels.first_max_index`; ``P`` for a NaN maximum). The
  full-size convolution output is never written. Backward gives offset ``p`` of each window
  the pooled gradient where it was that first maximum and +0 elsewhere (a select: NaN never
  leaks), as ``max_pool2d``'s backward does. Other windows (overlapping, or with gaps) run
  the two ops one after the other.
"""
from __future__ import annotations

from typing import Any

from ...node import RunContext
from ...planner import register_fusion
from ..unary import Activation, floating_output, keep_where
from . import engine
from .engine import ConvGeometry, Epilogue
from .kernels import first_max_index
from .nodes import Conv2d, MaxPool2d


class _Activated(Epilogue):
    """The plain epilogue with ``activation`` applied to each block (forward), and each
    chunk's gradient turned through it (backward, from the output ``y``)."""

    def __init__(self, activation: Activation, out: Any = None, bias: Any = None,
                 g: Any = None, y: Any = None) -> None:
        super().__init__(out, bias, g)
        self.activation, self.y = activation, y

    def scratch(self, xp: Any, geo: ConvGeometry) -> Any:
        if self.g is None:
            return None
        per_image = self.y.size // max(len(self.y), 1)  # (self.y[0] fails on 0 images)
        return xp.empty((per_image * geo.step,), dtype=self.g.dtype)  # one chunk's gz

    def _activate(self, ctx: Any, n0: int, n1: int) -> None:
        block = self.out[n0:n1]
        self.activation.apply(ctx.xp, block, out=block)

    def _grad_args(self, n0: int, n1: int, extra: Any) -> tuple:
        """``(y, g, out)`` of images ``n0:n1`` for the activation's gradient (out in ``extra``).

        (Returned, not called from here: the call chain below a conv op stays 5 frames.)"""
        y = self.y[n0:n1]
        return y, self.g[n0:n1], extra[:y.size].reshape(y.shape)

    def forward_block(self, ctx: Any, y4: Any, n0: int, n1: int, extra: Any) -> None:
        super().forward_block(ctx, y4, n0, n1, extra)
        self._activate(ctx, n0, n1)

    def backward_chunk(self, ctx: Any, g4: Any, n0: int, n1: int, extra: Any) -> None:
        self.fill(g4, self.activation.grad_from_output(ctx, *self._grad_args(n0, n1, extra)))

    def forward_tiles(self, ctx: Any, tiles: Any, n0: int, n1: int, extra: Any) -> None:
        super().forward_tiles(ctx, tiles, n0, n1, extra)
        self._activate(ctx, n0, n1)

    def backward_tiles(self, ctx: Any, tiles: Any, n0: int, n1: int, extra: Any) -> Any:
        tiles.from_nchw(self.activation.grad_from_output(ctx, *self._grad_args(n0, n1, extra)))
        return None


class ConvActivation:
    """``activation(conv2d(x, w, b))`` as one step, each block activated while in cache."""

    def __init__(self, conv: Conv2d, activation: Activation) -> None:
        self.conv, self.activation = conv, activation
        self.op = f"conv2d+{activation.op}"
        self.name = activation.name

    def forward(self, ctx: Any, x: Any, w: Any, b: Any = None) -> Any:
        """The activated output; runs in training steps and forward passes when fused."""
        geo = self.conv.geometry(ctx.b, x, w)
        out = ctx.empty((geo.n, geo.co, geo.oh, geo.ow), ctx.xp.result_type(x.dtype, w.dtype))
        engine.forward(ctx, x, w, geo, _Activated(self.activation, out, b))
        return out

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        """The convolution's input gradients from the activated output's ``g``."""
        geo = self.conv.geometry(ctx.b, xs[0], xs[1])
        return engine.backward(ctx, xs, geo, _Activated(self.activation, g=g, y=y), g.dtype)


class _Pooled(Epilogue):
    """Max-pooling of windows ``size`` that tile the output, per block (forward: into
    ``out``, with ``first``, each window's first-maximum offset, unless None), and the
    conv's upstream gradient from the pooled ``g`` and ``first`` per chunk (backward)."""

    def __init__(self, size: tuple, geo: ConvGeometry, out: Any = None, bias: Any = None,
                 first: Any = None, g: Any = None) -> None:
        super().__init__(out, None, g)
        self.size, self.first = size, first
        self.bias = None if bias is None else bias.reshape(-1, 1, 1, 1)  # channel-major
        self.ph, self.pw = geo.oh // size[0], geo.ow // size[1]
        self.step = geo.co * self.ph * self.pw  # one image's pooled elements

    def scratch(self, xp: Any, geo: ConvGeometry) -> Any:
        if self.g is not None:  # the chunk's pooled gradient, channel-major
            return xp.empty((self.step * geo.step,), dtype=self.g.dtype)
        windows = self.size[0] * self.size[1]
        return (xp.empty((windows * self.step * geo.block,), dtype=self.out.dtype),
                xp.empty((self.step * geo.block,), dtype=self.out.dtype))

    def forward_block(self, ctx: Any, y4: Any, n0: int, n1: int, extra: Any) -> None:
        (sh, sw), ph, pw = self.size, self.ph, self.pw
        self._pool(ctx, [y4[:, :, i:ph * sh:sh, j:pw * sw:sw]
                         for i, j in (divmod(p, sw) for p in range(sh * sw))], n0, n1, extra)

    def forward_tiles(self, ctx: Any, tiles: Any, n0: int, n1: int, extra: Any) -> None:
        """2x2 windows are Winograd's tiles: window offset (i, j) is parity plane (i, j)."""
        if self.size != (2, 2):  # the windows on rows
            return self.forward_block(ctx, tiles.interleaved(), n0, n1, extra)
        planes = tiles.planes.reshape((4,) + tiles.planes.shape[2:])
        self._pool(ctx, [planes[p, :, :, :self.ph, :self.pw] for p in range(4)], n0, n1, extra)

    def _pool(self, ctx: Any, offsets: list, n0: int, n1: int, extra: Any) -> None:
        """Images ``n0:n1``'s windows from their ``offsets`` (C_out, m, PH, PW) each: copied
        apart, the bias added on the way, their maximum and first maximum."""
        xp, m, co = ctx.xp, n1 - n0, offsets[0].shape[0]
        d = extra[0][:len(offsets) * self.step * m].reshape(len(offsets), co, m, self.ph, self.pw)
        for p, offset in enumerate(offsets):
            if self.bias is None:
                d[p] = offset
            else:
                xp.add(offset, self.bias, out=d[p])
        mx = extra[1][:self.step * m].reshape(co, m, self.ph, self.pw)
        mx[...] = d[0]
        for p in range(1, len(offsets)):
            xp.maximum(mx, d[p], out=mx)
        if self.first is not None:
            ctx.kernels[first_max_index](ctx.b, d, mx, self.first[:, n0:n1])
        self.out[n0:n1] = mx.transpose(1, 0, 2, 3)

    def backward_tiles(self, ctx: Any, tiles: Any, n0: int, n1: int, extra: Any) -> Any:
        """Each 2x2 window's gradient straight into Winograd's parity planes."""
        if self.size != (2, 2):  # backward_chunk writes rows
            return tiles.rows[:, :, :tiles.oh]
        ph, pw, m = self.ph, self.pw, n1 - n0
        keep = ctx.kernels[keep_where]
        planes = tiles.planes.reshape((4,) + tiles.planes.shape[2:])
        gp = extra[:self.step * m].reshape(planes.shape[1], m, ph, pw)
        gp[...] = self.g[n0:n1].transpose(1, 0, 2, 3)
        idx = self.first[:, n0:n1]
        for p in range(4):
            keep(ctx.b, idx == p, gp, out=planes[p, :, :, :ph, :pw])
        planes[:, :, :, ph:] = 0  # leftover (odd OH) and junk rows
        planes[:, :, :, :ph, pw:] = 0  # leftover and junk columns
        return None

    def backward_chunk(self, ctx: Any, g4: Any, n0: int, n1: int, extra: Any) -> None:
        (sh, sw), ph, pw, m = self.size, self.ph, self.pw, n1 - n0
        keep = ctx.kernels[keep_where]
        gp = extra[:self.step * m].reshape(g4.shape[0], m, ph, pw)
        gp[...] = self.g[n0:n1].transpose(1, 0, 2, 3)
        idx = self.first[:, n0:n1]
        for p in range(sh * sw):
            i, j = divmod(p, sw)
            keep(ctx.b, idx == p, gp, out=g4[:, :, i:ph * sh:sh, j:pw * sw:sw])
        if g4.shape[2] > ph * sh:
            g4[:, :, ph * sh:] = 0
        if g4.shape[3] > pw * sw:
            g4[:, :, :, pw * sw:] = 0  # rows' leftover and junk columns


class ConvMaxPool:
    """``max_pool2d(conv2d(x, w, b))`` as one step (see the module docstring)."""

    def __init__(self, conv: Conv2d, pool: MaxPool2d) -> None:
        self.conv, self.pool = conv, pool
        self.op = "conv2d+max_pool2d"
        self.name = pool.name

    def _tiles(self, geo: ConvGeometry) -> bool:
        return self.pool.size == self.pool.stride and geo.oh >= self.pool.size[0] \
            and geo.ow >= self.pool.size[1]

    def forward(self, ctx: Any, x: Any, w: Any, b: Any = None) -> Any:
        """The pooled output; runs in training steps and forward passes when fused."""
        xp, geo = ctx.xp, self.conv.geometry(ctx.b, x, w)
        dtype = xp.result_type(x.dtype, w.dtype)
        if not self._tiles(geo):  # the two ops in turn, the conv's output kept for backward
            y = xp.empty((geo.n, geo.co, geo.oh, geo.ow), dtype)  # not the step's output array
            engine.forward(ctx, x, w, geo, Epilogue(y, b))
            ctx.save(y)
            return self.pool.forward(ctx, y)
        (sh, sw), co = self.pool.size, geo.co
        out = ctx.empty((geo.n, co, geo.oh // sh, geo.ow // sw), dtype)
        # where each window's maximum was (only backward reads it), channel-major like the
        # products, so that a block (forward) and a chunk (backward) are both a slice of it
        first = None
        if ctx.backward:
            first = ctx.empty((co, geo.n, geo.oh // sh, geo.ow // sw), xp.uint8, slot=1)
            ctx.save(first)
        engine.forward(ctx, x, w, geo, _Pooled(self.pool.size, geo, out, b, first))
        return out

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        """The convolution's input gradients from the pooled output's ``g``."""
        geo = self.conv.geometry(ctx.b, xs[0], xs[1])
        if not self._tiles(geo):
            conv_out = ctx.saved()
            gy = self.pool.backward(RunContext(ctx.b, True), g, (conv_out,), y)[0]
            return engine.backward(ctx, xs, geo, Epilogue(g=gy), gy.dtype)
        epilogue = _Pooled(self.pool.size, geo, first=ctx.saved(), g=g)
        return engine.backward(ctx, xs, geo, epilogue, g.dtype)


register_fusion(Conv2d, Activation, ConvActivation, when=floating_output)
register_fusion(Conv2d, MaxPool2d, ConvMaxPool)
