"""``max_pool2d(conv2d(x, w, b))`` as one training step, each chunk pooled while in cache.

Run by the step planner in place of the two nodes when nothing else needs the
convolution's output (``ops/fused.py`` registers it). For windows that tile the output
(size == stride), every chunk of the convolution's product is pooled right after its
matrix product: the full-size output is never written, read back or transposed, and
backward builds each chunk's upstream gradient straight from the pooled gradient. The
arithmetic is the two nodes', in the same order, so the results are bit-identical:

* forward: the ``P = size[0] * size[1]`` window offsets of the chunk are copied apart,
  ``d[p]`` (C_out, m, PH, PW), the bias added on the way (as conv2d adds it), and the
  maximum taken over them in window order; where a backward follows, :func:`first_max_index`
  records, per window, which offset held the first maximum (``P`` for a NaN maximum), as
  max-pool backward picks it;
* backward: offset ``p`` of each window gets the pooled gradient where it was that
  first maximum and +0 elsewhere (a select: NaN never leaks), which is what
  ``max_pool2d``'s backward writes, then conv2d's backward runs on it.

Other windows (overlapping, or with gaps) run the two ops one after the other.
"""
from __future__ import annotations

from typing import Any

from ..kernels import kernel
from ..node import RunContext
from .conv import Conv2d, MaxPool2d
from .unary import keep_where


class ConvMaxPool:
    """``max_pool2d(conv2d(x, w, b))`` as one step (see the module docstring)."""

    def __init__(self, conv: Conv2d, pool: MaxPool2d) -> None:
        self.conv, self.pool = conv, pool
        self.op = "conv2d+max_pool2d"
        self.name = pool.name

    def _tiles(self, geo: Any) -> bool:
        return self.pool.size == self.pool.stride and geo.oh >= self.pool.size[0] \
            and geo.ow >= self.pool.size[1]

    def forward(self, ctx: Any, x: Any, w: Any, b: Any = None) -> Any:
        xp = ctx.xp
        geo = self.conv.geometry(ctx.b, x, w)
        if not self._tiles(geo):
            y = self.conv.forward(RunContext(ctx.b, ctx.training), x, w, b)
            ctx.save(y)
            return self.pool.forward(ctx, y)
        (sh, sw), co = self.pool.size, geo.co
        poh, pow_ = geo.oh // sh, geo.ow // sw
        windows = sh * sw
        out = ctx.empty((geo.n, co, poh, pow_), xp.result_type(x.dtype, w.dtype))
        # where each window's maximum was (only backward reads it), channel-major like the
        # products, so that a block (forward) and a chunk (backward) are both a slice of it
        first = None
        if ctx.backward:
            first = ctx.empty((co, geo.n, poh, pow_), xp.uint8, slot=1)
            ctx.save(first)
        bias = None if b is None else b.reshape(co, 1, 1, 1)
        first_max = ctx.kernels[first_max_index]
        step = co * poh * pow_

        def emit(y4: Any, n0: int, n1: int, s: Any) -> None:
            m = n1 - n0
            d = s.extra[0][:windows * step * m].reshape(windows, co, m, poh, pow_)
            for p in range(windows):  # each window offset apart, the bias added on the way
                i, j = divmod(p, sw)
                offset = y4[:, :, i:poh * sh:sh, j:pow_ * sw:sw]
                if bias is None:
                    d[p] = offset
                else:
                    xp.add(offset, bias, out=d[p])
            mx = s.extra[1][:step * m].reshape(co, m, poh, pow_)
            mx[...] = d[0]
            for p in range(1, windows):
                xp.maximum(mx, d[p], out=mx)
            if first is not None:
                first_max(ctx.b, d, mx, first[:, n0:n1])
            out[n0:n1] = mx.transpose(1, 0, 2, 3)

        def extra() -> tuple:
            return (xp.empty((windows * step * geo.block,), dtype=out.dtype),
                    xp.empty((step * geo.block,), dtype=out.dtype))
        self.conv.forward_chunks(ctx, x, w, geo, emit, extra)
        return out

    def backward(self, ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
        x, w = xs[0], xs[1]
        xp, keep = ctx.xp, ctx.kernels[keep_where]
        geo = self.conv.geometry(ctx.b, x, w)
        if not self._tiles(geo):
            conv_out = ctx.saved()
            gy = self.pool.backward(RunContext(ctx.b, True), g, (conv_out,), y)[0]
            return self.conv.backward(ctx, gy, xs, conv_out)
        first = ctx.saved()
        (sh, sw), co = self.pool.size, geo.co
        poh, pow_ = geo.oh // sh, geo.ow // sw
        windows, step = sh * sw, co * poh * pow_

        def fill(g4: Any, n0: int, n1: int, s: Any) -> None:
            m = n1 - n0
            gp = s.extra[:step * m].reshape(co, m, poh, pow_)
            gp[...] = g[n0:n1].transpose(1, 0, 2, 3)
            idx = first[:, n0:n1]
            for p in range(windows):
                i, j = divmod(p, sw)
                keep(ctx.b, idx == p, gp, out=g4[:, :, i:poh * sh:sh, j:pow_ * sw:sw])
            if geo.oh > poh * sh:
                g4[:, :, poh * sh:] = 0
            if geo.q > pow_ * sw:
                g4[:, :, :, pow_ * sw:] = 0  # rows' leftover and junk columns

        def extra() -> Any:  # the chunk's pooled gradient, channel-major
            return xp.empty((step * geo.step,), dtype=g.dtype)
        has_bias = len(xs) == 3 and hasattr(xs[2], "shape")
        return self.conv.backward_chunks(ctx, x, w, geo, g.dtype, fill, has_bias, len(xs) == 3,
                                         extra)


@kernel
def first_max_index(be: Any, d: Any, mx: Any, out: Any) -> Any:
    """Into ``out`` (uint8): per position, the first ``p`` with ``d[p] == mx``; ``len(d)``
    where there is none (a NaN maximum).

    With ``ne[p] = d[p] != mx`` (0 or 1) that index is
    ``ne[0] * (1 + ne[1] * (1 + ... * (1 + ne[P-1])))``: no branches, small integers.
    """
    xp = be.xp
    windows = d.shape[0]
    if windows > 254:
        raise ValueError(f"max-pool windows of {windows} elements: at most 254 here")
    ne = xp.empty(mx.shape, dtype=bool)
    xp.not_equal(d[windows - 1], mx, out=ne)
    out[...] = ne
    for p in range(windows - 2, -1, -1):
        out += 1
        xp.not_equal(d[p], mx, out=ne)
        xp.multiply(out, ne, out=out)
    return out
