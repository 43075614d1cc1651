"""2-D convolution and pooling on NCHW batches: ``conv2d``, ``max_pool2d``, ``avg_pool2d``.

Convolution is im2col plus one matrix product per chunk of the batch:

* forward: ``cols = im2col(x)`` is a ``(C_in*kh*kw, n*OH*OW)`` matrix (one strided copy
  from a sliding-window view, :meth:`Backend.im2col`); ``y = w.reshape(C_out, -1) @ cols``
  is ``(C_out, n*OH*OW)``, moved to NCHW with the bias added in the same pass.
* backward: ``dw = g2 @ cols.T`` and ``dcols = w2.T @ g2`` (``g2`` the upstream gradient
  as ``(C_out, n*OH*OW)``), then ``dx = col2im(dcols)``, the scatter-add adjoint of
  im2col, done by the backend (:meth:`Backend.col2im`: kh*kw strided slice-adds on NumPy,
  one gather kernel on CuPy).

Memory and speed. The im2col buffer of a whole batch would take ``N * C_in*kh*kw *
OH*OW * itemsize`` bytes: 85 MB for the MNIST "cnn" network's conv 32->64, 3x3 on 26x26
at batch 128 (128 * 288 * 576 * 4 B). Instead the batch is processed in chunks of images
whose cols buffer stays under the backend's ``im2col_chunk_bytes`` (NumPy: 4 MiB, so
that im2col, the product and col2im work in cache, which measured about 2x faster than
whole-batch buffers on 2 cores; CuPy: 256 MiB, big products for the GPU), and never over
:data:`IM2COL_LIMIT_BYTES` (256 MiB, see :func:`set_im2col_limit`). A single image whose
cols exceed the chunk size runs alone. Backward rebuilds each chunk's cols (cheaper than
keeping a whole-batch buffer alive between forward and backward). Peak extra memory,
beyond the output and the gradients themselves, with ``B`` the chunk size in bytes:

* forward: the padded input (if ``padding``), one cols chunk (<= B) and its product
  ``(C_out, n*OH*OW)`` (<= B * C_out / (C_in*kh*kw));
* backward: cols and dcols chunks (<= 2B), the upstream chunk as ``(C_out, n*OH*OW)``,
  the padded input and the padded input gradient.

So at most about 3 * 256 MiB on CuPy and about 12 MiB on NumPy, whatever the batch.

Pooling loops over the kh*kw kernel offsets with strided slices (no im2col, no copies
of windows); max pooling sends each gradient to the first maximum of its window.
"""
from __future__ import annotations

from typing import Any, Optional

from ..errors import ShapeError
from ..node import Node, as_node
from ..shapes import describe

IM2COL_LIMIT_BYTES = 256 * 2**20
DEFAULT_CHUNK_BYTES = 256 * 2**20  # for backends without an ``im2col_chunk_bytes``


def set_im2col_limit(nbytes: int) -> int:
    """Set the largest im2col chunk (bytes) conv2d allocates at once; return the old limit."""
    global IM2COL_LIMIT_BYTES
    if int(nbytes) <= 0:
        raise ValueError(f"the im2col limit must be a positive number of bytes, got {nbytes}")
    old, IM2COL_LIMIT_BYTES = IM2COL_LIMIT_BYTES, int(nbytes)
    return old


