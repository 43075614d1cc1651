"""Data-parallel training over MPI processes: one model replica per rank, gradients averaged.

Run under ``mpiexec -n N``; every rank builds the same model, then::

    world = distributed.init()                           # rank, size, local rank (GPU choice)
    world.check_config(config)                           # every rank the same configuration
    world.broadcast_parameters(model.named_arrays().values())
    opt = distributed.DistributedOptimizer(optim.SGD(model.parameters()), world)
    opt.minimize(graph, feed_of_this_ranks_rows, samples=len(rows))

Gradients travel in a few large contiguous buckets (the graph writes them there
directly), summed with MPI (host buffers) or NCCL (each rank its own GPU); every
collective has a deadline, after which all ranks are aborted with a message rather
than left hanging on a dead peer.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
import weakref
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from .backends.host import to_numpy
from .node import Parameter

INSTALL_HINT = ('pip install mpi4py mpich  (or pip install -e ".[mpi]" from a graphnet checkout; '
                'an mpi4py built against a system MPI works too)')
LAUNCH_HINT = "mpiexec -n 2 python examples/mnist/train.py --distributed"
BUCKET_BYTES = 25 << 20
TIMEOUT_ENV = "GRAPHNET_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
EXIT_ABORT = 3
# MPI_Abort can end the launcher before it has forwarded what this rank last wrote (seen with
# MPICH's Hydra under load: the whole stderr lost); waiting this long first lets it arrive.
ABORT_GRACE_SECONDS = 1.0
SPIN_SECONDS = 2e-3  # poll (yielding the core) this long before sleeping between polls
# Variables the common launchers set in every rank's environment (MPICH/Hydra, Open MPI, PMIx).
LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class DistributedError(RuntimeError):
    """MPI is missing, the process was not started by mpiexec, or the ranks disagree."""


def launched_by_mpi(env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether this process was started by an MPI launcher (mpiexec/mpirun)."""
    env = os.environ if env is None else env
    return any(k in env for k in LAUNCHER_ENV)


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"distributed training needs mpi4py and an MPI library ({exc}); "
                               f"install them with: {INSTALL_HINT}") from None
    return MPI


def _timeout_from_env() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


_world: Optional["World"] = None


def init(timeout: Optional[float] = None, require_launcher: bool = True) -> "World":
    """The world of ranks this process belongs to (created on the first call).

    ``timeout`` (seconds, default ``$GRAPHNET_DIST_TIMEOUT`` or 600) bounds every
    collective. With the CuPy backend selected (``GRAPHNET_BACKEND=cupy``) the rank
    takes GPU ``local_rank % devices``: call this before the backend is first used.
    """
    global _world
    if _world is not None:
        return _world
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if require_launcher and not launched_by_mpi():
        raise DistributedError("distributed training must be started by an MPI launcher, "
                               f"e.g. {LAUNCH_HINT} (found none of {', '.join(LAUNCHER_ENV)} "
                               f"in the environment); to install MPI: {INSTALL_HINT}")
    MPI = _import_mpi()
    _world = World(MPI, MPI.COMM_WORLD, timeout if timeout is not None else _timeout_from_env())
    if os.environ.get("GRAPHNET_BACKEND", "").strip().lower() == "cupy":
        _world.device = _select_gpu(_world.local_rank)
    return _world


