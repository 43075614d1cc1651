"""The backend interface: everything the engine computes goes through one of these."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class BackendUnavailableError(RuntimeError):
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

    @abstractmethod
    def rng_state(self) -> Any:
        """A host-side snapshot of the device generator (for checkpoints)."""

    @abstractmethod
    def set_rng_state(self, state: Any) -> None:
        """Restore a snapshot made by :meth:`rng_state`."""

    # --- scatter-add ----------------------------------------------------------
    @abstractmethod
    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        """``target[index] += values`` with repeated indices accumulated, in place."""

    # --- strided views (im2col) -----------------------------------------------
    def sliding_window_view(self, x: Any, window_shape: tuple, axis: tuple) -> Any:
        """A read-only view of sliding windows over ``axis``."""
        return self.xp.lib.stride_tricks.sliding_window_view(x, window_shape, axis=axis)

    def im2col(self, x: Any, kernel: tuple, stride: tuple, out: Any = None) -> Any:
        """The patches of an (already padded) NCHW ``x`` as one ``(C*kh*kw, N*OH*OW)`` matrix.

        Rows are ordered (c, i, j) like a weight ``w.reshape(C_out, C*kh*kw)``; columns
        (n, oh, ow). One strided copy from a sliding-window view (written into ``out``,
        a buffer of at least that size, when given).
        """
        kh, kw = kernel
        sh, sw = stride
        v = self.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        n, c, oh, ow = v.shape[:4]
        shape6 = (c, kh, kw, n, oh, ow)
        size = c * kh * kw * n * oh * ow
        buf = (self.xp.empty(shape6, dtype=x.dtype) if out is None
               else out.reshape(-1)[:size].reshape(shape6))
        self.xp.copyto(buf, v.transpose(1, 4, 5, 0, 2, 3))
        return buf.reshape(c * kh * kw, n * oh * ow)

    def col2im(self, cols: Any, out: Any, kernel: tuple, stride: tuple) -> None:
        """Add ``cols`` (the layout of :meth:`im2col`) back into the padded NCHW ``out``, in place.

        The adjoint of im2col: a scatter-add where overlapping windows accumulate. Here one
        strided slice-add per kernel offset (kh*kw array ops, no ``add.at``).
        """
        kh, kw = kernel
        sh, sw = stride
        n, c, h, w = out.shape
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        c6 = cols.reshape(c, kh, kw, n, oh, ow)
        target = out.transpose(1, 0, 2, 3)  # (C, N, H, W) view, matching c6's (c, n) order
        for i in range(kh):
            for j in range(kw):
                target[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += c6[:, i, j]

    # --- fused kernels (hot paths) --------------------------------------------
    def softmax_cross_entropy(self, logits: Any, labels: Any) -> tuple[Any, Any]:
        """Mean cross-entropy of ``softmax(logits)`` and the probabilities.

        ``labels`` are class indices (integer, shape ``(N,)``) or one-hot /
        soft targets with the logits' shape.
        """
        xp = self.xp
        z = logits - logits.max(axis=1, keepdims=True)
        e = xp.exp(z)
        s = e.sum(axis=1, keepdims=True)
        probs = e / s
        logs = xp.log(s)
        n = logits.shape[0]
        if labels.ndim == 1:
            picked = xp.take_along_axis(z, labels[:, None].astype(xp.intp), axis=1)
            loss = (logs - picked).sum() / n
        else:
            loss = ((logs - z) * labels).sum() / n
        return loss.astype(logits.dtype), probs

    def softmax_cross_entropy_backward(self, probs: Any, labels: Any, g: Any) -> Any:
        """Gradient of the mean cross-entropy with respect to the logits."""
        n = probs.shape[0]
        scale = (g / n).astype(probs.dtype)
        if labels.ndim == 1:
            grad = probs * scale
            rows = self.xp.arange(n)
            grad[rows, labels] -= scale
            return grad
        return (probs - labels.astype(probs.dtype)) * scale

    def tanh_backward(self, y: Any, g: Any) -> Any:
        """``g * (1 - y**2)`` for ``y = tanh(x)``."""
        return g * (1 - y * y)

    def sigmoid_backward(self, y: Any, g: Any) -> Any:
        """``g * y * (1 - y)`` for ``y = sigmoid(x)``."""
        return g * y * (1 - y)

    def relu_backward(self, y: Any, g: Any) -> Any:
        """``g`` where ``y > 0``, else 0."""
        return g * (y > 0)

    def sgd_update(self, p: Any, g: Any, v: Any | None, lr: float, momentum: float,
                   nesterov: bool, weight_decay: float) -> None:
        """One SGD step in place: decoupled weight decay, optional (Nesterov) momentum."""
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
