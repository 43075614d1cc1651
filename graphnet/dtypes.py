"""The default floating dtype (float32 unless changed)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .backends.host import dtype_of, is_floating

_default = dtype_of("float32")


def get_default_dtype() -> Any:
    """The dtype of new parameters and floating inputs."""
    return _default


def set_default_dtype(dtype: Any) -> None:
    """Set the dtype of new parameters and floating inputs (float32 or float64)."""
    global _default
    d = dtype_of(dtype)
    if not is_floating(d):
        raise ValueError(f"default dtype must be floating, got {d}")
    _default = d


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """Use ``dtype`` as the default inside a ``with`` block."""
    old = _default
    set_default_dtype(dtype)
    try:
        yield
    finally:
        set_default_dtype(old)
