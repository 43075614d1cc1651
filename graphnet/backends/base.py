"""The backend interface: everything the engine computes goes through one of these."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

from ..errors import GraphnetError


class BackendUnavailableError(GraphnetError, RuntimeError):
    """A backend was asked for but cannot run here (library or device missing)."""


class Backend(ABC):
    """An array library plus the operations where NumPy and CuPy differ.

    ``xp`` is the NumPy-compatible namespace (``numpy`` or ``cupy``) for what both
    share. The methods cover transfers, scatter-add, random numbers, device
    information and the fused kernels used on hot paths.
    """

    name: str
    xp: Any
    #: conv2d works through the batch in chunks whose im2col buffer is at most this big
    im2col_chunk_bytes: int = 256 * 2**20

    # --- arrays and transfers -------------------------------------------------
    @abstractmethod
    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Return ``x`` as an array of this backend (copying from the host if needed)."""

    @abstractmethod
    def to_numpy(self, x: Any) -> Any:
        """Return ``x`` as a host NumPy array (or NumPy scalar)."""

    @abstractmethod
    def is_array(self, x: Any) -> bool:
        """Whether ``x`` is an array that belongs to this backend."""

    # --- device ---------------------------------------------------------------
    @abstractmethod
    def synchronize(self) -> None:
        """Wait until all queued work on the device has finished."""

    @abstractmethod
    def device_name(self) -> str:
        """A human-readable name of the device."""

    @abstractmethod
    def memory_info(self) -> dict[str, int]:
        """Bytes used and held by the allocator, and the device total where known."""

    def versions(self) -> dict[str, str]:
        """Versions of the libraries behind this backend."""
        return {"numpy": __import__("numpy").__version__}

    # --- random numbers -------------------------------------------------------
    @abstractmethod
    def seed(self, seed: int) -> None:
        """Seed this backend's device random generator."""

    @abstractmethod
    def uniform(self, shape: tuple, dtype: Any) -> Any:
        """Uniform [0, 1) samples drawn on the device."""

    @abstractmethod
    def permutation(self, n: int) -> Any:
        """A random permutation of ``range(n)`` on the device."""

    def keyed_bits(self, key: tuple[int, int], shape: tuple) -> Any:
        """uint64 words of the Philox4x64-10 stream of ``key``, the same on every backend.

        See :mod:`graphnet.backends.keyed`; here computed on the host and copied over.
        """
        from .keyed import random_bits
        shape = tuple(shape)
        return self.asarray(random_bits(key, math.prod(shape)).reshape(shape))

    @abstractmethod
    def rng_state(self) -> Any:
        """A host-side snapshot of the device generator (for checkpoints); no side effect."""

    @abstractmethod
    def set_rng_state(self, state: Any) -> None:
        """Restore a snapshot made by :meth:`rng_state`."""

    # --- scatter-add ----------------------------------------------------------
    @abstractmethod
    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        """``target[index] += values`` with repeated indices accumulated, in place."""

    def take_rows(self, x: Any, index: Any, out: Any) -> Any:
        """``out[:] = x[index]`` along the first axis, with no temporary of ``out``'s size.

        ``index`` must hold valid row numbers (callers check it).
        """
        return self.xp.take(x, index, axis=0, out=out)

    # --- strided views (im2col) -----------------------------------------------
    def sliding_window_view(self, x: Any, window_shape: tuple, axis: tuple) -> Any:
        """A read-only view of sliding windows over ``axis``."""
        return self.xp.lib.stride_tricks.sliding_window_view(x, window_shape, axis=axis)

    # --- convolution: im2col and its adjoint col2im ---------------------------------
    # Images are channel-major (C, N, H, W), already padded. Columns run over (n, oh, q)
    # with q < Q: Q = OW in general; with stride (1, 1) the rows are "full width", Q = W,
    # so each kernel offset's block is one contiguous slice of the flattened images (long
    # copies and adds instead of one short row at a time). The last W - OW columns of
    # each full-width row are junk: ignore them in the product, keep them zero in col2im's
    # input. Full-width patches read past the last window row, so the images then need
    # one spare row at the bottom (H >= OH + kh).
    @staticmethod
    def conv_row_width(stride: tuple, width: int, ow: int) -> int:
        """Q, the columns per output row: the full padded width for stride (1, 1), else OW."""
        return width if tuple(stride) == (1, 1) else ow

    @staticmethod
    def _offset_view(x: Any, i: int, j: int, stride: tuple, out_hw: tuple) -> Any:
        """The (C, N, OH, Q) elements that kernel offset (i, j) meets: a view of ``x``."""
        c, n, h, w = x.shape
        oh, ow = out_hw
        sh, sw = stride
        if (sh, sw) == (1, 1):  # full-width rows: one contiguous run per image
            return x.reshape(c, n, h * w)[:, :, i * w + j:i * w + j + oh * w].reshape(c, n, oh, w)
        return x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]

    def im2col(self, x: Any, kernel: tuple, stride: tuple, out_hw: tuple, out: Any = None) -> Any:
        """Patches of the channel-major images ``x`` as one ``(C*kh*kw, N*OH*Q)`` matrix.

        Rows are ordered (c, i, j) like ``w.reshape(C_out, -1)``. One slice copy per kernel
        offset, into ``out`` (a flat buffer of at least that size) when given. ``x`` must
        be C-contiguous.
        """
        kh, kw = kernel
        c, n, h, w = x.shape
        oh, ow = out_hw
        q = self.conv_row_width(stride, w, ow)
        if tuple(stride) == (1, 1) and h < oh + kh:
            raise ValueError(f"im2col with full-width rows needs a spare row: {h} rows for "
                             f"{oh} output rows and a kernel of {kh}")
        size = c * kh * kw * n * oh * q
        buf = self.xp.empty((size,), dtype=x.dtype) if out is None else out.reshape(-1)[:size]
        cols = buf.reshape(c, kh, kw, n, oh, q)
        for i in range(kh):
            for j in range(kw):
                cols[:, i, j] = self._offset_view(x, i, j, stride, out_hw)
        return buf.reshape(c * kh * kw, n * oh * q)

    def col2im(self, cols: Any, out: Any, kernel: tuple, stride: tuple, out_hw: tuple) -> None:
        """Add ``cols`` (the layout of :meth:`im2col`) into the channel-major ``out``, in place.

        The adjoint of im2col, a scatter-add where overlapping windows accumulate: here one
        slice-add per kernel offset (kh*kw array ops, no ``add.at``). ``out`` must be
        C-contiguous.
        """
        kh, kw = kernel
        c, n, h, w = out.shape
        oh, ow = out_hw
        q = self.conv_row_width(stride, w, ow)
        c6 = cols.reshape(c, kh, kw, n, oh, q)
        for i in range(kh):
            for j in range(kw):
                view = self._offset_view(out, i, j, stride, out_hw)
                view += c6[:, i, j]

    # --- max pooling --------------------------------------------------------------------
    @staticmethod
    def pool_offsets(x_hw: tuple, size: tuple, stride: tuple):
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

    def max_pool_backward(self, x: Any, y: Any, g: Any, size: tuple, stride: tuple,
                          out: Any = None) -> Any:
        """The gradient of max pooling: each window's ``g`` goes to the window's first
        element equal to its maximum ``y`` (row-major order); a NaN maximum passes nothing.

        One pass of comparisons and products per window offset, no host synchronisation.
        ``out`` (x's shape, g's dtype), when given, receives the result.
        """
        xp = self.xp
        (kh, kw), (sh, sw) = size, stride
        gx = out if out is not None and out.shape == x.shape else xp.empty(x.shape, dtype=g.dtype)
        gx[...] = 0
        overlap = sh < kh or sw < kw
        taken = None
        last = kh * kw - 1
        zero = xp.zeros((), dtype=g.dtype)
        for k, sl in self.pool_offsets(x.shape[2:], size, stride):
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

    # --- fused kernels (hot paths) --------------------------------------------
    def softmax_cross_entropy(self, logits: Any, labels: Any, out: Any = None) -> tuple[Any, Any]:
        """Mean cross-entropy of ``softmax(logits)`` and the probabilities (in ``out`` if given).

        ``labels`` are class indices (integer, shape ``(N,)``) or one-hot /
        soft targets with the logits' shape. A class index outside ``[0, C)`` makes its
        term NaN (see :meth:`label_poison`), never another class's.
        """
        xp = self.xp
        z = logits - logits.max(axis=1, keepdims=True)
        e = xp.exp(z)
        s = e.sum(axis=1, keepdims=True)
        probs = xp.divide(e, s, out=out)
        logs = xp.log(s)
        n = logits.shape[0]
        if labels.ndim == 1:
            index, poison = self.label_poison(labels, logits.shape[1], logits.dtype)
            picked = xp.take_along_axis(z, index[:, None].astype(xp.intp), axis=1)
            terms = logs - picked
            if poison is not None:
                terms = terms + poison
            loss = terms.sum() / n
        else:
            loss = ((logs - z) * labels).sum() / n
        return loss.astype(logits.dtype), probs

    def label_poison(self, labels: Any, classes: int, dtype: Any) -> tuple[Any, Any]:
        """``(index, poison)`` for class-index ``labels``: the labels clipped into range (safe to
        gather with: the GPU does not check bounds) and an ``(N, 1)`` column, NaN where the
        label was out of range and 0 elsewhere, added to that row's loss and gradient
        (None may stand for a column of zeros).

        Computed on the device, with no host synchronisation.
        """
        xp = self.xp
        bad = (labels < 0) | (labels >= classes)
        index = xp.clip(labels, 0, classes - 1)
        poison = xp.where(bad, xp.asarray(float("nan"), dtype=dtype), xp.asarray(0, dtype=dtype))
        return index, poison[:, None]

    def softmax_cross_entropy_backward(self, probs: Any, labels: Any, g: Any,
                                       out: Any = None) -> Any:
        """Gradient of the mean cross-entropy with respect to the logits (in ``out`` if given).

        Rows whose class index is out of range are NaN.
        """
        n = probs.shape[0]
        scale = (g / n).astype(probs.dtype)
        if labels.ndim == 1:
            index, poison = self.label_poison(labels, probs.shape[1], probs.dtype)
            grad = self.xp.multiply(probs, scale, out=out)
            rows = self.xp.arange(n)
            grad[rows, index] -= scale
            if poison is not None:
                grad += poison
            return grad
        return self.xp.multiply(probs - labels.astype(probs.dtype), scale, out=out)

    def sum_rows(self, g: Any, out: Any = None) -> Any:
        """``g.sum(axis=0)`` (a bias gradient), in ``out`` if given."""
        return g.sum(axis=0, out=out)

    def tanh_backward(self, y: Any, g: Any, out: Any = None) -> Any:
        """``g * (1 - y**2)`` for ``y = tanh(x)`` (in ``out`` if given).

        A product: NaN in ``g`` or ``y`` gives NaN, and so does inf times a zero factor.
        """
        return self.xp.multiply(g, 1 - y * y, out=out)

    def sigmoid_backward(self, y: Any, g: Any, out: Any = None) -> Any:
        """``(g * y) * (1 - y)`` for ``y = sigmoid(x)`` (in ``out`` if given); NaN as for tanh."""
        return self.xp.multiply(g * y, 1 - y, out=out)

    def relu_backward(self, y: Any, g: Any, out: Any = None) -> Any:
        """``g`` where ``y > 0``, else exactly 0 even where ``g`` is NaN or inf (in ``out`` if given).

        A select, not ``g * (y > 0)`` (whose ``inf * 0`` is NaN): an inactive unit passes
        no gradient at all, as in PyTorch and JAX. Every backend gives these same bits.
        """
        xp = self.xp
        res = xp.where(y > 0, g, xp.zeros((), dtype=g.dtype))
        if out is None:
            return res
        out[...] = res
        return out

    def sgd_update(self, p: Any, g: Any, v: Any | None, lr: float, momentum: float,
                   nesterov: bool, weight_decay: float, scratch: bool = False) -> None:
        """One SGD step in place: decoupled weight decay, optional (Nesterov) momentum.

        With ``scratch`` the update may overwrite ``g`` (the caller's own buffer).
        """
        if weight_decay:
            p *= 1 - lr * weight_decay
        if v is None:
            p -= lr * g
            return
        v *= momentum
        v += g
        if nesterov:
            p -= lr * (g + momentum * v)
        else:
            p -= lr * v

    def adam_update(self, p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float,
                    beta2: float, eps: float, step: int, weight_decay: float) -> None:
        """One Adam(W) step in place, with bias correction and decoupled weight decay."""
        xp = self.xp
        if weight_decay:
            p *= 1 - lr * weight_decay
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        c1 = 1 - beta1 ** step
        c2 = 1 - beta2 ** step
        denom = xp.sqrt(v / c2)
        denom += eps
        p -= (lr / c1) * (m / denom)
