"""2-D convolution and pooling on NCHW batches: ``conv2d``, ``max_pool2d``, ``avg_pool2d``.

Convolution is im2col plus one matrix product per chunk of the batch. A chunk of images
is first copied, zero-padded, into channel-major order (C_in, n, H + 2p, W + 2p); then

* forward: ``cols = im2col(images)`` is a ``(C_in*kh*kw, n*OH*Q)`` matrix, one slice copy
  per kernel offset (:meth:`Backend.im2col`); ``y = w.reshape(C_out, -1) @ cols`` is
  ``(C_out, n*OH*Q)``, moved to NCHW with the bias added in the same pass;
* backward: ``dw += g2 @ cols.T`` and ``dcols = w2.T @ g2`` (``g2`` the upstream
  gradient as ``(C_out, n*OH*Q)``), then ``dx = col2im(dcols)``, the scatter-add adjoint of
  im2col, done by the backend (:meth:`Backend.col2im`: one slice-add per kernel offset on
  NumPy, never ``add.at``; one gather kernel on CuPy).

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

Pooling loops over the kh*kw kernel offsets with strided slices (no im2col, no copies
of windows); max pooling sends each gradient to the first maximum of its window.
"""
from __future__ import annotations

from typing import Any, Optional

from ..backends.base import Backend
from ..checks import int_pair, integer
from ..errors import ShapeError
from ..node import Node, as_node
from ..shapes import describe

IM2COL_LIMIT_BYTES = 256 * 2**20
DEFAULT_CHUNK_BYTES = 256 * 2**20  # for backends without an ``im2col_chunk_bytes``


def set_im2col_limit(nbytes: int) -> int:
    """Set the largest im2col chunk (bytes) conv2d allocates at once; return the old limit."""
    global IM2COL_LIMIT_BYTES
    old, IM2COL_LIMIT_BYTES = IM2COL_LIMIT_BYTES, integer(nbytes, "the im2col limit (bytes)", 1)
    return old


def _out_size(n: Optional[int], k: int, s: int, p: int) -> Optional[int]:
    return None if n is None else (n + 2 * p - k) // s + 1


