"""The NumPy (CPU) backend."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend
from .host import array_library



class NumpyBackend(Backend):
    """Runs everything on the host with NumPy."""

    name = "numpy"
    xp = np
    im2col_chunk_bytes = 2 * 2**20  # cache-sized chunks: ~1.5-2x faster than whole-batch buffers
    host_parallel = True

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)
        self._scratch_bufs: dict[tuple, np.ndarray] = {}

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        if array_library(x) == "cupy":
            return x.get() if dtype is None else x.get().astype(dtype, copy=False)
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> Any:
        if array_library(x) == "cupy":
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

    def take_rows(self, x: Any, index: Any, out: Any) -> Any:
        # mode="raise" (the default) gathers into a hidden temporary as large as out
        return np.take(x, index, axis=0, out=out, mode="clip")

    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        np.add.at(target, index, values)
