"""2-D convolution and pooling on NCHW batches: ``conv2d``, ``max_pool2d``, ``avg_pool2d``.

Convolution is im2col plus one matrix product per chunk of the batch. A chunk of images
is first copied, zero-padded, into channel-major order (C_in, n, H + 2p, W + 2p); then

* forward: ``cols = im2col(images)`` is a ``(C_in*kh*kw, n*OH*Q)`` matrix, one slice copy
  per kernel offset (:func:`im2col`); ``y = w.reshape(C_out, -1) @ cols`` is
  ``(C_out, n*OH*Q)``, moved to NCHW with the bias added in the same pass;
* backward: ``dw += g2 @ cols.T`` and ``dcols = w2.T @ g2`` (``g2`` the upstream
  gradient as ``(C_out, n*OH*Q)``), then ``dx = col2im(dcols)``, the scatter-add adjoint of
  im2col (:func:`col2im`: one slice-add per kernel offset, never ``add.at``; one
  gather kernel on CuPy).

``Q`` is OW, except for stride 1, where rows are "full width" (Q = W + 2p): every kernel
offset's block is then one contiguous run of the flattened images, so im2col and col2im
move long runs instead of OW-element rows (on NumPy about 2x faster for the MNIST
network's 24-wide rows); the W + 2p - OW extra columns per row (8% more product work for
3x3 on 26 pixels) are junk outputs, dropped, and get zero upstream gradient.

Memory. A whole batch's cols would take ``N * C_in*kh*kw * OH*Q * itemsize`` bytes: 92 MB
for the MNIST "cnn" network's conv 32->64, 3x3 on 26x26 at batch 128 (128 * 288 * 24*26 *
4 B). Instead the batch goes in chunks of images whose cols stay under the backend's
``im2col_chunk_bytes`` (NumPy: 2 MiB, so that each chunk's im2col, products and col2im
run in cache; CuPy: 256 MiB, big products for the GPU) and never over
:data:`IM2COL_LIMIT_BYTES` (256 MiB, :func:`set_im2col_limit`); an image whose cols
alone exceed that runs alone. Backward rebuilds each chunk's cols rather than keep a
batch of them alive from forward. So, with ``B`` the chunk limit, the peak extra memory
beyond the op's output (forward) or its gradients (backward) is

* forward: cols (<= B) + its product (<= B * C_out / (C_in*kh*kw)) + the chunk's padded
  channel-major images;
* backward: cols + dcols (<= 2B) + the upstream chunk as ``(C_out, n*OH*Q)`` + padded
  images and their gradient for the chunk;

i.e. a few times B whatever the batch. Measured (tracemalloc) for that layer at batch
128: on NumPy (2 images per chunk) 2.3 MB extra in forward and 3.7 MB in backward; with
256 MiB chunks (CuPy's setting: the batch is one chunk) 124 MB and 228 MB.

Threads and fusion. On NumPy the chunks run on worker threads (:mod:`graphnet.parallel`;
the weight and bias gradients are summed per chunk group, so the bits do not depend on the
number of workers); forward hands them out in blocks of up to :data:`BLOCK_CHUNKS` chunks
whose passes after the products run once per block (:func:`_blocks`). Where a max-pool or
an activation follows the convolution and nothing else reads its output, the planner fuses
the two (training steps and forward passes alike): the pool or activation runs on each
block while it is in cache (:mod:`graphnet.ops.conv_pool`, ``ops/fused.py``), through the
per-block output and per-chunk upstream-gradient steps that
:meth:`Conv2d.forward_chunks` and :meth:`Conv2d.backward_chunks` take as arguments.

Pooling loops over the kh*kw kernel offsets with strided slices (no im2col, no copies
of windows); max pooling sends each gradient to the first maximum of its window.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np

from .. import parallel
from ..checks import int_pair, integer
from ..errors import ShapeError
from ..kernels import kernel
from ..node import Node, as_node
from ..shapes import describe

IM2COL_LIMIT_BYTES = 256 * 2**20
DEFAULT_CHUNK_BYTES = 256 * 2**20  # for backends without an ``im2col_chunk_bytes``
BLOCK_CHUNKS = 4  # the most chunks in a block (see _blocks)


def set_im2col_limit(nbytes: int) -> int:
    """Set the largest im2col chunk (bytes) conv2d allocates at once; return the old limit."""
    global IM2COL_LIMIT_BYTES
    old, IM2COL_LIMIT_BYTES = IM2COL_LIMIT_BYTES, integer(nbytes, "the im2col limit (bytes)", 1)
    return old


def _out_size(n: Optional[int], k: int, s: int, p: int) -> Optional[int]:
    return None if n is None else (n + 2 * p - k) // s + 1


def _chunks(n: int, per_item_bytes: int, backend: Any = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive images whose cols fit the chunk size.

    As few chunks as fit, of sizes as even as possible (so that workers share them evenly).
    """
    limit = min(IM2COL_LIMIT_BYTES, getattr(backend, "im2col_chunk_bytes", DEFAULT_CHUNK_BYTES))
    most = max(1, min(n, limit // max(per_item_bytes, 1)))
    count = -(-n // most)
    step = -(-n // count) if n else 1
    return [(i, min(n, i + step)) for i in range(0, n, step)] or [(0, 0)]


def _blocks(chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(first, stop)`` runs of consecutive chunks that a worker takes as one unit.

    Each chunk's im2col and product stay cache-sized, but the passes after the products
    (bias, pooling, layout) run once per block on arrays up to :data:`BLOCK_CHUNKS` times
    larger: small NumPy calls on two threads hand the GIL back and forth at every call
    and run slower than on one (BENCHMARKS.md, session 5). Chunks are grouped only where
    there are 16 or more, and then into at least 8 blocks, so that workers share them evenly.
    """
    per = max(1, min(BLOCK_CHUNKS, len(chunks) // 8))
    return [(c, min(c + per, len(chunks))) for c in range(0, len(chunks), per)]


class Conv2d(Node):
    """``y[n, o] = b[o] + sum_c w[o, c] (*) x[n, c]`` (cross-correlation), NCHW."""

    op = "conv2d"
    host_chunks = True  # runs chunks on worker threads (graphnet.parallel.run_scope)

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
        return (n, co, _out_size(h, kh, sh, ph), _out_size(wd, kw, sw, pw))

    # --- helpers ---------------------------------------------------------------------
    def geometry(self, be: Any, x: Any, w: Any) -> "ConvGeometry":
        """The sizes of one call: output, padded images, columns per row, chunks."""
        (sh, sw), (ph, pw) = self.stride, self.padding
        n, c, h, wd = x.shape
        co, ci, kh, kw = w.shape
        if c != ci or h + 2 * ph < kh or wd + 2 * pw < kw:
            raise ShapeError(f"conv2d: input {tuple(x.shape)} does not fit weight {tuple(w.shape)} "
                             f"(stride {self.stride}, padding {self.padding})")
        oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        wp = wd + 2 * pw
        q = conv_row_width(self.stride, wp, ow)
        # full-width rows read one spare row past the last window row
        hp = oh + kh if self.stride == (1, 1) else h + 2 * ph
        k = c * kh * kw
        chunks = _chunks(n, k * oh * q * x.dtype.itemsize, be)
        blocks = _blocks(chunks)
        return ConvGeometry(n, c, co, kh, kw, oh, ow, hp, wp, q, k, chunks,
                            chunks[0][1] - chunks[0][0], blocks,
                            max(chunks[c1 - 1][1] - chunks[c0][0] for c0, c1 in blocks))

    def _images(self, xp: Any, x: Any, hp: int, wp: int, buf: Any = None) -> Any:
        """``x`` (a chunk, NCHW) as zero-padded channel-major images (C, n, hp, wp)."""
        n, c, h, w = x.shape
        ph, pw = self.padding
        out = xp.zeros((c, n, hp, wp), dtype=x.dtype) if buf is None else buf
        out[:, :, ph:ph + h, pw:pw + w] = x.transpose(1, 0, 2, 3)
        return out

    def _cols(self, ctx: Any, x: Any, geo: "ConvGeometry", s: "_Scratch", n0: int, n1: int) -> Any:
        """The chunk's im2col matrix ``(C*kh*kw, m*OH*Q)``, in ``s``'s buffers."""
        full = n1 - n0 == geo.step
        images = self._images(ctx.xp, x[n0:n1], geo.hp, geo.wp, s.images if full else None)
        return ctx.kernels[im2col](ctx.b, images, (geo.kh, geo.kw), self.stride,
                                   (geo.oh, geo.ow), out=s.cols)

    # --- forward and backward --------------------------------------------------------
    def forward(self, ctx, x, w, b=None):
        return self.forward_nchw(ctx, x, w, b)

    def forward_nchw(self, ctx: Any, x: Any, w: Any, b: Any = None,
                     then: Optional[Callable[[Any], None]] = None) -> Any:
        """The output (N, C_out, OH, OW); ``then(block)`` runs on each chunk's block of it
        once written (an activation applied in place, while in cache)."""
        xp = ctx.xp
        geo = self.geometry(ctx.b, x, w)
        out = ctx.empty((geo.n, geo.co, geo.oh, geo.ow), xp.result_type(x.dtype, w.dtype))
        bias = None if b is None else b.reshape(1, geo.co, 1, 1)

        def emit(y4: Any, n0: int, n1: int, s: "_Scratch") -> None:
            y = y4[:, :, :, :geo.ow].transpose(1, 0, 2, 3)
            if bias is None:
                out[n0:n1] = y
            else:
                xp.add(y, bias, out=out[n0:n1])
            if then is not None:
                then(out[n0:n1])
        self.forward_chunks(ctx, x, w, geo, emit)
        return out

    def forward_chunks(self, ctx: Any, x: Any, w: Any, geo: "ConvGeometry",
                       emit: Callable[[Any, int, int, "_Scratch"], None],
                       extra: Optional[Callable[[], Any]] = None) -> None:
        """Compute the output block by block: ``emit(y4, n0, n1, scratch)`` gets images
        ``n0:n1`` (a block of chunks, ``geo.blocks``) as ``y4`` (C_out, m, OH, Q), no bias
        added, in scratch memory.

        ``extra()`` makes per-worker scratch for ``emit`` (``scratch.extra``), for up to
        ``geo.block`` images.
        """
        xp, be = ctx.xp, ctx.b
        w2 = w.reshape(geo.co, geo.k)
        ydtype = xp.result_type(x.dtype, w.dtype)
        per_image = geo.oh * geo.q

        def work(s: _Scratch, b: int) -> None:
            c0, c1 = geo.blocks[b]
            start, stop = geo.chunks[c0][0], geo.chunks[c1 - 1][1]
            y = s.y[:geo.co * (stop - start) * per_image].reshape(geo.co, -1)
            for n0, n1 in geo.chunks[c0:c1]:  # each chunk's product into its columns of y
                cols = self._cols(ctx, x, geo, s, n0, n1)
                xp.matmul(w2, cols, out=y[:, (n0 - start) * per_image:(n1 - start) * per_image])
            emit(y.reshape(geo.co, stop - start, geo.oh, geo.q), start, stop, s)

        def scratch() -> _Scratch:
            return _Scratch(xp.zeros((geo.c, geo.step, geo.hp, geo.wp), dtype=x.dtype),
                            xp.empty((geo.step * geo.k * per_image,), dtype=x.dtype),
                            extra() if extra else None,
                            y=xp.empty((geo.co * geo.block * per_image,), dtype=ydtype))
        parallel.for_each_chunk(be, len(geo.blocks), work, scratch)

    def backward(self, ctx, g, xs, y):
        return self.backward_nchw(ctx, xs, lambda n0, n1, s: g[n0:n1], g.dtype)

    def backward_nchw(self, ctx: Any, xs: tuple, upstream: Callable[[int, int, Any], Any],
                      gdtype: Any, extra: Optional[Callable[[], Any]] = None) -> tuple:
        """The gradients, with ``upstream(n0, n1, scratch)`` giving images ``n0:n1``'s
        gradient of the output (N, C_out, OH, OW) chunk by chunk."""
        x, w = xs[0], xs[1]
        geo = self.geometry(ctx.b, x, w)
        ow = geo.ow

        def fill(g4: Any, n0: int, n1: int, s: "_Scratch") -> None:
            g4[:, :, :, :ow] = upstream(n0, n1, s).transpose(1, 0, 2, 3)
            if geo.q > ow:
                g4[:, :, :, ow:] = 0  # the junk columns of full-width rows
        has_bias = len(xs) == 3 and hasattr(xs[2], "shape")
        return self.backward_chunks(ctx, x, w, geo, gdtype, fill, has_bias, len(xs) == 3, extra)

    def backward_chunks(self, ctx: Any, x: Any, w: Any, geo: "ConvGeometry", gdtype: Any,
                        fill: Callable[[Any, int, int, "_Scratch"], None], has_bias: bool,
                        bias_slot: bool, extra: Optional[Callable[[], Any]] = None) -> tuple:
        """The gradients ``(gx, gw[, gb])``, chunk by chunk: ``fill(g4, n0, n1, scratch)``
        writes images ``n0:n1``'s upstream gradient into ``g4`` (C_out, m, OH, Q), junk
        columns included (zero).

        Weight and bias gradients are summed per chunk group, then over the groups in
        order (:mod:`graphnet.parallel`): the same bits whatever the number of workers.
        """
        xp, be = ctx.xp, ctx.b
        co, k, per_chunk = geo.co, geo.k, geo.oh * geo.q
        need_x = ctx.needs is None or ctx.needs[0]
        w2t = w.reshape(co, k).T
        groups = min(parallel.GROUPS, len(geo.chunks))
        gwdtype = xp.result_type(w.dtype, gdtype)
        gw_acc = xp.zeros((groups, co, k), dtype=gwdtype)
        gb_acc = xp.zeros((groups, co), dtype=gdtype) if has_bias else None
        gx_dtype = xp.result_type(x.dtype, gdtype)
        gx = ctx.grad_out(0, gx_dtype) if need_x else None  # fully written below
        if gx is None and need_x:
            gx = xp.empty(x.shape, dtype=gx_dtype)
        (ph, pw), (h, wd) = self.padding, x.shape[2:]

        def work(s: _Scratch, c: int) -> None:
            n0, n1 = geo.chunks[c]
            m = n1 - n0
            cols = self._cols(ctx, x, geo, s, n0, n1)
            g4 = s.g[:co * m * per_chunk].reshape(co, m, geo.oh, geo.q)
            fill(g4, n0, n1, s)
            g2 = g4.reshape(co, m * per_chunk)
            xp.matmul(cols, g2.T, out=s.gw)  # gw.T: about 20% faster than g2 @ cols.T here
            gw_acc[c % parallel.GROUPS] += s.gw.T
            if gb_acc is not None:
                gb_acc[c % parallel.GROUPS] += g2.sum(axis=1)
            if not need_x:  # e.g. the first layer: nobody needs d loss / d images
                return
            dcols = s.dcols[:k * m * per_chunk].reshape(k, m * per_chunk)
            xp.matmul(w2t, g2, out=dcols)
            full = m == geo.step
            dimages = s.dimages if full else xp.empty((geo.c, m, geo.hp, geo.wp), dtype=gx.dtype)
            dimages[...] = 0
            ctx.kernels[col2im](be, dcols, dimages, (geo.kh, geo.kw), self.stride,
                                (geo.oh, geo.ow))
            gx[n0:n1] = dimages[:, :, ph:ph + h, pw:pw + wd].transpose(1, 0, 2, 3)

        def scratch() -> _Scratch:
            step = geo.step
            dx = {} if not need_x else {
                "dcols": xp.empty((k * step * per_chunk,), dtype=gx_dtype),
                "dimages": xp.empty((geo.c, step, geo.hp, geo.wp), dtype=gx_dtype)}
            return _Scratch(xp.zeros((geo.c, step, geo.hp, geo.wp), dtype=x.dtype),
                            xp.empty((step * k * per_chunk,), dtype=x.dtype),
                            extra() if extra else None,
                            g=xp.empty((co * step * per_chunk,), dtype=gdtype),
                            gw=xp.empty((k, co), dtype=gwdtype), **dx)
        parallel.for_each_chunk(be, len(geo.chunks), work, scratch)
        grads = (gx if need_x else None, _sum_groups(gw_acc).reshape(w.shape))
        if bias_slot:
            grads += (_sum_groups(gb_acc) if has_bias else None,)
        return grads


class ConvGeometry(NamedTuple):
    """One conv2d call's sizes (see :meth:`Conv2d.geometry`)."""

    n: int
    c: int
    co: int
    kh: int
    kw: int
    oh: int
    ow: int
    hp: int   # padded image rows (one spare row for full-width rows)
    wp: int   # padded image columns
    q: int    # columns per output row: wp for stride 1 (full-width rows), else ow
    k: int    # c * kh * kw, the rows of im2col
    chunks: list
    step: int  # images in a full chunk
    blocks: list  # (first, stop) chunk runs a worker takes at once (forward)
    block: int  # the most images in a block


class _Scratch:
    """One worker's buffers for a chunk at a time (None where a pass needs none)."""

    __slots__ = ("images", "cols", "y", "g", "gw", "dcols", "dimages", "extra")

    def __init__(self, images: Any, cols: Any, extra: Any = None, **buffers: Any) -> None:
        self.images, self.cols, self.extra = images, cols, extra
        for name in ("y", "g", "gw", "dcols", "dimages"):
            setattr(self, name, buffers.get(name))


def _sum_groups(acc: Any) -> Any:
    """``acc[0] + acc[1] + ...`` in that order (a fresh array)."""
    total = acc[0].copy()
    for part in acc[1:]:
        total += part
    return total


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
            shape = (n, c, _out_size(h, self.size[0], self.stride[0], 0),
                     _out_size(w, self.size[1], self.stride[1], 0))
        super().__init__((x,), shape=shape)

    def _offsets(self, x: Any):
        """``(index, slice)`` of every kernel offset: the strided view it reads of ``x``."""
        self._check_fits(x)
        return pool_offsets(x.shape[2:], self.size, self.stride)

    def _check_fits(self, x: Any) -> None:
        if x.shape[2] < self.size[0] or x.shape[3] < self.size[1]:
            raise ShapeError(f"{self.op}: window {self.size} is larger than the input {tuple(x.shape)}")


class MaxPool2d(_Pool2d):
    op = "max_pool2d"

    def forward(self, ctx, x):
        xp = ctx.xp
        y = None
        for _, sl in self._offsets(x):
            if y is None:
                y = ctx.empty(x[sl].shape, x.dtype)
                y[...] = x[sl]
            else:
                xp.maximum(y, x[sl], out=y)
        return y

    def backward(self, ctx, g, xs, y):
        # Each window's gradient goes to its first maximum (in row-major window order);
        # a window whose maximum is NaN passes none. No host synchronisation.
        x = xs[0]
        self._check_fits(x)
        return (ctx.kernels[max_pool_backward](ctx.b, x, y, g, self.size, self.stride,
                                               ctx.grad_out(0, g.dtype)),)


class AvgPool2d(_Pool2d):
    op = "avg_pool2d"

    def forward(self, ctx, x):
        y = None
        for _, sl in self._offsets(x):
            if y is None:
                y = x[sl].copy()
            else:
                y += x[sl]
        y *= 1.0 / (self.size[0] * self.size[1])
        return y

    def backward(self, ctx, g, xs, y):
        x = xs[0]
        gk = g * (1.0 / (self.size[0] * self.size[1]))
        gx = ctx.xp.zeros(x.shape, dtype=gk.dtype)
        for _, sl in self._offsets(x):
            gx[sl] += gk
        return (gx,)


# --- kernels: im2col and its adjoint col2im --------------------------------------------------
# Images are channel-major (C, N, H, W), already padded. Columns run over (n, oh, q)
# with q < Q: Q = OW in general; with stride (1, 1) the rows are "full width", Q = W,
# so each kernel offset's block is one contiguous slice of the flattened images (long
# copies and adds instead of one short row at a time). The last W - OW columns of
# each full-width row are junk: ignore them in the product, keep them zero in col2im's
# input. Full-width patches read past the last window row, so the images then need
# one spare row at the bottom (H >= OH + kh).
def conv_row_width(stride: tuple, width: int, ow: int) -> int:
    """Q, the columns per output row: the full padded width for stride (1, 1), else OW."""
    return width if tuple(stride) == (1, 1) else ow


def _offset_view(x: Any, i: int, j: int, stride: tuple, out_hw: tuple) -> Any:
    """The (C, N, OH, Q) elements that kernel offset (i, j) meets: a view of ``x``."""
    c, n, h, w = x.shape
    oh, ow = out_hw
    sh, sw = stride
    if (sh, sw) == (1, 1):  # full-width rows: one contiguous run per image
        return x.reshape(c, n, h * w)[:, :, i * w + j:i * w + j + oh * w].reshape(c, n, oh, w)
    return x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


@kernel
def im2col(be: Any, x: Any, kernel: tuple, stride: tuple, out_hw: tuple, out: Any = None) -> Any:
    """Patches of the channel-major images ``x`` as one ``(C*kh*kw, N*OH*Q)`` matrix.

    Rows are ordered (c, i, j) like ``w.reshape(C_out, -1)``. One slice copy per kernel
    offset, into ``out`` (a flat buffer of at least that size) when given. ``x`` must
    be C-contiguous.
    """
    kh, kw = kernel
    c, n, h, w = x.shape
    oh, ow = out_hw
    q = conv_row_width(stride, w, ow)
    if tuple(stride) == (1, 1) and h < oh + kh:
        raise ValueError(f"im2col with full-width rows needs a spare row: {h} rows for "
                         f"{oh} output rows and a kernel of {kh}")
    size = c * kh * kw * n * oh * q
    buf = be.xp.empty((size,), dtype=x.dtype) if out is None else out.reshape(-1)[:size]
    cols = buf.reshape(c, kh, kw, n, oh, q)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = _offset_view(x, i, j, stride, out_hw)
    return buf.reshape(c * kh * kw, n * oh * q)


@kernel
def col2im(be: Any, cols: Any, out: Any, kernel: tuple, stride: tuple, out_hw: tuple) -> None:
    """Add ``cols`` (the layout of :func:`im2col`) into the channel-major ``out``, in place.

    The adjoint of im2col, a scatter-add where overlapping windows accumulate: here one
    slice-add per kernel offset (kh*kw array ops, no ``add.at``). ``out`` must be
    C-contiguous.
    """
    kh, kw = kernel
    c, n, h, w = out.shape
    oh, ow = out_hw
    q = conv_row_width(stride, w, ow)
    c6 = cols.reshape(c, kh, kw, n, oh, q)
    for i in range(kh):
        for j in range(kw):
            view = _offset_view(out, i, j, stride, out_hw)
            view += c6[:, i, j]


# The body of the col2im gather kernel: ``i`` runs over ``out`` (C, N, H, W); plain C, so
# tests/test_conv.py compiles it on the host and checks it against the reference col2im.
COL2IM_BODY = """
const ptrdiff_t wi = i % width;
ptrdiff_t t = i / width;
const ptrdiff_t hi = t % height;
t /= height;
const ptrdiff_t ni = t % n_img;
const ptrdiff_t ci = t / n_img;
T acc = 0;
for (int ki = 0; ki < k_h; ++ki) {
    const ptrdiff_t hh = hi - ki;
    if (hh < 0 || hh % s_h != 0) continue;
    const ptrdiff_t oy = hh / s_h;
    if (oy >= o_h) continue;
    for (int kj = 0; kj < k_w; ++kj) {
        const ptrdiff_t ww = wi - kj;
        if (ww < 0 || ww % s_w != 0) continue;
        const ptrdiff_t ox = ww / s_w;
        if (ox >= o_w) continue;
        acc += cols[(((ci * k_h + ki) * k_w + kj) * n_img + ni) * ((ptrdiff_t)o_h * q_w)
                    + oy * q_w + ox];
    }
}
out = out + acc;
"""


@col2im.override("cupy")
def _col2im_cuda(be: Any, cols: Any, out: Any, kernel: tuple, stride: tuple,
                 out_hw: tuple) -> None:
    """One gather kernel: each element of ``out`` sums its columns.

    No atomics and one launch, instead of kh*kw slice-adds; columns past OW (the junk
    of full-width rows) are skipped.
    """
    kh, kw = kernel
    sh, sw = stride
    c, n, h, w = out.shape
    oh, ow = out_hw
    q = conv_row_width(stride, w, ow)
    cols = be.xp.ascontiguousarray(cols)
    be.elementwise(
        "col2im",
        "raw T cols, int32 n_img, int32 height, int32 width, int32 k_h, int32 k_w, "
        "int32 s_h, int32 s_w, int32 o_h, int32 o_w, int32 q_w",
        "T out", COL2IM_BODY)(cols, n, h, w, kh, kw, sh, sw, oh, ow, q, out)


# --- kernels: max-pool backward -----------------------------------------------------------------
def pool_offsets(x_hw: tuple, size: tuple, stride: tuple) -> Iterator[tuple[int, tuple]]:
    """``(k, slice)`` per window offset, in row-major window order: the strided view
    of an NCHW array that offset ``k`` of every window reads."""
    (kh, kw), (sh, sw) = size, stride
    h, w = x_hw
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, (slice(None), slice(None),
                               slice(i, i + sh * (oh - 1) + 1, sh),
                               slice(j, j + sw * (ow - 1) + 1, sw))


@kernel
def max_pool_backward(be: Any, x: Any, y: Any, g: Any, size: tuple, stride: tuple,
                      out: Any = None) -> Any:
    """The gradient of max pooling: each window's ``g`` goes to the window's first element
    equal to its maximum ``y`` (row-major order); a NaN maximum passes nothing.

    One pass of comparisons and products per window offset, no host synchronisation.
    ``out`` (x's shape, g's dtype), when given, receives the result.
    """
    xp = be.xp
    (kh, kw), (sh, sw) = size, stride
    gx = out if out is not None and out.shape == x.shape else xp.empty(x.shape, dtype=g.dtype)
    gx[...] = 0
    overlap = sh < kh or sw < kw
    taken = None
    last = kh * kw - 1
    zero = xp.zeros((), dtype=g.dtype)
    for k, sl in pool_offsets(x.shape[2:], size, stride):
        hit = x[sl] == y
        if taken is None:
            taken = hit
        else:
            hit &= ~taken
            if k < last:
                taken |= hit
        part = xp.where(hit, g, zero)  # a select: NaN/inf in g reach only the maximum
        if overlap:
            gx[sl] += part
        else:
            gx[sl] = part
    return gx


@max_pool_backward.override("numpy")
def _max_pool_backward_numpy(be: Any, x: Any, y: Any, g: Any, size: tuple, stride: tuple,
                             out: Any = None) -> Any:
    (kh, kw), (sh, sw) = size, stride
    oh, ow = y.shape[2], y.shape[3]
    if (sh, sw) == (kh, kw) and x.shape[2] == oh * kh and x.shape[3] == ow * kw:
        gx = _max_pool_tiles(x, g, y, out)
        if gx is not None:
            return gx
    return max_pool_backward.generic(be, x, y, g, size, stride, out)


def _max_pool_tiles(x: Any, g: Any, y: Any, out: Any = None) -> Any:
    """Windows that tile ``x`` exactly, each with a single maximum: whole rows at once.

    Compares each window row with ``y`` repeated along the row (contiguous operands,
    unlike the per-offset strided slices). None when some window has a tie or a NaN
    (checking is free on the host), whose gradient the per-offset loop assigns.
    """
    n, c, oh, ow = y.shape
    kh, kw = x.shape[2] // oh, x.shape[3] // ow
    rows = n * c * oh
    y_wide = np.repeat(y.reshape(rows, ow), kw, axis=1)[:, None, :]  # (rows, 1, ow*kw)
    hit = x.reshape(rows, kh, ow * kw) == y_wide
    if np.count_nonzero(hit) != rows * ow or np.isnan(y).any():
        return None
    g_wide = np.repeat(g.reshape(rows, ow), kw, axis=1)[:, None, :]
    zero = g.dtype.type(0)
    if out is not None and out.shape == x.shape and out.flags.c_contiguous:
        view = out.reshape(hit.shape)
        view[...] = zero
        np.copyto(view, g_wide, where=hit)  # a select: NaN/inf in g reach only the maximum
        return out
    return np.where(hit, g_wide, zero).reshape(x.shape)


# The body of the max-pool backward kernel: ``i`` runs over the gradient of x (N, C, H, W);
# each element adds, in window order, the gradient of every window whose first maximum
# (row-major) it is: the reference max_pool_backward's sums, in one pass with no host sync.
MAX_POOL_BW_BODY = """
const ptrdiff_t wi = i % width;
const ptrdiff_t t = i / width;
const ptrdiff_t hi = t % height;
const ptrdiff_t plane = t / height;
T acc = 0;
for (int ki = 0; ki < k_h; ++ki) {
    const ptrdiff_t hh = hi - ki;
    if (hh < 0 || hh % s_h != 0 || hh / s_h >= o_h) continue;
    const ptrdiff_t oy = hh / s_h;
    for (int kj = 0; kj < k_w; ++kj) {
        const ptrdiff_t ww = wi - kj;
        if (ww < 0 || ww % s_w != 0 || ww / s_w >= o_w) continue;
        const ptrdiff_t o = (plane * o_h + oy) * o_w + ww / s_w;
        const X m = ys[o];
        int hit = xs[i] == m;
        const ptrdiff_t corner = (plane * height + oy * s_h) * width + ww;
        for (int a = 0; a <= ki && hit; ++a) {
            const int stop = a == ki ? kj : k_w;
            for (int b = 0; b < stop && hit; ++b) {
                if (xs[corner + (ptrdiff_t)a * width + b] == m) hit = 0;
            }
        }
        if (hit) acc += gs[o];
    }
}
out = acc;
"""


@max_pool_backward.override("cupy")
def _max_pool_backward_cuda(be: Any, x: Any, y: Any, g: Any, size: tuple, stride: tuple,
                            out: Any = None) -> Any:
    """One gather kernel (:data:`MAX_POOL_BW_BODY`), one launch, no host synchronisation."""
    xp = be.xp
    (kh, kw), (sh, sw) = size, stride
    if out is None or out.shape != x.shape or not out.flags.c_contiguous:
        out = xp.empty(x.shape, dtype=g.dtype)
    be.elementwise(
        "max_pool_bw",
        "raw X xs, raw X ys, raw T gs, int32 height, int32 width, int32 k_h, int32 k_w, "
        "int32 s_h, int32 s_w, int32 o_h, int32 o_w",
        "T out", MAX_POOL_BW_BODY)(xp.ascontiguousarray(x), xp.ascontiguousarray(y),
                                   xp.ascontiguousarray(g), x.shape[2], x.shape[3],
                                   kh, kw, sh, sw, y.shape[2], y.shape[3], out)
    return out


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


__all__ = ["conv2d", "max_pool2d", "avg_pool2d", "set_im2col_limit", "IM2COL_LIMIT_BYTES"]
