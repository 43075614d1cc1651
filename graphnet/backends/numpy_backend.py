"""The NumPy (CPU) backend."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend


_UINT_OF = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


class NumpyBackend(Backend):
    """Runs everything on the host with NumPy."""

    name = "numpy"
    xp = np
    im2col_chunk_bytes = 2 * 2**20  # cache-sized chunks: ~1.5-2x faster than whole-batch buffers

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)
        self._scratch_bufs: dict[tuple, np.ndarray] = {}

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        if type(x).__module__.split(".")[0] == "cupy":
            return x.get() if dtype is None else x.get().astype(dtype, copy=False)
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> Any:
        if type(x).__module__.split(".")[0] == "cupy":
            return x.get()
        return np.asarray(x)

    def is_array(self, x: Any) -> bool:
        return isinstance(x, np.ndarray)

    def synchronize(self) -> None:
        pass

    def device_name(self) -> str:
        import platform
        return f"CPU ({platform.processor() or platform.machine()})"

    def memory_info(self) -> dict[str, int]:
        try:
            import resource
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except (ImportError, OSError):
            peak = 0
        return {"peak_rss_bytes": peak}

    def seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def uniform(self, shape: tuple, dtype: Any) -> Any:
        return self._rng.random(shape, dtype=dtype)

    def permutation(self, n: int) -> Any:
        return self._rng.permutation(n)

    def rng_state(self) -> Any:
        return self._rng.bit_generator.state

    def set_rng_state(self, state: Any) -> None:
        self._rng.bit_generator.state = state

    def _scratch(self, like: np.ndarray) -> np.ndarray:
        """A reusable buffer shaped like ``like`` (for in-place optimizer updates)."""
        key = (like.shape, like.dtype)
        buf = self._scratch_bufs.get(key)
        if buf is None:
            buf = self._scratch_bufs[key] = np.empty_like(like)
        return buf

    def sgd_update(self, p: Any, g: Any, v: Any | None, lr: float, momentum: float,
                   nesterov: bool, weight_decay: float, scratch: bool = False) -> None:
        # The base class's arithmetic in the same order, with no temporaries.
        if weight_decay:
            p *= 1 - lr * weight_decay
        tmp = g if scratch and not nesterov else self._scratch(p)
        step = g
        if v is not None:
            v *= momentum
            v += g
            step = v
            if nesterov:
                np.multiply(v, momentum, out=tmp)
                tmp += g
                step = tmp
        np.multiply(step, lr, out=tmp)
        p -= tmp

    def adam_update(self, p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float,
                    beta2: float, eps: float, step: int, weight_decay: float) -> None:
        # The base class's arithmetic in the same order, through one scratch buffer.
        if weight_decay:
            p *= 1 - lr * weight_decay
        t = self._scratch(p)
        m *= beta1
        np.multiply(g, 1 - beta1, out=t)
        m += t
        v *= beta2
        np.multiply(g, g, out=t)
        t *= 1 - beta2
        v += t
        np.divide(v, 1 - beta2 ** step, out=t)
        np.sqrt(t, out=t)
        t += eps
        np.divide(m, t, out=t)
        t *= lr / (1 - beta1 ** step)
        p -= t

    def max_pool_backward(self, x: Any, y: Any, g: Any, size: tuple, stride: tuple,
                          out: Any = None) -> Any:
        (kh, kw), (sh, sw) = size, stride
        oh, ow = y.shape[2], y.shape[3]
        if (sh, sw) == (kh, kw) and x.shape[2] == oh * kh and x.shape[3] == ow * kw:
            gx = self._max_pool_tiles(x, g, y, out)
            if gx is not None:
                return gx
        return super().max_pool_backward(x, y, g, size, stride, out)

    @staticmethod
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

    def take_rows(self, x: Any, index: Any, out: Any) -> Any:
        # mode="raise" (the default) gathers into a hidden temporary as large as out
        return np.take(x, index, axis=0, out=out, mode="clip")

    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        np.add.at(target, index, values)

    # Fused kernels: the same maths as the base class with fewer temporaries.
    # NumPy ufuncs give 0-d operands back as scalars, which cannot be written in place.
    def sum_rows(self, g: Any, out: Any = None) -> Any:
        return np.add.reduce(g, axis=0, out=out)  # .sum() adds a Python-level wrapper per call

    def tanh_backward(self, y: Any, g: Any, out: Any = None) -> Any:
        if not getattr(y, "ndim", 0) or getattr(g, "shape", None) != y.shape:
            return super().tanh_backward(y, g, out)
        out = np.multiply(y, y, out=out)
        np.subtract(1, out, out=out)
        out *= g
        return out

    def relu_backward(self, y: Any, g: Any, out: Any = None) -> Any:
        uint = _UINT_OF.get(getattr(g, "dtype", None))
        if (uint is None or not getattr(y, "ndim", 0) or g.shape != y.shape
                or (out is not None and out.dtype != g.dtype)):
            return super().relu_backward(y, g, out)
        # The select on the bits: g's bit pattern times 1 or 0 (a float product would turn
        # inf * 0 into NaN). Several times faster than np.where or a masked write.
        if out is None:
            out = np.empty_like(g)
        np.multiply(g.view(uint), y > 0, out=out.view(uint))
        return out

    def softmax_cross_entropy(self, logits: Any, labels: Any, out: Any = None) -> tuple[Any, Any]:
        if labels.ndim != 1 or logits.ndim != 2:
            return super().softmax_cross_entropy(logits, labels, out)
        n = logits.shape[0]
        index, poison = self.label_poison(labels, logits.shape[1], logits.dtype)
        rows = self._rows(n)
        z = np.subtract(logits, np.maximum.reduce(logits, axis=1, keepdims=True), out=out)
        picked = z[rows, index]
        np.exp(z, out=z)
        s = np.add.reduce(z, axis=1, keepdims=True)
        terms = np.log(s) - picked[:, None]
        if poison is not None:
            terms += poison
        loss = np.add.reduce(terms, axis=None) / n
        z /= s
        return loss.astype(logits.dtype), z

    def label_poison(self, labels: Any, classes: int, dtype: Any) -> tuple[Any, Any]:
        # The base class's result, but on the host it is free to see that all labels are
        # good (the usual case) and skip the clip and the NaN column: None stands for zeros.
        # One ufunc.reduce, on the labels read as unsigned (negatives become huge): this
        # runs every step, on small arrays.
        unsigned = labels.view(f"u{labels.dtype.itemsize}") if labels.dtype.kind == "i" else labels
        if not labels.size or np.maximum.reduce(unsigned, axis=None) < classes:
            return labels, None
        return super().label_poison(labels, classes, dtype)

    def softmax_cross_entropy_backward(self, probs: Any, labels: Any, g: Any,
                                       out: Any = None) -> Any:
        if labels.ndim != 1:
            return super().softmax_cross_entropy_backward(probs, labels, g, out)
        n = probs.shape[0]
        index, poison = self.label_poison(labels, probs.shape[1], probs.dtype)
        scale = (g / n).astype(probs.dtype)
        grad = np.multiply(probs, scale, out=out)
        grad[self._rows(n), index] -= scale
        if poison is not None:
            grad += poison
        return grad

    def _rows(self, n: int) -> np.ndarray:
        rows = self._scratch_bufs.get(("rows", n))
        if rows is None:
            rows = self._scratch_bufs[("rows", n)] = np.arange(n)
        return rows
