"""Host-side helpers: the seeded NumPy generator for initial weights, host conversion."""
from __future__ import annotations

from typing import Any

import numpy as np

_host_rng = np.random.default_rng(0)


def host_rng() -> np.random.Generator:
    """The seeded host generator that draws initial weights (same on every backend)."""
    return _host_rng


def seed_host(seed: int) -> None:
    """Reseed the host generator."""
    global _host_rng
    _host_rng = np.random.default_rng(seed)


def to_numpy(x: Any) -> Any:
    """Any backend array or scalar as host NumPy (a 0-d result becomes a NumPy scalar)."""
    if type(x).__module__.split(".")[0] == "cupy":
        x = x.get()
    out = np.asarray(x)
    return out[()] if out.ndim == 0 else out


def is_floating(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating-point dtype."""
    return np.dtype(dtype).kind == "f"


def dtype_of(name: Any) -> np.dtype:
    """Normalise a dtype spec (``'float32'``, ``np.float64``, ...) to a NumPy dtype."""
    return np.dtype(name)
