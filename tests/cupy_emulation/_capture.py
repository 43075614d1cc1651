"""CUDA-graph stream capture and replay -- EMULATED, faithful where a wrong use would show.

- ``cupy.cuda.Stream(non_blocking=True)``; ``with stream:`` makes it current;
  ``stream.begin_capture()`` / ``stream.end_capture()`` (returns a :class:`Graph`);
  ``graph.launch(stream)`` replays. Capturing on the null stream is refused.
- While a stream captures, every array operation issued on it is *recorded, not run*, as CUDA
  does: the operation runs once to learn its result's shape, then the arrays it was given are
  restored and any array it allocated is filled with garbage (NaN, or 0x5A bytes). Reading
  values during capture therefore gives garbage, as on a GPU.
- ``launch`` runs the record in order on the *same array objects* (a result the capture
  allocated gets the replayed values written into its own storage), so a replay reads what is
  in the captured input buffers now; values passed as Python scalars are baked in.
- During capture a host synchronisation or transfer (``_counters`` events: ``.get()``,
  ``float()``, ``synchronize()``, host-to-device copies...) raises :class:`StreamCaptureError`
  (CuPy raises ``CUDARuntimeError: cudaErrorStreamCaptureUnsupported``) and invalidates the
  capture; an operation issued on another stream raises too (``cudaErrorStreamCaptureImplicit``).
Not emulated: memory moving after capture (the record keeps every array alive, like a private
pool), cuRAND (``cupy.random`` calls replay with fresh draws), kernel timing.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import numpy as np

from . import _array, _counters, _kernels
from ._array import ndarray
from ._errors import CUDARuntimeError

_STATE: dict[str, Any] = {"capture": None, "streams": []}


class StreamCaptureError(CUDARuntimeError):
    """``cupy.cuda.runtime.CUDARuntimeError`` as a capture misuse raises it (the message
    starts with the CUDA status name, as CuPy's does)."""

    def __init__(self, message: str) -> None:
        RuntimeError.__init__(self, message)
        self.status = message.split(":", 1)[0]


class Graph:
    """``cupy.cuda.graph.Graph``: the operations a capture recorded, replayed by ``launch``."""

    def __init__(self, ops: list) -> None:
        self._ops = ops
        self.launches = 0

    def launch(self, stream: Any = None) -> None:
        if _STATE["capture"] is not None:
            raise StreamCaptureError("cudaErrorStreamCaptureUnsupported: graph launch while "
                                     "a stream is capturing (emulated)")
        for f, args, kwargs, out in self._ops:
            _write_back(out, f(*args, **kwargs))
        self.launches += 1

    def __len__(self) -> int:
        return len(self._ops)


def _write_back(out: Any, new: Any) -> None:
    if isinstance(out, ndarray) and isinstance(new, ndarray):
        if new is not out and out._a.flags.writeable:
            np.copyto(out._a, new._a)
    elif isinstance(out, (tuple, list)) and isinstance(new, (tuple, list)):
        for o, n in zip(out, new):
            _write_back(o, n)


class _Capture:
    """One capture in progress: the stream it belongs to and what it recorded."""

    def __init__(self, stream: "Stream") -> None:
        self.stream = stream
        self.ops: list = []
        self.depth = 0
        self.invalid: Optional[str] = None

    def run(self, f: Callable, args: tuple, kwargs: dict) -> Any:
        if current_stream() is not self.stream:
            self.invalid = "an operation on another stream"
            raise StreamCaptureError("cudaErrorStreamCaptureImplicit: operation issued on "
                                     "another stream while a stream is capturing (emulated)")
        given = _array._device_arrays((args, kwargs))
        saved = [(d, d._a.copy()) for d in given if d._a.flags.writeable]
        self.depth += 1
        try:
            out = f(*args, **kwargs)
        finally:
            self.depth -= 1
            for d, before in saved:  # recorded, not run: the device memory is untouched
                np.copyto(d._a, before)
        _poison(out, given)
        self.ops.append((f, args, kwargs, out))
        return out


def _poison(out: Any, given: list) -> None:
    """Fill arrays the capture allocated with garbage: nothing ran yet."""
    if isinstance(out, (tuple, list)):
        for o in out:
            _poison(o, given)
        return
    if not isinstance(out, ndarray) or not out._a.flags.writeable:
        return
    if any(out is d or np.may_share_memory(out._a, d._a) for d in given):
        return
    if out.dtype.kind in "fc":
        out._a.fill(np.nan)
    elif out._a.flags.c_contiguous:
        out._a.view(np.uint8).fill(0x5A)


def _recorded(f: Callable) -> Callable:
    def recorded(*args: Any, **kwargs: Any) -> Any:
        cap = _STATE["capture"]
        if cap is None or cap.depth:
            return f(*args, **kwargs)
        return cap.run(f, args, kwargs)
    recorded.__name__ = getattr(f, "__name__", "op")
    recorded.__recorded__ = True  # type: ignore[attr-defined]
    return recorded


def _refuse(kind: str, what: str) -> None:
    cap = _STATE["capture"]
    if cap is not None:
        cap.invalid = what
        raise StreamCaptureError(f"cudaErrorStreamCaptureUnsupported: operation not permitted "
                                 f"when stream is capturing ({what}: a host "
                                 f"{'synchronisation' if kind == 'sync' else 'transfer'}; emulated)")


class Stream:
    """``cupy.cuda.Stream``: a context that makes it current; captures on request."""

    null: "Stream"

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False,
                 priority: Any = None) -> None:
        self.is_null = bool(null)
        self.non_blocking = non_blocking

    def synchronize(self) -> None:
        pass

    def __enter__(self) -> "Stream":
        _STATE["streams"].append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _STATE["streams"].pop()

    def use(self) -> "Stream":
        _STATE["streams"][:] = [self]
        return self

    def is_capturing(self) -> bool:
        cap = _STATE["capture"]
        return cap is not None and cap.stream is self

    def begin_capture(self, mode: Any = None) -> None:
        if self.is_null:
            raise StreamCaptureError("cudaErrorStreamCaptureUnsupported: cannot capture the "
                                     "null (default) stream (emulated)")
        if _STATE["capture"] is not None:
            raise StreamCaptureError("cudaErrorIllegalState: a capture is already in progress "
                                     "(emulated)")
        _STATE["capture"] = _Capture(self)

    def end_capture(self) -> Graph:
        cap = _STATE["capture"]
        if cap is None or cap.stream is not self:
            raise StreamCaptureError("cudaErrorIllegalState: this stream is not capturing "
                                     "(emulated)")
        _STATE["capture"] = None
        if cap.invalid:
            raise StreamCaptureError(f"cudaErrorStreamCaptureInvalidated: the capture was "
                                     f"invalidated by {cap.invalid} (emulated)")
        return Graph(cap.ops)


