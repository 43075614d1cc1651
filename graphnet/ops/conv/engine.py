"""The chunk engine: conv2d through the batch in cache-sized chunks, on worker threads.

A chunk of images is copied, zero-padded, into channel-major order (C_in, n, H + 2p, W + 2p);
then

* forward: ``cols = im2col(images)`` is a ``(C_in*kh*kw, n*OH*Q)`` matrix and
  ``y = w.reshape(C_out, -1) @ cols`` is ``(C_out, n*OH*Q)``; an :class:`Epilogue` turns
  each block of chunks' ``y`` into the output (the plain one: the bias added, moved to NCHW);
* backward: the epilogue writes each chunk's upstream gradient ``g2`` (C_out, n*OH*Q), then
  ``dw += g2 @ cols.T``, ``db += sum(g2)`` and ``dx = col2im(w2.T @ g2)``.

``Q`` is OW, except for stride 1, where rows are "full width" (Q = W + 2p): every kernel
offset's block is then one contiguous run of the flattened images, so im2col and col2im
move long runs instead of OW-element rows (on NumPy about 2x faster for the MNIST
network's 24-wide rows); the W + 2p - OW extra columns per row are junk outputs, dropped,
and get zero upstream gradient.

Memory. A whole batch's cols would take ``N * C_in*kh*kw * OH*Q * itemsize`` bytes (92 MB
for the MNIST "cnn" network's conv 32->64, 3x3 on 26x26 at batch 128). Instead the batch goes
in chunks whose cols stay under the backend's ``im2col_chunk_bytes`` (NumPy: 2 MiB, so that
each chunk's im2col, products and col2im run in cache; CuPy: 256 MiB) and never over
:data:`IM2COL_LIMIT_BYTES` (:func:`set_im2col_limit`); an image whose cols alone exceed that
runs alone. Backward rebuilds each chunk's cols rather than keep them from forward. The peak
extra memory is a few times the chunk limit whatever the batch (measured for that layer at
batch 128 on NumPy: 2.3 MB extra in forward, 3.7 MB in backward; with CuPy's 256 MiB chunks,
124 MB and 228 MB).

Winograd. For 3x3, stride-1 convolutions :func:`geometry` may choose Winograd F(2x2, 3x3)
instead (:mod:`.winograd`, :func:`.winograd.choose`): the same chunks, blocks and groups,
chunks sized by its own buffers (``winograd.chunk_bytes``), its transforms called from here
(the call chain stays short); the epilogue gets the product as :class:`.winograd.Tiles`
(``forward_tiles``/``backward_tiles``). The weight gradient is summed per chunk group in the
Winograd domain and turned back once.

Threads. On NumPy the chunks run on worker threads (:mod:`.threads`); weight and bias
gradients are summed per chunk group, then over the groups in order, so the bits do not
depend on the number of workers. Forward hands out blocks of up to :data:`BLOCK_CHUNKS`
chunks whose epilogue runs once per block (:func:`blocks_of`).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

from ...checks import integer
from ...errors import ShapeError
from . import winograd
from .kernels import col2im, conv_row_width, im2col
from .threads import GROUPS, on_workers, workers

IM2COL_LIMIT_BYTES = 256 * 2**20
DEFAULT_CHUNK_BYTES = 256 * 2**20  # for backends without an ``im2col_chunk_bytes``
BLOCK_CHUNKS = 4  # the most chunks in a block (see blocks_of)


def set_im2col_limit(nbytes: int) -> int:
    """Set the largest im2col chunk (bytes) conv2d allocates at once; return the old limit."""
    global IM2COL_LIMIT_BYTES
    old, IM2COL_LIMIT_BYTES = IM2COL_LIMIT_BYTES, integer(nbytes, "the im2col limit (bytes)", 1)
    return old


def out_size(n: Optional[int], k: int, s: int, p: int) -> Optional[int]:
    """Output length of a window of ``k`` every ``s`` over ``n`` padded by ``p`` (None: unknown)."""
    return None if n is None else (n + 2 * p - k) // s + 1


def chunks_of(n: int, per_item_bytes: int, backend: Any = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive images whose cols fit the chunk size.

    As few chunks as fit, of sizes as even as possible (so that workers share them evenly).
    """
    limit = min(IM2COL_LIMIT_BYTES, getattr(backend, "im2col_chunk_bytes", DEFAULT_CHUNK_BYTES))
    most = max(1, min(n, limit // max(per_item_bytes, 1)))
    count = -(-n // most)
    step = -(-n // count) if n else 1
    return [(i, min(n, i + step)) for i in range(0, n, step)] or [(0, 0)]


def blocks_of(chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(first, stop)`` runs of consecutive chunks that a worker takes as one unit.

    Each chunk's im2col and product stay cache-sized, but the epilogue runs once per block
    on arrays up to :data:`BLOCK_CHUNKS` times larger: small NumPy calls on two threads hand
    the GIL back and forth at every call and run slower than on one (BENCHMARKS.md,
    session 5). Chunks are grouped only where there are 16 or more, and then into at least
    8 blocks, so that workers share them evenly.
    """
    per = max(1, min(BLOCK_CHUNKS, len(chunks) // 8))
    return [(c, min(c + per, len(chunks))) for c in range(0, len(chunks), per)]


class ConvGeometry(NamedTuple):
    """One conv2d call's sizes (see :func:`geometry`)."""

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
    stride: tuple
    padding: tuple
    algorithm: str = "im2col"  # or "winograd" (see winograd.choose)

    @property
    def rows(self) -> int:
        """Output rows the product computes per image: OH, or 2 * tiles for Winograd."""
        return self.hp - 2 if self.algorithm == "winograd" else self.oh


def geometry(be: Any, x: Any, w: Any, stride: tuple, padding: tuple) -> ConvGeometry:
    """The sizes of one call of conv2d on arrays ``x`` and ``w``: output, padded images,
    columns per row, chunks and blocks."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    if c != ci or h + 2 * ph < kh or wd + 2 * pw < kw:
        raise ShapeError(f"conv2d: input {tuple(x.shape)} does not fit weight {tuple(w.shape)} "
                         f"(stride {tuple(stride)}, padding {tuple(padding)})")
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    k = c * kh * kw
    algorithm = winograd.choose(be, x, w, stride)
    if algorithm == "winograd":  # whole 4x4 patches (stride 2): maybe one spare row/column
        th, tw = winograd.tiles(oh, ow)
        hp, wp, q = 2 * th + 2, 2 * tw + 2, 2 * tw
        chunks = chunks_of(n, winograd.chunk_bytes(c, co, oh, ow, x.dtype.itemsize), be)
    else:
        wp = wd + 2 * pw
        q = conv_row_width(stride, wp, ow)
        hp = oh + kh if tuple(stride) == (1, 1) else h + 2 * ph  # full width: one spare row
        chunks = chunks_of(n, k * oh * q * x.dtype.itemsize, be)
    blocks = blocks_of(chunks)
    return ConvGeometry(n, c, co, kh, kw, oh, ow, hp, wp, q, k, chunks,
                        chunks[0][1] - chunks[0][0], blocks,
                        max(chunks[c1 - 1][1] - chunks[c0][0] for c0, c1 in blocks),
                        tuple(stride), tuple(padding), algorithm)


class Epilogue:
    """What the engine does with the convolution's product: per block of chunks in forward,
    per chunk in backward. This one is the plain convolution's; a fused step passes its own.

    ``out``/``bias`` (forward): the (N, C_out, OH, OW) output and the bias or None.
    ``g`` (backward): the gradient of that output.
    """

    def __init__(self, out: Any = None, bias: Any = None, g: Any = None) -> None:
        self.out, self.g = out, g
        self.bias = None if bias is None else bias.reshape(1, -1, 1, 1)

    def scratch(self, xp: Any, geo: ConvGeometry) -> Any:
        """Per-worker buffers for this epilogue (passed back as ``extra``), or None."""
        return None

    def forward_block(self, ctx: Any, y4: Any, n0: int, n1: int, extra: Any) -> None:
        """Images ``n0:n1``'s product ``y4`` (C_out, m, OH, Q), no bias, into the output."""
        ow = self.out.shape[3]
        y = y4[:, :, :, :ow].transpose(1, 0, 2, 3)
        if self.bias is None:
            self.out[n0:n1] = y
        else:
            ctx.xp.add(y, self.bias, out=self.out[n0:n1])

    def backward_chunk(self, ctx: Any, g4: Any, n0: int, n1: int, extra: Any) -> None:
        """Write images ``n0:n1``'s upstream gradient into all of ``g4`` (C_out, m, OH, Q)."""
        self.fill(g4, self.g[n0:n1])

    def forward_tiles(self, ctx: Any, tiles: winograd.Tiles, n0: int, n1: int,
                      extra: Any) -> None:
        """Images ``n0:n1``'s Winograd product (no bias) into the output. An epilogue that
        works on rows can pass ``tiles.interleaved()`` to its :meth:`forward_block`."""
        tiles.to_nchw(ctx.xp, self.out[n0:n1], self.bias)

    def backward_tiles(self, ctx: Any, tiles: winograd.Tiles, n0: int, n1: int,
                       extra: Any) -> Any:
        """Write images ``n0:n1``'s upstream gradient into all of ``tiles.planes`` and return
        None; or return ``tiles.rows[:, :, :OH]`` for :meth:`backward_chunk` to write (the
        engine then splits them into the planes)."""
        tiles.from_nchw(self.g[n0:n1])
        return None

    @staticmethod
    def fill(g4: Any, g: Any) -> None:
        """``g4`` from the NCHW ``g``: channel-major, the junk columns zero."""
        ow = g.shape[3]
        g4[:, :, :, :ow] = g.transpose(1, 0, 2, 3)
        if g4.shape[3] > ow:
            g4[:, :, :, ow:] = 0


class _Scratch:
    """One worker's buffers for a chunk at a time (None where a pass needs none)."""

    __slots__ = ("images", "cols", "y", "g", "gw", "dcols", "dimages", "extra", "wino")

    def __init__(self, images: Any, cols: Any, extra: Any = None, **buffers: Any) -> None:
        self.images, self.cols, self.extra = images, cols, extra
        for name in ("y", "g", "gw", "dcols", "dimages", "wino"):
            setattr(self, name, buffers.get(name))


def _images(xp: Any, x: Any, geo: ConvGeometry, s: _Scratch, n0: int, n1: int) -> Any:
    """Images ``n0:n1`` of ``x`` zero-padded, channel-major (C, m, hp, wp): im2col's input."""
    (ph, pw), (h, w) = geo.padding, x.shape[2:]
    if n1 - n0 == geo.step:  # the padding of the worker's buffer stays zero
        images = s.images
    else:
        images = xp.zeros((geo.c, n1 - n0, geo.hp, geo.wp), dtype=x.dtype)
    images[:, :, ph:ph + h, pw:pw + w] = x[n0:n1].transpose(1, 0, 2, 3)
    return images


def forward(ctx: Any, x: Any, w: Any, geo: ConvGeometry, epilogue: Epilogue) -> None:
    """Convolve ``x`` with ``w`` block by block, each block's product to ``epilogue``."""
    xp, wino, co = ctx.xp, geo.algorithm == "winograd", geo.co
    dtype = xp.result_type(x.dtype, w.dtype)
    w2 = winograd.weights(xp, w, dtype) if wino else w.reshape(co, geo.k)
    per_image = geo.rows * geo.q
    hq, wq = geo.hp // 2, geo.wp // 2  # Winograd's tiles per image and channel: hq x wq
    step = epilogue.forward_tiles if wino else epilogue.forward_block

    def product(s: _Scratch, b: int) -> tuple:
        """Block ``b``'s product, each chunk's into its columns: (C_out, m, OH, Q), or Tiles."""
        c0, c1 = geo.blocks[b]
        start, stop = geo.chunks[c0][0], geo.chunks[c1 - 1][1]
        y = s.y[:co * (stop - start) * per_image].reshape(co, -1)
        planes = winograd.view(s.wino.planes, 2, 2, co, stop - start, hq * wq) if wino else None
        for n0, n1 in geo.chunks[c0:c1]:
            if wino:  # the transforms called from here: the call chain stays short
                v = winograd.input_transform(
                    xp, winograd.load(xp, x, n0, n1, geo.padding, s.wino), geo.c, wq, s.wino)
                mm = xp.matmul(w2, v, out=winograd.view(s.wino.m, 16, co, v.shape[2]))
                winograd.output_transform(xp, mm, planes[:, :, :, n0 - start:n1 - start], s.wino)
                continue
            cols = ctx.kernels[im2col](ctx.b, _images(xp, x, geo, s, n0, n1), (geo.kh, geo.kw),
                                       geo.stride, (geo.oh, geo.ow), out=s.cols)
            xp.matmul(w2, cols, out=y[:, (n0 - start) * per_image:(n1 - start) * per_image])
        y4 = y.reshape(co, stop - start, geo.rows, geo.q)
        if wino:
            return winograd.Tiles(planes.reshape(2, 2, co, stop - start, hq, wq), y4, geo.oh,
                                  geo.ow), start, stop
        return y4, start, stop

    def work(s: _Scratch, b: int) -> None:
        step(ctx, *product(s, b), s.extra)

    def scratch() -> _Scratch:
        return _Scratch(None if wino else xp.zeros((geo.c, geo.step, geo.hp, geo.wp), x.dtype),
                        None if wino else xp.empty((geo.step * geo.k * per_image,), x.dtype),
                        epilogue.scratch(xp, geo),
                        y=xp.empty((co * geo.block * per_image,), dtype=dtype),
                        wino=_wino_buffers(xp, geo, dtype, geo.block, False) if wino else None)
    n = workers(ctx.b, len(geo.blocks))
    if n > 1:
        on_workers(n, len(geo.blocks), work, scratch)
    else:  # work() written out: the call chain below the op stays at most 5 frames
        s = scratch()
        for b in range(len(geo.blocks)):
            step(ctx, *product(s, b), s.extra)


def backward(ctx: Any, xs: tuple, geo: ConvGeometry, epilogue: Epilogue, gdtype: Any) -> tuple:
    """The gradients ``(gx, gw[, gb])`` of conv2d's inputs ``xs``, chunk by chunk, each
    chunk's upstream gradient written by ``epilogue`` (of dtype ``gdtype``)."""
    xp, be, x, w = ctx.xp, ctx.b, xs[0], xs[1]
    co, k, per_chunk, wino = geo.co, geo.k, geo.rows * geo.q, geo.algorithm == "winograd"
    need_x = ctx.needs is None or ctx.needs[0]
    gwdtype, gx_dtype = xp.result_type(w.dtype, gdtype), xp.result_type(x.dtype, gdtype)
    w2t = winograd.weights(xp, w, gwdtype).transpose(0, 2, 1) if wino else w.reshape(co, k).T
    gw_acc = xp.zeros((min(GROUPS, len(geo.chunks)),) + ((16, co, geo.c) if wino else (co, k)),
                      dtype=gwdtype)
    gb_acc = xp.zeros((len(gw_acc), co), dtype=gdtype) if _has_bias(xs) else None
    gx = ctx.grad_out(0, gx_dtype) if need_x else None  # fully written below
    if gx is None and need_x:
        gx = xp.empty(x.shape, dtype=gx_dtype)
    (ph, pw), (h, wd) = geo.padding, x.shape[2:]

    def wino_grads(s: _Scratch, c: int, g: winograd.Tiles) -> None:
        """Chunk ``c``'s share: dM = A dY A^T; dU += dM @ V^T; dV = U^T @ dM; dd = B dV B^T."""
        n0, n1 = geo.chunks[c]
        if gb_acc is not None:
            gb_acc[c % GROUPS] += g.planes.sum(axis=(0, 1, 3, 4, 5))
        wq = geo.wp // 2
        v = winograd.input_transform(xp, winograd.load(xp, x, n0, n1, geo.padding, s.wino),
                                     geo.c, wq, s.wino)
        dm = winograd.output_adjoint(xp, g.planes, s.wino)
        vt = winograd.view(s.wino.vt, 16, v.shape[2], geo.c)
        xp.copyto(vt, v.transpose(0, 2, 1))  # the product then runs ~20% faster
        gw_acc[c % GROUPS] += xp.matmul(dm, vt, out=s.wino.du)
        if need_x:  # V is no longer needed: dV goes in its place
            dv = xp.matmul(w2t, dm, out=v)
            winograd.store(xp, winograd.input_adjoint(xp, dv, wq, s.wino), gx, n0, n1,
                           (geo.padding, geo.hp // 2, wq))

    def chunk_grads(s: _Scratch, c: int, g4: Any) -> None:
        """Chunk ``c``'s share of the gradients, from its upstream gradient ``g4``."""
        n0, n1 = geo.chunks[c]
        m = n1 - n0
        cols = ctx.kernels[im2col](be, _images(xp, x, geo, s, n0, n1), (geo.kh, geo.kw),
                                   geo.stride, (geo.oh, geo.ow), out=s.cols)
        g2 = g4.reshape(co, m * per_chunk)
        xp.matmul(cols, g2.T, out=s.gw)  # gw.T: about 20% faster than g2 @ cols.T here
        gw_acc[c % GROUPS] += s.gw.T
        if gb_acc is not None:
            gb_acc[c % GROUPS] += g2.sum(axis=1)
        if not need_x:  # e.g. the first layer: nobody needs d loss / d images
            return
        dcols = s.dcols[:k * m * per_chunk].reshape(k, m * per_chunk)
        xp.matmul(w2t, g2, out=dcols)
        full = m == geo.step
        dimages = s.dimages if full else xp.empty((geo.c, m, geo.hp, geo.wp), dtype=gx.dtype)
        dimages[...] = 0
        ctx.kernels[col2im](be, dcols, dimages, (geo.kh, geo.kw), geo.stride, (geo.oh, geo.ow))
        gx[n0:n1] = dimages[:, :, ph:ph + h, pw:pw + wd].transpose(1, 0, 2, 3)

    grads_of = wino_grads if wino else chunk_grads

    def work(s: _Scratch, c: int) -> None:
        g = _upstream(s, geo, c)
        rows = epilogue.backward_tiles(ctx, g, *geo.chunks[c], s.extra) if wino else g
        if rows is not None:  # the epilogue writes rows (Winograd: then split into planes)
            epilogue.backward_chunk(ctx, rows, *geo.chunks[c], s.extra)
            if wino:
                g.split()
        grads_of(s, c, g)

    def scratch() -> _Scratch:
        size = geo.step
        if wino:
            return _Scratch(None, None, epilogue.scratch(xp, geo),
                            g=xp.empty((co * size * per_chunk,), dtype=gdtype),
                            wino=_wino_buffers(xp, geo, gwdtype, size, True, need_x))
        dx = {} if not need_x else {
            "dcols": xp.empty((k * size * per_chunk,), dtype=gx_dtype),
            "dimages": xp.empty((geo.c, size, geo.hp, geo.wp), dtype=gx_dtype)}
        return _Scratch(xp.zeros((geo.c, size, geo.hp, geo.wp), dtype=x.dtype),
                        xp.empty((size * k * per_chunk,), dtype=x.dtype),
                        epilogue.scratch(xp, geo),
                        g=xp.empty((co * size * per_chunk,), dtype=gdtype),
                        gw=xp.empty((k, co), dtype=gwdtype), **dx)
    n = workers(be, len(geo.chunks))
    if n > 1:
        on_workers(n, len(geo.chunks), work, scratch)
    else:
        s = scratch()
        for c in range(len(geo.chunks)):  # work() written out, as in forward
            g = _upstream(s, geo, c)
            rows = epilogue.backward_tiles(ctx, g, *geo.chunks[c], s.extra) if wino else g
            if rows is not None:
                epilogue.backward_chunk(ctx, rows, *geo.chunks[c], s.extra)
                if wino:
                    g.split()
            grads_of(s, c, g)
    gw = _sum_groups(gw_acc)
    grads = (gx if need_x else None,
             winograd.weight_grad(xp, gw, w.shape) if wino else gw.reshape(w.shape))
    if len(xs) == 3:
        grads += (_sum_groups(gb_acc) if gb_acc is not None else None,)
    return grads


def _upstream(s: _Scratch, geo: ConvGeometry, c: int) -> Any:
    """Buffers for chunk ``c``'s upstream gradient: (C_out, m, OH, Q), or Winograd's Tiles."""
    m = geo.chunks[c][1] - geo.chunks[c][0]
    g4 = s.g[:geo.co * m * geo.rows * geo.q].reshape(geo.co, m, geo.rows, geo.q)
    if geo.algorithm != "winograd":
        return g4
    return winograd.Tiles(winograd.view(s.wino.planes, 2, 2, geo.co, m, geo.hp // 2,
                                        geo.wp // 2), g4, geo.oh, geo.ow)


def _wino_buffers(xp: Any, geo: ConvGeometry, dtype: Any, block: int, backward: bool,
                  need_x: bool = False) -> Any:
    """One worker's :class:`.winograd.Buffers` for this call's chunks."""
    sizes = (geo.c, geo.co, (geo.hp - 2) // 2, (geo.wp - 2) // 2)
    return winograd.Buffers(xp, sizes, geo.step, block, dtype, backward, need_x)


def _has_bias(xs: tuple) -> bool:
    return len(xs) == 3 and hasattr(xs[2], "shape")


def _sum_groups(acc: Any) -> Any:
    """``acc[0] + acc[1] + ...`` in that order (a fresh array)."""
    total = acc[0].copy()
    for part in acc[1:]:
        total += part
    return total