def _select_gpu(local_rank: int) -> Optional[int]:
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy or no driver: the backend reports that itself when created
        return None
    if count <= 0:
        return None
    device = local_rank % count
    cupy.cuda.Device(device).use()
    return device


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


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank's part when ``n`` items are split into ``size`` contiguous parts.

    Parts differ in length by at most one, the first ones taking the extra items.
    """
    if size <= 0 or not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, size) with size > 0, got rank={rank}, size={size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


class ShardedSampler:
    """This rank's rows of each global batch of an epoch's (global) permutation.

    A global batch is ``batch_size * size`` consecutive entries of the permutation,
    the same batches a single process with that batch size would take; each rank
    takes one contiguous part, so the ranks' parts are disjoint and cover the epoch.
    """

    def __init__(self, batch_size: int, rank: int, size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        shard_bounds(0, rank, size)  # validates rank and size
        self.batch_size, self.rank, self.size = int(batch_size), int(rank), int(size)
        self.global_batch = self.batch_size * self.size

    def batches(self, n: int) -> int:
        """Global batches in an epoch of ``n`` samples."""
        return -(-n // self.global_batch)

    def rows_at(self, permutation: Any, start: int) -> tuple[Any, int]:
        """(this rank's rows, the position of its first row in the epoch) of the global
        batch beginning at sample ``start`` (the position keys e.g. this rank's dropout)."""
        batch = permutation[start:start + self.global_batch]
        lo, hi = shard_bounds(int(batch.shape[0]), self.rank, self.size)
        return batch[lo:hi], start + lo


def poll_until(done: Callable[[], bool], timeout: float) -> bool:
    """Call ``done()`` until it is true (True) or ``timeout`` seconds have passed (False).

    For ``SPIN_SECONDS`` it polls giving the core away between calls (``sched_yield``:
    no sleep latency when the peers are there, no core stolen when they wait for it),
    then sleeps between polls, 50 us doubling to 1 ms.
    """
    start = time.monotonic()
    spin_until, deadline, pause = start + SPIN_SECONDS, start + timeout, 5e-5
    while not done():
        now = time.monotonic()
        if now < spin_until:
            os.sched_yield()
            continue
        if now > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)
    return True


class World:
    """This process's place among the ranks, and collectives that give up after ``timeout``."""

    def __init__(self, MPI: Any, comm: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.MPI, self.comm, self.timeout = MPI, comm, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.host = MPI.Get_processor_name()
        self.device: Optional[int] = None

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    def describe(self) -> str:
        gpu = "" if self.device is None else f", GPU {self.device}"
        return (f"rank {self.rank} of {self.size} (local {self.local_rank} of {self.local_size} "
                f"on {self.host}{gpu})")

    # --- waiting with a deadline ----------------------------------------------------
    def wait(self, requests: Sequence[Any], what: str) -> None:
        """Complete MPI requests, or abort every rank after ``timeout`` seconds."""
        requests = list(requests)
        test = self.MPI.Request.Testall
        if not poll_until(lambda: test(requests), self.timeout):
            self.abort(f"waited {self.timeout:g} s for {what}: another rank died or hangs")

    def abort(self, message: str) -> None:
        """Print why on stderr and end every rank (MPI_Abort): a dead peer never hangs the rest."""
        sys.stderr.write(f"graphnet.distributed: rank {self.rank} of {self.size}: {message}; "
                         f"aborting all ranks (limit: {TIMEOUT_ENV} or init(timeout=...))\n")
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.Abort(EXIT_ABORT)

    # --- host collectives -----------------------------------------------------------
    def barrier(self, what: str = "a barrier") -> None:
        self.wait([self.comm.Ibarrier()], what)

    def allreduce_(self, buf: np.ndarray, what: str, op: Any = None) -> np.ndarray:
        """Sum (or ``op``) a host array across ranks, in place."""
        op = self.MPI.SUM if op is None else op
        self.wait([self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=op)], what)
        return buf

    def broadcast_(self, buf: np.ndarray, what: str, root: int = 0) -> np.ndarray:
        """Overwrite a contiguous host array with rank ``root``'s, in place."""
        self.wait([self.comm.Ibcast(buf, root=root)], what)
        return buf

    def broadcast_array(self, x: Any, what: str = "an array") -> np.ndarray:
        """Rank 0's host copy of ``x`` (any backend's array; shape and dtype must agree)."""
        host = np.ascontiguousarray(to_numpy(x)).copy()
        return self.broadcast_(host, what)

    def broadcast_parameters(self, params: Iterable[Parameter]) -> None:
        """Give every rank rank 0's parameter values (packed, one broadcast per dtype)."""
        params = list(params)
        for dtype, group in _group_by_dtype(params).items():
            flat = np.concatenate([to_numpy(p.value).ravel() for p in group])
            self.broadcast_(flat, f"the parameter broadcast ({len(group)} {dtype} arrays)")
            if not self.is_root:
                _unpack(flat, group)

    def average_(self, params: Iterable[Parameter], what: str = "averaging statistics") -> None:
        """Set each (non-trainable) parameter to its mean over the ranks, e.g. BatchNorm statistics."""
        params = [p for p in params if np.dtype(p.dtype).kind == "f"]
        for dtype, group in _group_by_dtype(params).items():
            flat = np.concatenate([to_numpy(p.value).ravel() for p in group])
            self.allreduce_(flat, what)
            flat /= self.size
            _unpack(flat, group)

    def reduce_mean(self, values: Mapping[str, float], weight: float = 1.0) -> dict[str, float]:
        """Weighted mean of each named scalar over the ranks (weight: e.g. the rank's sample count)."""
        keys = sorted(values)
        buf = np.array([float(values[k]) * weight for k in keys] + [float(weight)], np.float64)
        self.allreduce_(buf, f"reducing metrics {keys}")
        if buf[-1] <= 0:
            raise DistributedError(f"reduce_mean: the weights sum to {buf[-1]} over the ranks")
        return {k: float(buf[i] / buf[-1]) for i, k in enumerate(keys)}

    def any(self, flag: bool, what: str = "a vote") -> bool:
        """Whether ``flag`` is true on any rank."""
        buf = np.array([1 if flag else 0], np.int32)
        return bool(self.allreduce_(buf, what, self.MPI.MAX)[0])

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raise DistributedError naming the ranks and keys that differ from rank 0's config."""
        text = json.dumps(config, sort_keys=True, default=str)
        digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
        table = np.empty((self.size, digest.size), np.uint8)
        self.wait([self.comm.Iallgather(digest, table)], "comparing configurations")
        bad = [r for r in range(self.size) if not np.array_equal(table[r], table[0])]
        if not bad:
            return
        configs = self.comm.allgather(json.loads(text))  # every rank is alive: the gather finished
        lines = [f"rank {r} differs from rank 0 in {_differences(configs[0], configs[r])}" for r in bad]
        raise DistributedError("the ranks disagree on the configuration: " + "; ".join(lines))

    def evaluate(self, model: Any, x: Any, y: Any, prepared: bool = True) -> dict[str, float]:
        """``model.evaluate`` over all of ``x``, each rank taking a contiguous part."""
        lo, hi = shard_bounds(int(x.shape[0]), self.rank, self.size)
        part = (model.evaluate(x[lo:hi], y[lo:hi], prepared=prepared) if hi > lo
                else {"accuracy": 0.0, "loss": 0.0})
        return self.reduce_mean(part, weight=hi - lo)


def _differences(a: Any, b: Any) -> str:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return f"the whole configuration ({a!r} vs {b!r})"
    keys = sorted(set(a) | set(b))
    diffs = [f"{k} ({a.get(k, '<missing>')!r} vs {b.get(k, '<missing>')!r})"
             for k in keys if a.get(k, "<missing>") != b.get(k, "<missing>")]
    return ", ".join(diffs)


def _group_by_dtype(params: Sequence[Parameter]) -> dict[str, list[Parameter]]:
    groups: dict[str, list[Parameter]] = {}
    for p in params:
        groups.setdefault(str(np.dtype(p.dtype)), []).append(p)
    return groups


def _unpack(flat: np.ndarray, params: Sequence[Parameter]) -> None:
    offset = 0
    for p in params:
        n = int(np.prod(p.shape, dtype=np.int64))
        p.value = flat[offset:offset + n].reshape(p.shape).copy()
        offset += n


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
    """Wraps an Optimizer: this rank's gradients, their mean over all ranks, then its update.

    The mean is over the global batch (each rank's gradient weighted by its ``samples``),
    so N ranks with batch B step like one process with batch N*B. With ``overlap`` (and
    a graph whose ``gradients`` takes ``on_final``), each bucket's all-reduce starts as
    soon as backward has finished its gradients, while backward goes on; the results
    are the same either way. Attributes not defined here (``lr``, ``steps``,
    ``host_state``...) are the wrapped optimizer's.
    """

    def __init__(self, optimizer: Any, world: World, bucket_bytes: int = BUCKET_BYTES,
                 overlap: bool = True) -> None:
        if isinstance(optimizer, DistributedOptimizer):
            raise ValueError("optimizer is already a DistributedOptimizer")
        if not bucket_bytes > 0:
            raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
        if not isinstance(overlap, bool):
            raise ValueError(f"overlap must be True or False, got {overlap!r}")
        object.__setattr__(self, "optimizer", optimizer)
        self.world, self.bucket_bytes, self.overlap = world, int(bucket_bytes), overlap
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
        self.stop_requested = False  # set before a step: any rank's True makes stop_agreed True
        self.stop_agreed = False
        self.comm_seconds = 0.0  # time spent waiting for the all-reduce, for measurements
        self.compute_seconds = 0.0  # time spent in forward and backward
        self.overlapped = 0  # buckets whose all-reduce began during backward

    def __getattr__(self, name: str) -> Any:
        if name == "optimizer":  # not set yet (e.g. while unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "lr":  # the Trainer's schedule sets the wrapped optimizer's rate
            self.optimizer.lr = value
        else:
            object.__setattr__(self, name, value)

    def minimize(self, graph: Any, feed: Mapping[Any, Any], rng_key: Any = None,
                 samples: Optional[int] = None) -> Any:
        """One step on the global batch; returns its mean cost (the same on every rank).

        ``samples``: rows in this rank's part of the batch (None: all ranks weigh the
        same); with 0 this rank runs no graph and contributes nothing. ``rng_key`` goes
        to ``graph.gradients`` where the engine takes one; give each rank its own (e.g.
        with the rank's first sample) so that dropout masks differ between ranks.
        """
        layout = self._layout(graph)
        weight = 1.0 if samples is None else float(samples)
        if weight < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
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
        layout.stats[2] = 1.0 if self.stop_requested else 0.0
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
        cost = layout.stats[0].copy()
        # The views are this wrapper's own buffers: the update may use them as scratch.
        self.optimizer._apply(layout.views, True)
        return cost

    def _layout(self, graph: Any) -> _Buckets:
        layout = self._layouts.get(graph)
        if layout is None:
            params = [p for p in self.optimizer.params if p in graph]
            layout = self._layouts[graph] = _Buckets(params, params[0].backend.xp, self.bucket_bytes)
            accepts = inspect.signature(graph.gradients).parameters
            layout.keyed, layout.hooked = "rng_key" in accepts, "on_final" in accepts
        return layout

    def buckets(self, graph: Any) -> list[int]:
        """Byte sizes of the buckets for ``graph`` (for reports and tests)."""
        return [int(b.nbytes) for b in self._layout(graph).buffers]


def attach(trainer: Any, world: World, bucket_bytes: int = BUCKET_BYTES, overlap: bool = True) -> None:
    """Make a Trainer data-parallel: rank 0's parameters everywhere, the optimizer's gradients
    averaged over the ranks, each rank taking its part of every global batch, and progress
    shown by rank 0 only."""
    if not isinstance(trainer.optimizer, DistributedOptimizer):
        trainer.optimizer = DistributedOptimizer(trainer.optimizer, world, bucket_bytes, overlap)
    world.broadcast_parameters(trainer.model.named_arrays().values())
    trainer.progress = trainer.progress and world.is_root


def from_flag(flag: Optional[bool]) -> Optional[World]:
    """The world for a command line's ``--distributed`` (None: on when started by mpiexec).

    Ranks other than 0 get their standard output silenced (errors still reach stderr).
    """
    if flag is False or (flag is None and not launched_by_mpi()):
        return None
    world = init()
    if not world.is_root:
        sys.stdout = open(os.devnull, "w")
    return world


class failure_ends_all:
    """A block that, if it raises or returns an exit code other than 0 or 130 (Ctrl-C, which
    all ranks agree on), ends every rank at once instead of leaving them to time out."""

    def __init__(self, world: World) -> None:
        self.world = world

    def __enter__(self) -> "failure_ends_all":
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None or self.world.size == 1 or issubclass(kind, (KeyboardInterrupt, SystemExit)):
            return
        import traceback
        traceback.print_exception(kind, exc, tb)
        self.world.abort(f"{kind.__name__} on this rank")

    def check(self, code: int) -> int:
        """``code``, after ending every rank if it says this rank failed on its own."""
        if code not in (0, 130) and self.world.size > 1:
            self.world.abort(f"this rank stopped with exit code {code}")
        return code


def describe_training(trainer: Any) -> str:
    """One line saying how a Trainer runs across the ranks (its world, global batch, transport)."""
    opt = trainer.optimizer
    size = trainer.dist.size
    return (f"data-parallel on {size} ranks: global batch {trainer.batch_size * size} "
            f"= {trainer.batch_size} per rank x {size}; {opt.transport}: {opt.reason}")


def resume_batch(batch: int, saved_global_batch: int, global_batch: int, source: str = "checkpoint") -> int:
    """The batch to resume at when a checkpoint taken after ``batch`` global batches of
    ``saved_global_batch`` samples is continued with global batches of ``global_batch``."""
    samples = batch * saved_global_batch
    if samples % global_batch:
        raise ValueError(f"{source}: stopped {samples} samples into the epoch, which is not a whole "
                         f"number of global batches of {global_batch} (per-rank batch x ranks); "
                         f"resume with a global batch dividing {samples}, e.g. the original "
                         f"{saved_global_batch}")
    return samples // global_batch


__all__ = ["attach", "from_flag", "failure_ends_all", "describe_training", "resume_batch", "init", "World", "DistributedOptimizer", "ShardedSampler", "shard_bounds",
           "choose_transport", "launched_by_mpi", "DistributedError", "INSTALL_HINT", "BUCKET_BYTES"]
