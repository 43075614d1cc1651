"""Data parallelism: gradients averaged over the ranks in buckets (MPI or NCCL), the
:class:`DistributedOptimizer` step, and :class:`DataParallel`, the trainer's strategy."""
from __future__ import annotations

import inspect
import time
import weakref
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from ..node import Parameter
from .sampler import ShardedSampler
from .world import DistributedError, World, poll_until

BUCKET_BYTES = 25 << 20


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


# --- gradient buckets and their all-reduce ----------------------------------------------
STATS = 3  # a small extra buffer, reduced after the buckets: weighted cost, weight, stop vote


class _Buckets:
    """Flat per-dtype buffers of at most ``bucket_bytes`` holding every parameter's gradient.

    ``views[p]`` is ``p``'s gradient as a view into its bucket, so the graph writes the
    gradients straight into the buffers that are reduced. Later layers come first: in
    backward their gradients are complete first (``bucket_of[p]`` says which bucket).
    """

    def __init__(self, params: Sequence[Parameter], xp: Any, bucket_bytes: int) -> None:
        self.params = tuple(params)
        plan: list[list[Parameter]] = []
        for p in reversed(self.params):
            last = plan[-1] if plan else None
            if (last is None or last[0].dtype != p.dtype
                    or _nbytes(last) + _nbytes([p]) > bucket_bytes):
                plan.append([p])
            else:
                last.append(p)
        self.buffers: list[Any] = []
        self.views: dict[Parameter, Any] = {}
        self.bucket_of: dict[Parameter, int] = {}
        self.sizes = [len(group) for group in plan]  # parameters per bucket
        for k, group in enumerate(plan):
            flat = xp.zeros(sum(int(np.prod(p.shape, dtype=np.int64)) for p in group),
                            dtype=group[0].dtype)
            offset = 0
            for p in group:
                n = int(np.prod(p.shape, dtype=np.int64))
                self.views[p] = flat[offset:offset + n].reshape(p.shape)
                self.bucket_of[p] = k
                offset += n
            self.buffers.append(flat)
        self.stats = xp.zeros(STATS, dtype=plan[-1][0].dtype)
        self.keyed = False  # whether the graph's gradients() takes an rng_key
        self.hooked = False  # whether it takes on_final (reports each final gradient)


def _nbytes(params: Sequence[Parameter]) -> int:
    return sum(int(np.prod(p.shape, dtype=np.int64)) * np.dtype(p.dtype).itemsize for p in params)


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
        world.broadcast_(uid, "the NCCL unique id")
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