Stream.null = Stream(null=True)


def current_stream() -> Stream:
    """``cupy.cuda.get_current_stream()``."""
    return _STATE["streams"][-1] if _STATE["streams"] else Stream.null


@contextlib.contextmanager
def using_allocator(allocator: Any = None) -> Iterator[None]:
    """``cupy.cuda.using_allocator``: allocation is not emulated, so nothing changes."""
    yield


_SKIP = frozenset("""__getattr__ __array__ __float__ __int__ __bool__ __complex__ __repr__ __str__
__format__ __len__ __iter__ __dlpack__ __init__ __new__ __class__ __hash__ """.split())


def _patch_array() -> None:
    if getattr(ndarray, "__graphnet_recorded__", False):
        return
    for name, value in list(vars(ndarray).items()):
        if name.startswith("__") and name.endswith("__") and callable(value) \
                and name not in _SKIP and not isinstance(value, type):
            setattr(ndarray, name, _recorded(value))
    getattr_ = ndarray.__getattr__
    call = _recorded(lambda self, name, *a, **k: getattr_(self, name)(*a, **k))

    def __getattr__(self: ndarray, name: str) -> Any:
        if name not in _array._METHODS:
            return getattr_(self, name)  # the AttributeError for what CuPy lacks
        return lambda *a, **k: call(self, name, *a, **k)
    ndarray.__getattr__ = __getattr__
    _kernels.ElementwiseKernel.__call__ = _recorded(_kernels.ElementwiseKernel.__call__)
    ndarray.__graphnet_recorded__ = True


def install(mods: dict) -> None:
    """Give the emulated modules ``mods`` streams, capture and graphs (then ``_counters.install``)."""
    _patch_array()
    cupy, cuda = mods["cupy"], mods["cupy.cuda"]
    cuda.Stream, cuda.get_current_stream, cuda.using_allocator = Stream, current_stream, \
        using_allocator
    cuda.graph = type(cuda)("cupy.cuda.graph")
    cuda.graph.Graph = Graph
    runtime = mods["cupy.cuda.runtime"]
    runtime.streamCaptureModeGlobal, runtime.streamCaptureModeThreadLocal, \
        runtime.streamCaptureModeRelaxed = 0, 1, 2
    if not hasattr(cuda.MemoryPool, "malloc"):
        cuda.MemoryPool.malloc = lambda self, size: None
    for name, f in list(vars(cupy).items()):
        if callable(f) and name in _array.FUNCTIONS and not getattr(f, "__recorded__", False):
            setattr(cupy, name, _recorded(f))
    for modname in ("cupyx", "cupy.linalg"):
        mod = mods[modname]
        for name, f in list(vars(mod).items()):
            if callable(f) and not name.startswith("_") and not getattr(f, "__recorded__", False):
                setattr(mod, name, _recorded(f))
    _counters.listen(_refuse)


__all__ = ["Graph", "Stream", "StreamCaptureError", "current_stream", "install",
           "using_allocator"]
