"""Data parallelism: gradients averaged over the ranks in buckets (MPI or NCCL), the
:class:`DistributedOptimizer` step, and :class:`DataParallel`, the trainer's strategy."""
from __future__ import annotations

import inspect
import time
import weakref
from typing import Any, Callable, Mapping, NoReturn, Optional, Sequence, Union

import numpy as np

from ..backends.host import to_numpy
from ..checks import flag, integer, positive_int
from ..errors import ArgumentTypeError
from ..node import Parameter
from .sampler import ShardedSampler
from .transport import _gpu_count, _MpiReducer, _nccl_available, _NcclReducer, choose_transport
from .world import DistributedError, NonFiniteGradientsError, World

BUCKET_BYTES = 25 << 20


# --- gradient buckets and their all-reduce ----------------------------------------------
# A small extra buffer, reduced after the buckets: weighted cost, weight, stop vote, ranks that
# raised in this step, ranks whose cost or gradients are not finite.
STATS = 5
COST, WEIGHT, STOP, FAILED, NONFINITE = range(STATS)


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
        self.xp = xp
        self.keyed = False  # whether the graph's gradients() takes an rng_key
        self.hooked = False  # whether it takes on_final (reports each final gradient)
        self.checked = False  # whether the ranks agreed on these parameters


def _nbytes(params: Sequence[Parameter]) -> int:
    return sum(int(np.prod(p.shape, dtype=np.int64)) * np.dtype(p.dtype).itemsize for p in params)


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
        params = getattr(optimizer, "params", None)
        if not callable(getattr(optimizer, "minimize", None)) or not isinstance(params, list):
            raise ArgumentTypeError(f"optimizer must be a graphnet optimizer (with params and "
                                    f"minimize), got {type(optimizer).__name__} {optimizer!r}")
        if not params:
            raise ValueError("optimizer has no parameters to average")
        self.world = _checked_world(world)
        self.bucket_bytes, self.overlap = _checked_options(bucket_bytes, overlap)
        world.check_parameters(params, "wrapping the optimizer in DistributedOptimizer")
        self.optimizer = optimizer
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
        weight = 1.0 if samples is None else float(integer(samples, "samples", minimum=0))

        def averaged(graph: Any, feed: Mapping[Any, Any], wrt: Sequence[Parameter],
                     key: Any) -> tuple[Any, Mapping[Parameter, Any]]:
            return self._averaged_gradients(graph, feed, wrt, key, weight)

        return self.optimizer.minimize(graph, feed, rng_key, gradients=averaged)

    def _averaged_gradients(self, graph: Any, feed: Mapping[Any, Any], wrt: Sequence[Parameter],
                            rng_key: Any, weight: float) -> tuple[Any, Mapping[Parameter, Any]]:
        """(mean cost, mean gradients) of the global batch; the gradients are this wrapper's
        own buffers, which the update may use as scratch."""
        layout = self._layout(graph, wrt)
        if not layout.checked:  # the first step on this graph: same gradients on every rank?
            self.world.check_parameters(layout.params, "the parameters of the graph being trained")
            layout.checked = True
        started = [False] * len(layout.buffers)
        waiting = list(layout.sizes)  # gradients each bucket still waits for
        stats, xp = layout.stats, layout.xp
        stats[...] = 0

        def start(k: int) -> None:
            if weight != 1.0:
                layout.buffers[k] *= weight
            stats[NONFINITE] += ~xp.isfinite(layout.buffers[k]).all()  # before the sum mixes ranks
            started[k] = True
            self._reducer.start(layout.buffers[k])

        def on_final(p: Any) -> None:  # p's gradient is final: its bucket may go
            k = layout.bucket_of[p]
            waiting[k] -= 1
            if waiting[k] == 0:
                start(k)
                self.overlapped += 1

        t0 = time.perf_counter()
        failure: Optional[BaseException] = None
        try:
            if weight > 0:
                kw = {} if rng_key is None or not layout.keyed else {"rng_key": rng_key}
                if self.overlap and layout.hooked:
                    kw["on_final"] = on_final
                cost, _ = graph.gradients(feed, wrt=layout.params, return_cost=True,
                                          into=layout.views, **kw)
                stats[COST] = cost * weight
            stats[STOP] = 1.0 if self._stop_vote() else 0.0
        except BaseException as exc:  # noqa: B036 - the other ranks must hear of it, not wait
            failure, stats[FAILED], stats[COST] = exc, 1.0, 0.0
        if weight == 0 or failure is not None:
            for k, buf in enumerate(layout.buffers):
                if not started[k]:
                    buf[...] = 0
        compute = time.perf_counter() - t0
        stats[WEIGHT] = weight
        stats[NONFINITE] += ~xp.isfinite(stats[COST])
        for k in range(len(layout.buffers)):
            if not started[k]:
                start(k)
        mine = stats[FAILED:].copy()  # this rank's flags, before the sum
        self._reducer.start(stats)
        t1 = time.perf_counter()
        self._reducer.finish(f"the gradient all-reduce (step {self.steps + 1})")
        self.comm_seconds += time.perf_counter() - t1
        self.compute_seconds += compute
        summed = to_numpy(stats)  # the one host read of the step
        if summed[FAILED] > 0 or summed[NONFINITE] > 0:
            self._refuse_step(mine, failure, raised=summed[FAILED] > 0)
        total = float(summed[WEIGHT])
        if not total > 0:
            raise DistributedError("no rank had any samples in this global batch")
        self.stop_agreed = bool(summed[STOP] > 0)
        scale = 1.0 / total
        for buf in (*layout.buffers, stats):
            buf *= scale
        return stats[COST].copy(), layout.views

    def _refuse_step(self, mine: Any, failure: Optional[BaseException], raised: bool) -> NoReturn:
        """Stop every rank at a step one of them could not take: each names the culprits, the
        failing rank re-raises its own error; no rank applies the step."""
        text = None if failure is not None else (
            "non-finite cost or gradients" if to_numpy(mine)[1] else "")
        self.world.fail_together(failure, f"step {self.steps + 1} (taken on no rank: the "
                                 "parameters are unchanged)", text,
                                 DistributedError if raised else NonFiniteGradientsError)

    def _stop_vote(self) -> bool:
        ask = self.stop_requested
        return bool(ask() if callable(ask) else ask)

    def _layout(self, graph: Any, wrt: Optional[Sequence[Parameter]] = None) -> _Buckets:
        layout = self._layouts.get(graph)
        if layout is None:
            params = list(wrt) if wrt is not None else [p for p in self.params if p in graph]
            if not params:
                raise ValueError("graph uses none of the optimizer's parameters: nothing to train")
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
        self.world = _checked_world(world)
        self.bucket_bytes, self.overlap = _checked_options(bucket_bytes, overlap)
        self.writes = world.is_root
        self.optimizer: Optional[DistributedOptimizer] = None

    def attach(self, trainer: Any) -> None:
        """Wrap the trainer's optimizer, give every rank rank 0's parameters, quiet other ranks."""
        self.optimizer = DistributedOptimizer(trainer.optimizer, self.world, self.bucket_bytes,
                                              self.overlap)
        self.world.broadcast_parameters(trainer.model.named_arrays().values())
        trainer.progress = trainer.progress and self.world.is_root

    def sampler(self, batch_size: int) -> ShardedSampler:
        """This rank's rows of each global batch (the ranks check, at the epoch's first batch,
        that they split the same number of samples the same way)."""
        return _AgreedSampler(batch_size, self.world)

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


