"""A CPU emulation of the part of CuPy that graphnet uses -- EMULATED, not GPU evidence.

It lets CI execute graphnet's CuPy backend code (``graphnet/backends/cupy_backend.py`` and every
op's ``xp`` calls) on a machine without a GPU, with CuPy's semantics where they differ from
NumPy's: see ``_array`` (device array type, host arrays refused, 0-d results, no bounds checks)
and ``_kernels`` (ElementwiseKernel bodies compiled by the host C++ compiler and executed).
What it cannot show: that the code runs on a GPU, its speed, its memory use, or cuRAND's streams.

Use ``with emulated(): ...`` (swaps ``cupy``/``cupyx`` in ``sys.modules``) or ``install()``.
"""
from __future__ import annotations

import contextlib
import sys
import types
from typing import Any, Iterator

import numpy as np

from . import _array, _kernels
from ._array import ndarray, set_allocation_limit
from ._errors import CUBLASError, CUDARuntimeError, OutOfMemoryError

__all__ = ["emulated", "install", "uninstall", "modules", "is_emulated", "set_allocation_limit",
           "LABEL", "OutOfMemoryError", "CUDARuntimeError", "CUBLASError"]

LABEL = "cupy-emulated"
VERSION = "14.0.0+cpu-emulation"
_MODULES: dict[str, types.ModuleType] = {}


class _Device:
    id = 0
    mem_info = (8 << 30, 8 << 30)  # (free, total): a fixed pretend size, see is_emulated

    def __init__(self, device: int = 0) -> None:
        self.id = int(device)

    def synchronize(self) -> None:
        pass

    def use(self) -> None:
        pass

    def __enter__(self) -> "_Device":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _Stream:
    def synchronize(self) -> None:
        pass


class _MemoryPool:
    """A stand-in pool: host memory is not tracked, so it reports nothing held."""

    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        pass

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        set_allocation_limit(size)


_POOL = _MemoryPool()


class RandomState:
    """``cupy.random.RandomState``: NumPy's generator underneath (cuRAND's streams differ)."""

    def __init__(self, seed: int | None = None) -> None:
        self._rs = np.random.RandomState(seed)

    def seed(self, seed: int | None = None) -> None:
        self._rs.seed(seed)

    def random_sample(self, size: Any = None, dtype: Any = float) -> ndarray:
        return _array.wrap(np.asarray(self._rs.random_sample(size)).astype(dtype))

    rand_dtype = random_sample

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = float) -> ndarray:
        return _array.wrap(np.asarray(self._rs.uniform(low, high, size)).astype(dtype))

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None, dtype: Any = float) -> ndarray:
        return _array.wrap(np.asarray(self._rs.normal(loc, scale, size)).astype(dtype))

    def standard_normal(self, size: Any = None, dtype: Any = float) -> ndarray:
        return self.normal(size=size, dtype=dtype)

    def randint(self, low: int, high: int | None = None, size: Any = None, dtype: Any = int) -> ndarray:
        return _array.wrap(np.asarray(self._rs.randint(low, high, size)).astype(dtype))

    def permutation(self, n: Any) -> ndarray:
        return _array.wrap(self._rs.permutation(_array.unwrap(n)))

    def shuffle(self, a: ndarray) -> None:
        self._rs.shuffle(_array.unwrap(a))


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name, f"CPU emulation of {name} (graphnet tests; not GPU evidence)")
    mod.__dict__.update(attrs)
    mod.__graphnet_emulation__ = True
    return mod


def modules() -> dict[str, types.ModuleType]:
    """The emulated ``cupy`` package and its submodules, by ``sys.modules`` name (built once)."""
    if _MODULES:
        return _MODULES
    memory = _module("cupy.cuda.memory", OutOfMemoryError=OutOfMemoryError,
                     MemoryPool=_MemoryPool)
    runtime = _module(
        "cupy.cuda.runtime", CUDARuntimeError=CUDARuntimeError, runtimeGetVersion=lambda: 12090, driverGetVersion=lambda: 12090,
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda dev: {"name": b"CPU emulation of CuPy (no GPU)",
                                         "totalGlobalMem": _Device.mem_info[1]})
    cublas = _module("cupy.cuda.cublas", CUBLASError=CUBLASError)
    cuda = _module("cupy.cuda", is_available=lambda: True, Device=_Device, memory=memory,
                   runtime=runtime, cublas=cublas, get_current_stream=lambda: _Stream(),
                   Stream=_Stream, MemoryPool=_MemoryPool)
    shared_rs = RandomState(0)
    random = _module("cupy.random", RandomState=RandomState, seed=shared_rs.seed,
                     random_sample=shared_rs.random_sample, rand=shared_rs.random_sample,
                     permutation=shared_rs.permutation, normal=shared_rs.normal,
                     uniform=shared_rs.uniform, randint=shared_rs.randint)
    linalg = _module("cupy.linalg", **{n: _array.lift(getattr(np.linalg, n))
                                       for n in ("svd", "norm", "inv", "solve", "qr", "det")})
    stride_tricks = _module("cupy.lib.stride_tricks", sliding_window_view=_array.lift(
        np.lib.stride_tricks.sliding_window_view), as_strided=_array.lift(
        np.lib.stride_tricks.as_strided))
    lib = _module("cupy.lib", stride_tricks=stride_tricks)
    cupy = _module("cupy", __version__=VERSION, ndarray=ndarray, cuda=cuda, random=random,
                   linalg=linalg, lib=lib, ElementwiseKernel=_kernels.ElementwiseKernel,
                   get_default_memory_pool=lambda: _POOL,
                   get_default_pinned_memory_pool=lambda: _MemoryPool(),
                   get_array_module=lambda *a: _MODULES["cupy"]
                   if any(isinstance(x, ndarray) for x in a) else np,
                   **_array.FUNCTIONS, **{n: getattr(np, n) for n in _array.PASSTHROUGH})
    cupyx = _module("cupyx", scatter_add=_array.scatter_add)
    _MODULES.update({m.__name__: m for m in (cupy, cuda, memory, runtime, cublas, random, linalg, lib,
                                            stride_tricks, cupyx)})
    # Hooks: CUDA-graph capture (_capture), then host-sync and transfer counting (_counters).
    from . import _capture, _counters
    _capture.install(_MODULES)
    _counters.install(_MODULES)
    return _MODULES


_saved: list[dict[str, Any]] = []


def install() -> None:
    """Make ``import cupy`` / ``import cupyx`` give the emulation (until ``uninstall``)."""
    mods = modules()
    _saved.append({name: sys.modules.get(name) for name in mods})
    sys.modules.update(mods)


def uninstall() -> None:
    """Undo the latest ``install``."""
    for name, mod in _saved.pop().items():
        if mod is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = mod


@contextlib.contextmanager
def emulated() -> Iterator[types.ModuleType]:
    """The emulated ``cupy`` module, importable as ``cupy`` inside the block."""
    install()
    try:
        yield modules()["cupy"]
    finally:
        uninstall()


def is_emulated(obj: Any) -> bool:
    """Whether ``obj`` (a module, or a backend with ``.xp``) is this emulation."""
    mod = getattr(obj, "xp", obj)
    return bool(getattr(mod, "__graphnet_emulation__", False))
