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


def array_library(x: Any) -> str:
    """The top-level module of ``x``'s type: ``"numpy"``, ``"cupy"``, ``"torch"``, ``"builtins"``...

    The one place graphnet tells whose array a value is without importing that library.
    """
    return type(x).__module__.partition(".")[0]


def to_numpy(x: Any) -> Any:
    """Any backend array or scalar as host NumPy (a 0-d result becomes a NumPy scalar)."""
    if array_library(x) == "cupy":
        x = x.get()
    out = np.asarray(x)
    return out[()] if out.ndim == 0 else out


def is_floating(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating-point dtype."""
    return np.dtype(dtype).kind == "f"


def result_dtype(*dtypes: Any) -> np.dtype:
    """The dtype NumPy (and CuPy) give an elementwise op of arrays with ``dtypes``."""
    return np.result_type(*dtypes)


def dtype_of(name: Any) -> np.dtype:
    """Normalise a dtype spec (``'float32'``, ``np.float64``, ...) to a NumPy dtype."""
    return np.dtype(name)


def host_uniform(low: float, high: float, shape: tuple) -> np.ndarray:
    """Uniform draws from the seeded host generator (float64, cast by the caller)."""
    return _host_rng.uniform(low, high, size=shape)


def host_normal(std: float, shape: tuple) -> np.ndarray:
    """Normal draws with mean 0 from the seeded host generator."""
    return _host_rng.normal(0.0, std, size=shape)


def host_rng_state() -> dict:
    """The host generator's state (JSON-serialisable)."""
    return _host_rng.bit_generator.state


def set_host_rng_state(state: dict) -> None:
    """Restore the host generator's state."""
    _host_rng.bit_generator.state = state


def host_zeros(shape: tuple) -> np.ndarray:
    """Zeros on the host (float64, cast by the caller)."""
    return np.zeros(shape)
