"""The backend interface: what NumPy and CuPy do differently (arrays, transfers, random numbers,
device, memory, compiling elementwise kernels). Op kernels live beside their ops."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

from ..errors import GraphnetError


class BackendUnavailableError(GraphnetError, RuntimeError):
    """A backend was asked for but cannot run here (library or device missing)."""


class Backend(ABC):
    """An array library plus what NumPy and CuPy do differently.

    ``xp`` is the NumPy-compatible namespace (``numpy`` or ``cupy``) for what both
    share. The methods cover arrays and transfers, gather and scatter-add, random
    numbers, device information, memory (scratch arrays) and one helper that compiles
    elementwise kernels. The kernels themselves (losses, activation gradients,
    optimizer updates, convolution) live beside their ops, with per-backend overrides
    registered there (see :mod:`graphnet.kernels`).
    """

    name: str
    xp: Any
    #: conv2d works through the batch in chunks whose im2col buffer is at most this big
    im2col_chunk_bytes: int = 256 * 2**20
    #: chunked kernels may run their chunks on host worker threads (graphnet.parallel)
    host_parallel: bool = False

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

    # --- gather and scatter-add -----------------------------------------------
    @abstractmethod
    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        """``target[index] += values`` with repeated indices accumulated, in place."""

    def take_rows(self, x: Any, index: Any, out: Any) -> Any:
        """``out[:] = x[index]`` along the first axis, with no temporary of ``out``'s size.

        ``index`` must hold valid row numbers (callers check it).
        """
        return self.xp.take(x, index, axis=0, out=out)

    def sliding_window_view(self, x: Any, window_shape: tuple, axis: tuple) -> Any:
        """A read-only view of sliding windows over ``axis``."""
        return self.xp.lib.stride_tricks.sliding_window_view(x, window_shape, axis=axis)

    # --- memory -----------------------------------------------------------------
    def scratch(self, like: Any) -> Any:
        """A reusable array with ``like``'s shape and dtype (contents undefined), the same
        one on every call: for a kernel's temporary that dies before the kernel returns."""
        bufs = self.__dict__.setdefault("_scratch_bufs", {})
        key = (like.shape, like.dtype)
        buf = bufs.get(key)
        if buf is None:
            buf = bufs[key] = self.xp.empty_like(like)
        return buf

    # --- compiled elementwise kernels -------------------------------------------
    def elementwise(self, name: str, params: str, out: str, body: str) -> Any:
        """The elementwise kernel ``name`` (CuPy's ``ElementwiseKernel`` spec: input
        ``params``, ``out`` parameters and a C ``body``), compiled once and cached.

        Only backends that compile kernels have it; kernels call it from their override
        for that backend (see :mod:`graphnet.kernels`).
        """
        raise NotImplementedError(f"the {self.name!r} backend compiles no elementwise kernels "
                                  f"(asked for {name!r})")
