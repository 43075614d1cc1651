"""Backend registry and selection: ``GRAPHNET_BACKEND``, ``set_backend``, ``use_backend``."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

from .base import Backend, BackendUnavailableError
from .host import array_library

ENV_VAR = "GRAPHNET_BACKEND"


def _make_numpy() -> Backend:
    from .numpy_backend import NumpyBackend
    return NumpyBackend()


def _make_cupy() -> Backend:
    from .cupy_backend import CupyBackend
    return CupyBackend()


_FACTORIES: dict[str, Callable[[], Backend]] = {"numpy": _make_numpy, "cupy": _make_cupy}
_instances: dict[str, Backend] = {}
_active: Backend | None = None


def backend_names() -> list[str]:
    """All registered backend names, available here or not."""
    return list(_FACTORIES)


def get_backend(name: str) -> Backend:
    """The backend called ``name``, created on first use.

    Raises ``ValueError`` for an unknown name and ``BackendUnavailableError`` where
    the backend cannot run on this machine.
    """
    key = str(name).strip().lower()
    if key not in _FACTORIES:
        raise ValueError(f"unknown graphnet backend {name!r}; valid names: "
                         + ", ".join(repr(n) for n in _FACTORIES))
    if key not in _instances:
        _instances[key] = _FACTORIES[key]()
    return _instances[key]


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    names = []
    for name in _FACTORIES:
        try:
            get_backend(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


def backend() -> Backend:
    """The active backend (from ``GRAPHNET_BACKEND`` on first use, default numpy)."""
    global _active
    if _active is None:
        env = os.environ.get(ENV_VAR, "").strip()
        try:
            _active = get_backend(env or "numpy")
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}={env!r}: {exc}") from None
    return _active


def backend_of(x: Any) -> Backend:
    """The backend whose arrays ``x`` is one of: CuPy's for a CuPy array, else NumPy's."""
    return get_backend("cupy" if array_library(x) == "cupy" else "numpy")


def set_backend(name: str | Backend) -> Backend:
    """Make ``name`` the active backend and return it."""
    global _active
    _active = name if isinstance(name, Backend) else get_backend(name)
    return _active


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """Activate a backend inside a ``with`` block, restoring the previous one after."""
    global _active
    previous = _active
    try:
        yield set_backend(name)
    finally:
        _active = previous


__all__ = ["Backend", "BackendUnavailableError", "array_library", "available_backends", "backend",
           "backend_of",
           "backend_names", "get_backend", "set_backend", "use_backend", "ENV_VAR"]