def _chunks(n: int, per_item_bytes: int, backend: Any = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive images whose cols fit the chunk size."""
    limit = min(IM2COL_LIMIT_BYTES, getattr(backend, "im2col_chunk_bytes", DEFAULT_CHUNK_BYTES))
    step = max(1, min(n, limit // max(per_item_bytes, 1)))
    return [(i, min(n, i + step)) for i in range(0, n, step)] or [(0, 0)]


class Conv2d(Node):
    """``y[n, o] = b[o] + sum_c w[o, c] (*) x[n, c]`` (cross-correlation), NCHW."""

    op = "conv2d"

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
    def _geometry(self, x: Any, w: Any) -> tuple:
        (sh, sw), (ph, pw) = self.stride, self.padding
        n, c, h, wd = x.shape
        co, ci, kh, kw = w.shape
        if c != ci or h + 2 * ph < kh or wd + 2 * pw < kw:
            raise ShapeError(f"conv2d: input {tuple(x.shape)} does not fit weight {tuple(w.shape)} "
                             f"(stride {self.stride}, padding {self.padding})")
        oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        return n, c, co, kh, kw, oh, ow

    def _layout(self, be: Any, x: Any, kh: int, oh: int, ow: int) -> tuple:
        """Padded image size (with the spare row full-width rows need) and Q, columns per row."""
        (ph, pw) = self.padding
        hp, wp = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
        q = be.conv_row_width(self.stride, wp, ow)
        return (oh + kh if self.stride == (1, 1) else hp), wp, q

    def _images(self, xp: Any, x: Any, hp: int, wp: int, buf: Any = None) -> Any:
        """``x`` (a chunk, NCHW) as zero-padded channel-major images (C, n, hp, wp)."""
        n, c, h, w = x.shape
        ph, pw = self.padding
        out = xp.zeros((c, n, hp, wp), dtype=x.dtype) if buf is None else buf
        out[:, :, ph:ph + h, pw:pw + w] = x.transpose(1, 0, 2, 3)
        return out

    # --- forward and backward --------------------------------------------------------
    def forward(self, ctx, x, w, b=None):
        xp, be = ctx.xp, ctx.b
        n, c, co, kh, kw, oh, ow = self._geometry(x, w)
        hp, wp, q = self._layout(be, x, kh, oh, ow)
        k = c * kh * kw
        w2 = w.reshape(co, k)
        out = ctx.empty((n, co, oh, ow), xp.result_type(x.dtype, w.dtype))
        chunks = _chunks(n, k * oh * q * x.dtype.itemsize, be)
        step = chunks[0][1] - chunks[0][0]
        buf = xp.empty((step * k * oh * q,), dtype=x.dtype)
        images = xp.zeros((c, step, hp, wp), dtype=x.dtype)  # borders stay zero
        bias = None if b is None else b.reshape(1, co, 1, 1)
        for n0, n1 in chunks:
            m = n1 - n0
            xs = self._images(xp, x[n0:n1], hp, wp, images if m == step else None)
            cols = be.im2col(xs, (kh, kw), self.stride, (oh, ow), out=buf)
            y = (w2 @ cols).reshape(co, m, oh, q)[:, :, :, :ow].transpose(1, 0, 2, 3)
            if bias is None:
                out[n0:n1] = y
            else:
                xp.add(y, bias, out=out[n0:n1])
        return out

    def backward(self, ctx, g, xs, y):
        x, w = xs[0], xs[1]
        xp, be = ctx.xp, ctx.b
        n, c, co, kh, kw, oh, ow = self._geometry(x, w)
        hp, wp, q = self._layout(be, x, kh, oh, ow)
        ph, pw = self.padding
        h, wd = x.shape[2], x.shape[3]
        k = c * kh * kw
        need_x = ctx.needs is None or ctx.needs[0]
        w2t = w.reshape(co, k).T
        gw = xp.zeros((co, k), dtype=xp.result_type(w.dtype, g.dtype))
        gx_dtype = xp.result_type(x.dtype, g.dtype)
        gx = ctx.grad_out(0, gx_dtype) if need_x else None  # fully written below
        if gx is None:
            gx = xp.empty(x.shape, dtype=gx_dtype)
        chunks = _chunks(n, k * oh * q * x.dtype.itemsize, be)
        step = chunks[0][1] - chunks[0][0]
        buf = xp.empty((step * k * oh * q,), dtype=x.dtype)
        dbuf = xp.empty((step * k * oh * q,), dtype=gx.dtype)
        gbuf = xp.empty((co * step * oh * q,), dtype=g.dtype)
        images = xp.zeros((c, step, hp, wp), dtype=x.dtype)
        for n0, n1 in chunks:
            m = n1 - n0
            cols = be.im2col(self._images(xp, x[n0:n1], hp, wp, images if m == step else None),
                             (kh, kw), self.stride, (oh, ow), out=buf)
            g4 = gbuf[:co * m * oh * q].reshape(co, m, oh, q)
            g4[:, :, :, :ow] = g[n0:n1].transpose(1, 0, 2, 3)
            if q > ow:
                g4[:, :, :, ow:] = 0  # the junk columns of full-width rows
            g2 = g4.reshape(co, m * oh * q)
            gw += g2 @ cols.T
            if not need_x:  # e.g. the first layer: nobody needs d loss / d images
                continue
            dcols = dbuf[:k * m * oh * q].reshape(k, m * oh * q)
            xp.matmul(w2t, g2, out=dcols)
            dimages = xp.zeros((c, m, hp, wp), dtype=gx.dtype)
            be.col2im(dcols, dimages, (kh, kw), self.stride, (oh, ow))
            gx[n0:n1] = dimages[:, :, ph:ph + h, pw:pw + wd].transpose(1, 0, 2, 3)
        grads = (gx if need_x else None, gw.reshape(w.shape))
        if len(xs) == 3:
            grads += (g.sum(axis=(0, 2, 3)) if hasattr(xs[2], "shape") else None,)
        return grads


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
        return Backend.pool_offsets(x.shape[2:], self.size, self.stride)

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
        return (ctx.b.max_pool_backward(x, y, g, self.size, self.stride, ctx.grad_out(0, g.dtype)),)

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