class DistributedOptimizer:
    """An Optimizer's step on this rank's gradients averaged over all ranks.

    The mean is over the global batch (each rank's gradient weighted by its ``samples``),
    so N ranks with batch B step like one process with batch N*B. With ``overlap`` (and
    a graph whose ``gradients`` takes ``on_final``), each bucket's all-reduce starts as
    soon as backward has finished its gradients, while backward goes on; the results
    are the same either way. The step is the wrapped optimizer's own ``minimize``, handed
    the averaged gradients; ``lr``, ``steps`` and ``params`` are the wrapped optimizer's.
    """

    def __init__(self, optimizer: Any, world: World, bucket_bytes: int = BUCKET_BYTES,
                 overlap: bool = True) -> None:
        if isinstance(optimizer, DistributedOptimizer):
            raise ValueError("optimizer is already a DistributedOptimizer")
        if not bucket_bytes > 0:
            raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
        if not isinstance(overlap, bool):
            raise ValueError(f"overlap must be True or False, got {overlap!r}")
        self.optimizer, self.world = optimizer, world
        self.bucket_bytes, self.overlap = int(bucket_bytes), overlap
        b = optimizer.params[0].backend
        nccl_ok = b.name == "cupy" and _nccl_available()
        # Every rank must take the same path: NCCL only if all ranks can.
        agreed = not world.any(not (nccl_ok and _gpu_count() >= world.local_size), "choosing NCCL")
        self.transport, self.reason = choose_transport(
            b.name, world.local_size, world.local_size if agreed else 0, nccl_ok and agreed)
        if self.transport == "mpi" and b.name == "cupy" and nccl_ok and not agreed:
            self.reason = "not every rank has NCCL and a GPU of its own: MPI through host copies"
        self._reducer = _NcclReducer(world) if self.transport == "nccl" else _MpiReducer(world)
        self._layouts: "weakref.WeakKeyDictionary[Any, _Buckets]" = weakref.WeakKeyDictionary()
        # Read when the ranks vote (after this rank's gradients): any rank's True makes
        # stop_agreed True on every rank. A callable is asked at that moment.
        self.stop_requested: Union[bool, Callable[[], bool]] = False
        self.stop_agreed = False
        self.comm_seconds = 0.0  # time spent waiting for the all-reduce, for measurements
        self.compute_seconds = 0.0  # time spent in forward and backward
        self.overlapped = 0  # buckets whose all-reduce began during backward

    @property
    def lr(self) -> float:
        """The wrapped optimizer's learning rate."""
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    @property
    def steps(self) -> int:
        """Steps the wrapped optimizer has taken."""
        return self.optimizer.steps

    @property
    def params(self) -> list[Parameter]:
        """The wrapped optimizer's parameters."""
        return self.optimizer.params

    def minimize(self, graph: Any, feed: Mapping[Any, Any], rng_key: Any = None,
                 samples: Optional[int] = None) -> Any:
        """One step on the global batch; returns its mean cost (the same on every rank).

        ``samples``: rows in this rank's part of the batch (None: all ranks weigh the
        same); with 0 this rank runs no graph and contributes nothing. ``rng_key`` goes
        to ``graph.gradients`` where the engine takes one; give each rank its own (e.g.
        with the rank's first sample) so that dropout masks differ between ranks.
        """
        weight = 1.0 if samples is None else float(samples)
        if weight < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")

        def averaged(graph: Any, feed: Mapping[Any, Any], wrt: Sequence[Parameter],
                     key: Any) -> tuple[Any, Mapping[Parameter, Any]]:
            return self._averaged_gradients(graph, feed, wrt, key, weight)

        return self.optimizer.minimize(graph, feed, rng_key, gradients=averaged)

    def _averaged_gradients(self, graph: Any, feed: Mapping[Any, Any], wrt: Sequence[Parameter],
                            rng_key: Any, weight: float) -> tuple[Any, Mapping[Parameter, Any]]:
        """(mean cost, mean gradients) of the global batch; the gradients are this wrapper's
        own buffers, which the update may use as scratch."""
        layout = self._layout(graph, wrt)
        started = [False] * len(layout.buffers)
        waiting = list(layout.sizes)  # gradients each bucket still waits for

        def start(k: int) -> None:
            if weight != 1.0:
                layout.buffers[k] *= weight
            started[k] = True
            self._reducer.start(layout.buffers[k])

        def on_final(p: Any) -> None:  # p's gradient is final: its bucket may go
            k = layout.bucket_of[p]
            waiting[k] -= 1
            if waiting[k] == 0:
                start(k)
                self.overlapped += 1

        t0 = time.perf_counter()
        if weight > 0:
            kw = {} if rng_key is None or not layout.keyed else {"rng_key": rng_key}
            if self.overlap and layout.hooked:
                kw["on_final"] = on_final
            cost, _ = graph.gradients(feed, wrt=layout.params, return_cost=True,
                                      into=layout.views, **kw)
            layout.stats[0] = cost * weight
        else:
            for buf in layout.buffers:
                buf[...] = 0
        compute = time.perf_counter() - t0
        layout.stats[1] = weight
        layout.stats[2] = 1.0 if self._stop_vote() else 0.0
        for k in range(len(layout.buffers)):
            if not started[k]:
                start(k)
        self._reducer.start(layout.stats)
        t1 = time.perf_counter()
        self._reducer.finish(f"the gradient all-reduce (step {self.steps + 1})")
        self.comm_seconds += time.perf_counter() - t1
        self.compute_seconds += compute
        total = float(layout.stats[1])
        if not total > 0:
            raise DistributedError("no rank had any samples in this global batch")
        self.stop_agreed = bool(float(layout.stats[2]) > 0)
        scale = 1.0 / total
        for buf in (*layout.buffers, layout.stats):
            buf *= scale
        return layout.stats[0].copy(), layout.views

    def _stop_vote(self) -> bool:
        ask = self.stop_requested
        return bool(ask() if callable(ask) else ask)

    def _layout(self, graph: Any, wrt: Optional[Sequence[Parameter]] = None) -> _Buckets:
        layout = self._layouts.get(graph)
        if layout is None:
            params = list(wrt) if wrt is not None else [p for p in self.params if p in graph]
            layout = self._layouts[graph] = _Buckets(params, params[0].backend.xp, self.bucket_bytes)
            accepts = inspect.signature(graph.gradients).parameters
            layout.keyed, layout.hooked = "rng_key" in accepts, "on_final" in accepts
        return layout

    def buckets(self, graph: Any) -> list[int]:
        """Byte sizes of the buckets for ``graph`` (for reports and tests)."""
        return [int(b.nbytes) for b in self._layout(graph).buffers]


