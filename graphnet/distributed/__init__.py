"""Data-parallel training over MPI processes: one model replica per rank, gradients averaged.

Run under ``mpiexec -n N``; every rank builds the same model, then::

    world = distributed.init()                           # rank, size, local rank (GPU choice)
    world.check_config(config)                           # every rank the same configuration
    world.broadcast_parameters(model.named_arrays().values())
    opt = distributed.DistributedOptimizer(optim.SGD(model.parameters()), world)
    opt.minimize(graph, feed_of_this_ranks_rows, samples=len(rows))

or hand the trainer the strategy: ``Trainer(model, opt, strategy=distributed.DataParallel(world))``.
Modules: :mod:`.world` (ranks, collectives with deadlines), :mod:`.sampler` (each rank's rows),
:mod:`.data_parallel` (gradient buckets, their all-reduce, the optimizer step, the strategy).

Gradients travel in a few large contiguous buckets (the graph writes them there
directly), summed with MPI (host buffers) or NCCL (each rank its own GPU); every
collective has a deadline, after which all ranks are aborted with a message rather
than left hanging on a dead peer (and the process exits even if MPI_Abort returns).

Never silently wrong: before parameters are broadcast or averaged the ranks compare their
names, shapes and dtypes (:meth:`World.check_parameters`), the trainer's ranks compare their
epochs at the first batch, and a step that raises or is not finite on any rank is taken on
none, every rank raising an error that names the culprits (:class:`NonFiniteGradientsError`
for NaN or inf). Modules: also :mod:`.transport` (MPI or NCCL) and :mod:`.agreement`.
"""
from __future__ import annotations

from .data_parallel import (BUCKET_BYTES, STATS, DataParallel, DistributedOptimizer, _Buckets,
                            attach)
from .transport import choose_transport
from .sampler import ShardedSampler, shard_bounds
from .world import (DEFAULT_TIMEOUT, EXIT_ABORT, INSTALL_HINT, LAUNCH_HINT, LAUNCHER_ENV,
                    TIMEOUT_ENV, DistributedError, NonFiniteGradientsError, World, init,
                    launched_by_mpi, poll_until)

__all__ = ["attach", "init", "World", "DistributedOptimizer", "DataParallel", "ShardedSampler",
           "shard_bounds", "choose_transport", "launched_by_mpi", "DistributedError",
           "NonFiniteGradientsError",
           "INSTALL_HINT", "BUCKET_BYTES", "poll_until"]