class _AgreedSampler(ShardedSampler):
    """A ShardedSampler whose first ``rows_at`` checks that every rank has the same epoch: a rank
    with other data would take another number of steps and leave the rest waiting."""

    def __init__(self, batch_size: int, world: World) -> None:
        super().__init__(batch_size, world.rank, world.size)
        self.world, self.agreed = world, False

    def rows_at(self, permutation: Any, start: int) -> tuple[Any, int]:
        if not self.agreed:
            mine = {"samples": int(permutation.shape[0]), "batch_size": self.batch_size,
                    "from sample": int(start)}
            epochs = self.world.disagreement(mine, "comparing the ranks' epochs")
            if epochs is not None:
                sides = "; ".join(f"rank {r}: " + ", ".join(f"{k} {v}" for k, v in e.items())
                                  for r, e in enumerate(epochs))
                raise DistributedError(f"the ranks' epochs differ (each rank must be given the "
                                       f"same training data and batch size): {sides}")
            self.agreed = True
        return super().rows_at(permutation, start)


def _checked_world(world: Any) -> World:
    if not isinstance(world, World):
        raise ArgumentTypeError(f"world must be a graphnet.distributed.World (from "
                                f"distributed.init()), got {type(world).__name__} {world!r}")
    return world


def _checked_options(bucket_bytes: Any, overlap: Any) -> tuple[int, bool]:
    return positive_int(bucket_bytes, "bucket_bytes"), flag(overlap, "overlap")


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
