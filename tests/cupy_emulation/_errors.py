"""The error classes CuPy raises when CUDA cannot allocate, emulated (names, modules, messages).

A failed allocation reaches graphnet in three forms on a GPU: CuPy's pool
(``cupy.cuda.memory.OutOfMemoryError``, a MemoryError), the CUDA runtime
(``CUDARuntimeError``, status 2, "cudaErrorMemoryAllocation: out of memory", a RuntimeError)
and a CUDA library's own workspace (``CUBLASError``, status 3, "CUBLAS_STATUS_ALLOC_FAILED",
a RuntimeError). ``set_allocation_limit(n, error=...)`` picks which one an allocation over
the limit raises.
"""
from __future__ import annotations


class OutOfMemoryError(MemoryError):
    """Stands in for ``cupy.cuda.memory.OutOfMemoryError``."""


class CUDARuntimeError(RuntimeError):
    """Stands in for ``cupy_backends.cuda.api.runtime.CUDARuntimeError``."""

    _NAMES = {2: "cudaErrorMemoryAllocation: out of memory",
              700: "cudaErrorIllegalAddress: an illegal memory access was encountered"}

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(self._NAMES.get(status, f"cudaError{status}: unknown error"))


class CUBLASError(RuntimeError):
    """Stands in for ``cupy_backends.cuda.libs.cublas.CUBLASError``."""

    _NAMES = {3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE"}

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(self._NAMES.get(status, f"CUBLAS_STATUS_{status}"))


CUDARuntimeError.__module__ = "cupy_backends.cuda.api.runtime"
CUBLASError.__module__ = "cupy_backends.cuda.libs.cublas"
OutOfMemoryError.__module__ = "cupy.cuda.memory"


def allocation_error(kind: str, nbytes: int, limit: int) -> Exception:
    """The error a ``kind`` ("pool", "runtime" or "cublas") allocation over ``limit`` raises."""
    if kind == "runtime":
        return CUDARuntimeError(2)
    if kind == "cublas":
        return CUBLASError(3)
    return OutOfMemoryError(f"Out of memory allocating {nbytes:,} bytes (emulated limit "
                            f"{limit:,} bytes)")


KINDS = ("pool", "runtime", "cublas")
