"""The convolution's and pooling's kernels, each with its per-backend overrides.

* :func:`im2col` and its adjoint :func:`col2im` (one CUDA gather kernel on CuPy,
  :data:`COL2IM_BODY`): the patches of channel-major padded images as one matrix, and
  back;
* :func:`max_pool_backward` (a whole-row NumPy version for tiling windows, one CUDA kernel,
  :data:`MAX_POOL_BW_BODY`) and :func:`pool_offsets`, the strided view per window offset;
* :func:`first_max_index`: which offset of each window held its first maximum (the fused
  conv + max-pool step records it for its backward).

Called through the run's kernel table (``ctx.kernels[im2col](ctx.b, ...)``), so a backend's
override replaces the reference (:mod:`graphnet.kernels`).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ...kernels import kernel


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
