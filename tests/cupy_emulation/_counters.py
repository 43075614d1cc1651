"""Counting every way CuPy would synchronise with the host or copy to it -- EMULATED.

Each such call reports an event before it runs: ``"d2h"`` (a device-to-host read: ``.get()``,
``cupy.asnumpy``, ``float()``/``int()``/``bool()``/``complex()``, ``.item()``, ``.tolist()``,
``__array__``, ``repr``/``str``/``format``), ``"sync"`` (``Stream.synchronize``,
``Device.synchronize``, ``cupy.cuda.runtime.deviceSynchronize``) or ``"h2d"`` (a host value
copied to the device: ``cupy.asarray``/``array`` of host data, ``ndarray.set``, host values
assigned with ``d[...] = host``). ``counting()`` collects them; listeners added with
:func:`listen` see each one first (the capture emulation raises there, as CUDA does).
"""
from __future__ import annotations

import contextlib
import traceback
from typing import Any, Callable, Iterator

import numpy as np

from . import _array
from ._array import ndarray

_LISTENERS: list[Callable[[str, str], None]] = []
_COUNTERS: list["Counts"] = []


class Counts:
    """Events seen while a :func:`counting` block is open: ``d2h``, ``sync``, ``h2d`` and a log."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str]] = []

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.log if k == kind)

    d2h = property(lambda self: self.count("d2h"))
    sync = property(lambda self: self.count("sync"))
    h2d = property(lambda self: self.count("h2d"))

    def host_syncs(self) -> list[tuple[str, str, str]]:
        """The device-to-host reads and synchronisations (h2d copies left out), with callers."""
        return [e for e in self.log if e[0] != "h2d"]

    def reset(self) -> None:
        self.log.clear()


def event(kind: str, what: str) -> None:
    """Report one host synchronisation or transfer (listeners first: they may raise)."""
    for listener in list(_LISTENERS):
        listener(kind, what)
    if _COUNTERS:
        where = _caller()
        for c in _COUNTERS:
            c.log.append((kind, what, where))


def _caller() -> str:
    """The innermost frame outside the emulation: where the library asked for the event."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "cupy_emulation" not in frame.filename:
            return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return "?"


@contextlib.contextmanager
def counting() -> Iterator[Counts]:
    """Collect every event while the block runs."""
    c = Counts()
    _COUNTERS.append(c)
    try:
        yield c
    finally:
        _COUNTERS.remove(c)


def listen(listener: Callable[[str, str], None]) -> Callable[[], None]:
    """Call ``listener(kind, what)`` on every event; returns the function that removes it."""
    _LISTENERS.append(listener)
    return lambda: _LISTENERS.remove(listener)


# --- the hooks --------------------------------------------------------------------------------
def _reporting(kind: str, what: str, f: Callable) -> Callable:
    def hooked(*args: Any, **kwargs: Any) -> Any:
        event(kind, what)
        return f(*args, **kwargs)
    hooked.__name__ = getattr(f, "__name__", what)
    hooked.__wrapped_event__ = True  # type: ignore[attr-defined]
    return hooked


def _host_data(x: Any) -> bool:
    return not isinstance(x, ndarray) and x is not None


def _transfer(f: Callable, name: str) -> Callable:
    def hooked(x: Any, *args: Any, **kwargs: Any) -> Any:
        if _host_data(x):
            event("h2d", f"cupy.{name}")
        return f(x, *args, **kwargs)
    hooked.__name__ = name
    return hooked


def _set(self: ndarray, arr: Any, stream: Any = None) -> None:
    """``ndarray.set``: copy a host array of the same shape into this device array."""
    event("h2d", "ndarray.set")
    host = np.asarray(arr)
    if host.shape != self.shape:
        raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {host.shape}")
    np.copyto(self._a, host, casting="same_kind")


def _setitem(orig: Callable) -> Callable:
    def __setitem__(self: ndarray, index: Any, value: Any) -> None:
        if isinstance(value, np.ndarray):
            event("h2d", "ndarray.__setitem__ (host value)")
        orig(self, index, value)
    return __setitem__


def _patch_array() -> None:
    if getattr(ndarray, "__graphnet_counted__", False):
        return
    for name in ("get", "__array__", "__float__", "__int__", "__bool__", "__complex__",
                 "__repr__", "__str__", "__format__"):
        setattr(ndarray, name, _reporting("d2h", f"ndarray.{name}", getattr(ndarray, name)))
    for name in ("item", "tolist"):  # otherwise lifted through __getattr__
        setattr(ndarray, name, (lambda n: _reporting(
            "d2h", f"ndarray.{n}", lambda self, *a: getattr(self._a, n)(*a)))(name))
    ndarray.__setitem__ = _setitem(ndarray.__setitem__)
    ndarray.set = _set
    ndarray.__graphnet_counted__ = True


def install(mods: dict) -> None:
    """Hook the emulated modules ``mods`` (``modules()``) and the array type (once)."""
    _patch_array()
    cupy, cuda, runtime = mods["cupy"], mods["cupy.cuda"], mods["cupy.cuda.runtime"]
    for name in _array._TRANSFERS:
        setattr(cupy, name, _transfer(getattr(cupy, name), name))
    runtime.deviceSynchronize = _reporting("sync", "cupy.cuda.runtime.deviceSynchronize",
                                           lambda: None)
    for cls in (cuda.Device, cuda.Stream):
        if not getattr(cls.synchronize, "__wrapped_event__", False):
            cls.synchronize = _reporting("sync", f"{cls.__name__}.synchronize", cls.synchronize)


__all__ = ["Counts", "counting", "event", "install", "listen"]
