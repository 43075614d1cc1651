"""How gradient buckets are summed across the ranks: MPI (host buffers) or NCCL (each rank its
own GPU), every wait bounded by the world's deadline."""
from __future__ import annotations

from typing import Any

import numpy as np

from .world import World, poll_until


def choose_transport(backend_name: str, local_size: int, gpu_count: int,
                     nccl_available: bool) -> tuple[str, str]:
    """``("nccl" | "mpi", reason)``: NCCL only on CuPy with a GPU of its own for every local rank."""
    if backend_name != "cupy":
        return "mpi", f"{backend_name} arrays live on the host: MPI all-reduce"
    if not nccl_available:
        return "mpi", ("NCCL is not available to CuPy (pip install nvidia-nccl-cu12): "
                       "MPI all-reduce through host copies")
    if gpu_count < local_size:
        return "mpi", (f"{local_size} ranks share {gpu_count} GPU(s) on this host: "
                       "MPI all-reduce through host copies")
    return "nccl", f"NCCL all-reduce on the GPUs ({local_size} rank(s) per host, one GPU each)"


def _nccl_available() -> bool:
    try:
        from cupy.cuda import nccl
    except Exception:
        return False
    return bool(getattr(nccl, "available", True))


def _gpu_count() -> int:
    try:
        import cupy
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


class _MpiReducer:
    """Sums buckets across ranks with non-blocking MPI all-reduces (host staging for CuPy)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._staging: dict[int, np.ndarray] = {}
        self._pending: list[tuple[Any, np.ndarray, Any]] = []

    def start(self, buf: Any) -> None:
        """Begin summing ``buf`` in place; earlier ones are nudged on (MPI progresses in calls)."""
        MPI = self.world.MPI
        if self._pending:
            MPI.Request.Testall([r for _, _, r in self._pending])
        host = self._host(buf)
        self._pending.append((buf, host, self.world.comm.Iallreduce(MPI.IN_PLACE, host, op=MPI.SUM)))

    def finish(self, what: str) -> None:
        """Complete every started sum, in order, each copied back as it completes."""
        pending, self._pending = self._pending, []
        for k, (buf, host, req) in enumerate(pending):
            self.world.wait([req], f"{what} (buffer {k + 1} of {len(pending)})")
            if host is not buf:
                buf.set(host)

    def _host(self, buf: Any) -> np.ndarray:
        if isinstance(buf, np.ndarray):
            return buf
        host = self._staging.get(id(buf))
        if host is None or host.shape != buf.shape:
            host = self._staging[id(buf)] = np.empty(buf.shape, buf.dtype)
        buf.get(out=host)
        return host


class _NcclReducer:
    """Sums CuPy buckets across ranks with NCCL on the current stream (each rank its own GPU)."""

    def __init__(self, world: World) -> None:
        import cupy
        from cupy.cuda import nccl
        self.world, self.cupy, self.nccl = world, cupy, nccl
        uid = np.zeros(128, np.int64)  # ncclUniqueId: 128 bytes, as CuPy's tuple of ints
        if world.is_root:
            uid[:] = nccl.get_unique_id()
        world._broadcast(uid, "the NCCL unique id")
        self.comm = nccl.NcclCommunicator(world.size, tuple(int(v) for v in uid), world.rank)
        self._types = {np.dtype(np.float16): nccl.NCCL_FLOAT16,
                       np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def start(self, buf: Any) -> None:
        """Queue the sum of ``buf`` on the current stream, after the kernels that wrote it."""
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._types[np.dtype(buf.dtype)],
                            self.nccl.NCCL_SUM, stream.ptr)

    def finish(self, what: str) -> None:
        done = self.cupy.cuda.Event(disable_timing=True)
        done.record(self.cupy.cuda.get_current_stream())
        if not poll_until(lambda: done.done, self.world.timeout):
            self.comm.abort()
            self.world.abort(f"waited {self.world.timeout:g} s for {what} over NCCL: "
                             "another rank died or hangs")


__all__ = ["choose_transport"]