def _pair(v: Any, what: str) -> tuple:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
        a, b = int(v[0]), int(v[1])
    else:
        a = b = int(v)
    return a, b


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
        self.stride = _pair(stride, "conv2d stride")
        self.padding = _pair(padding, "conv2d padding")
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
    def _padded(self, xp: Any, x: Any) -> Any:
        ph, pw = self.padding
        if not ph and not pw:
            return x
        n, c, h, w = x.shape
        out = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        out[:, :, ph:ph + h, pw:pw + w] = x
        return out

    def _geometry(self, x: Any, w: Any) -> tuple:
        (sh, sw), (ph, pw) = self.stride, self.padding
        n, c, h, wd = x.shape
        co, ci, kh, kw = w.shape
        if c != ci or h + 2 * ph < kh or wd + 2 * pw < kw:
            raise ShapeError(f"conv2d: input {tuple(x.shape)} does not fit weight {tuple(w.shape)} "
                             f"(stride {self.stride}, padding {self.padding})")
        oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
        return n, c, co, kh, kw, oh, ow

    # --- forward and backward --------------------------------------------------------
    def forward(self, ctx, x, w, b=None):
        xp, be = ctx.xp, ctx.b
        n, c, co, kh, kw, oh, ow = self._geometry(x, w)
        k, ohw = c * kh * kw, oh * ow
        xpad = self._padded(xp, x)
        w2 = w.reshape(co, k)
        out = xp.empty((n, co, ohw), dtype=xp.result_type(x.dtype, w.dtype))
        chunks = _chunks(n, k * ohw * x.dtype.itemsize, be)
        buf = xp.empty(((chunks[0][1] - chunks[0][0]) * k * ohw,), dtype=x.dtype)
        bias = None if b is None else b.reshape(1, co, 1)
        for n0, n1 in chunks:
            cols = be.im2col(xpad[n0:n1], (kh, kw), self.stride, out=buf)
            y3 = (w2 @ cols).reshape(co, n1 - n0, ohw).transpose(1, 0, 2)
            if bias is None:
                out[n0:n1] = y3
            else:
                xp.add(y3, bias, out=out[n0:n1])
        return out.reshape(n, co, oh, ow)

    def backward(self, ctx, g, xs, y):
        x, w = xs[0], xs[1]
        xp, be = ctx.xp, ctx.b
        n, c, co, kh, kw, oh, ow = self._geometry(x, w)
        k, ohw = c * kh * kw, oh * ow
        ph, pw = self.padding
        xpad = self._padded(xp, x)
        w2t = w.reshape(co, k).T
        g3 = g.reshape(n, co, ohw)
        gw = xp.zeros((co, k), dtype=xp.result_type(w.dtype, g.dtype))
        gx = xp.zeros(xpad.shape, dtype=xp.result_type(x.dtype, g.dtype))
        chunks = _chunks(n, k * ohw * x.dtype.itemsize, be)
        size = (chunks[0][1] - chunks[0][0]) * k * ohw
        buf = xp.empty((size,), dtype=x.dtype)
        dbuf = xp.empty((size,), dtype=gx.dtype)
        for n0, n1 in chunks:
            m = (n1 - n0) * ohw
            cols = be.im2col(xpad[n0:n1], (kh, kw), self.stride, out=buf)
            g2 = xp.ascontiguousarray(g3[n0:n1].transpose(1, 0, 2)).reshape(co, m)
            gw += g2 @ cols.T
            dcols = dbuf[:k * m].reshape(k, m)
            xp.matmul(w2t, g2, out=dcols)
            be.col2im(dcols, gx[n0:n1], (kh, kw), self.stride)
        if ph or pw:
            gx = gx[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
        grads = (gx, gw.reshape(w.shape))
        if len(xs) == 3:
            grads += (g3.sum(axis=(0, 2)) if hasattr(xs[2], "shape") else None,)
        return grads


class _Pool2d(Node):
    """Shared shape logic of the pooling ops: windows of ``size`` every ``stride``."""

    def __init__(self, x: Any, size: Any, stride: Any = None) -> None:
        x = as_node(x)
        self.size = _pair(size, f"{self.op} size")
        self.stride = _pair(stride if stride is not None else size, f"{self.op} stride")
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
        (kh, kw), (sh, sw) = self.size, self.stride
        h, w = x.shape[2], x.shape[3]
        if h < kh or w < kw:
            raise ShapeError(f"{self.op}: window {self.size} is larger than the input {tuple(x.shape)}")
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, (slice(None), slice(None),
                                   slice(i, i + sh * (oh - 1) + 1, sh),
                                   slice(j, j + sw * (ow - 1) + 1, sw))


class MaxPool2d(_Pool2d):
    op = "max_pool2d"

    def __init__(self, x: Any, size: Any, stride: Any = None) -> None:
        super().__init__(x, size, stride)
        self._argmax: Optional[tuple] = None  # (x, index of the first maximum per window)

    def forward(self, ctx, x):
        xp = ctx.xp
        y = idx = None
        for k, sl in self._offsets(x):
            v = x[sl]
            if y is None:
                y = v.copy()
                idx = xp.zeros(y.shape, dtype=xp.uint8) if self.size[0] * self.size[1] < 256 \
                    else xp.zeros(y.shape, dtype=xp.int32)
                continue
            better = v > y  # strict: ties keep the first maximum
            xp.copyto(y, v, where=better)
            xp.copyto(idx, k, where=better)
        self._argmax = (x, idx)
        return y

    def backward(self, ctx, g, xs, y):
        xp = ctx.xp
        x = xs[0]
        saved, self._argmax = self._argmax, None
        if saved is not None and saved[0] is x:
            idx = saved[1]
        else:  # recompute the first maximum of each window
            idx = xp.zeros(y.shape, dtype=xp.int32)
            found = xp.zeros(y.shape, dtype=bool)
            for k, sl in self._offsets(x):
                hit = (x[sl] == y) & ~found
                idx[hit] = k
                found |= hit
        gx = xp.zeros(x.shape, dtype=g.dtype)
        zero = xp.zeros((), dtype=g.dtype)
        overlap = self.stride[0] < self.size[0] or self.stride[1] < self.size[1]
        for k, sl in self._offsets(x):
            part = xp.where(idx == k, g, zero)
            if overlap:
                gx[sl] += part
            else:
                gx[sl] = part
        return (gx,)


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