class DataParallel:
    """The trainer's strategy over MPI ranks: rank 0's parameters everywhere, each rank its
    part of every global batch (``batch_size`` x ranks), gradients and metrics averaged,
    Ctrl-C on any rank agreed on at the next step, and only rank 0 writing or showing progress."""

    def __init__(self, world: World, bucket_bytes: int = BUCKET_BYTES, overlap: bool = True) -> None:
        self.world, self.bucket_bytes, self.overlap = world, bucket_bytes, overlap
        self.writes = world.is_root
        self.optimizer: Optional[DistributedOptimizer] = None

    def attach(self, trainer: Any) -> None:
        """Wrap the trainer's optimizer, give every rank rank 0's parameters, quiet other ranks."""
        self.optimizer = DistributedOptimizer(trainer.optimizer, self.world, self.bucket_bytes,
                                              self.overlap)
        self.world.broadcast_parameters(trainer.model.named_arrays().values())
        trainer.progress = trainer.progress and self.world.is_root

    def sampler(self, batch_size: int) -> ShardedSampler:
        """This rank's rows of each global batch."""
        return ShardedSampler(batch_size, self.world.rank, self.world.size)

    def step(self, optimizer: Any, graph: Any, feed: Mapping[Any, Any], rng_key: Any,
             samples: int, stop_requested: Callable[[], bool]) -> tuple[Any, bool]:
        """One step on the global batch; the ranks vote on stopping in the same all-reduce."""
        dopt = self.optimizer
        if dopt is None or dopt.optimizer is not optimizer:
            raise DistributedError("DataParallel.step: attach the strategy to the trainer first "
                                   "(Trainer(..., strategy=DataParallel(world)) does)")
        dopt.stop_requested = stop_requested
        cost = dopt.minimize(graph, feed, rng_key=rng_key, samples=samples)
        return cost, dopt.stop_agreed

    def evaluate(self, model: Any, x: Any, y: Any) -> dict[str, float]:
        """Metrics over all of ``x``, each rank a part, reduced."""
        return self.world.evaluate(model, x, y)

    def end_epoch(self, model: Any) -> None:
        """Non-trainable arrays (e.g. BatchNorm statistics) become their mean over the ranks."""
        self.world.average_([p for p in model.named_arrays().values() if not p.trainable])

    def describe(self, batch_size: int) -> str:
        """One line: the world, the global batch and the transport."""
        size, opt = self.world.size, self.optimizer
        how = f"; {opt.transport}: {opt.reason}" if opt is not None else ""
        return (f"data-parallel on {size} ranks: global batch {batch_size * size} "
                f"= {batch_size} per rank x {size}{how}")


def attach(trainer: Any, world: World, bucket_bytes: int = BUCKET_BYTES, overlap: bool = True) -> None:
    """Deprecated: make a Trainer data-parallel; give ``strategy=DataParallel(world)`` instead."""
    import warnings
    warnings.warn("distributed.attach is deprecated: Trainer(..., strategy=DataParallel(world))",
                  DeprecationWarning, stacklevel=2)
    trainer.strategy = DataParallel(world, bucket_bytes, overlap)
    trainer.strategy.attach(trainer)


def _data_parallel(world: World, **options: Any) -> DataParallel:
    """The trainer's :class:`DataParallel` strategy over ``world``."""
    return DataParallel(world, **options)


# ``world.data_parallel()``: given to World here, so that world.py never imports this module
# (the strategy builds on the world, not the other way round) and the trainer, which knows
# no data parallelism, can turn its deprecated ``distributed=world`` into the strategy.
World.data_parallel = _data_parallel


__all__ = ["DistributedOptimizer", "DataParallel", "attach", "choose_transport", "BUCKET_BYTES"]
