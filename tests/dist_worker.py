"""What each rank runs in tests/test_distributed.py: ``mpiexec -n N python tests/dist_worker.py SCENARIO OUT``.

Small synthetic data and a tiny network, so every scenario takes a second or two.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphnet as gn  # noqa: E402
from graphnet import distributed, optim  # noqa: E402
from graphnet.training import Trainer, TrainingInterrupted  # noqa: E402
from examples.mnist.launch import failure_ends_all  # noqa: E402
from helpers import blobs, tiny_model  # noqa: E402

GLOBAL_BATCH, STEPS, LR = 24, 5, 0.1


def global_batches(x: np.ndarray, y: np.ndarray, steps: int, batch: int):
    """The same global batches a single process would take (a fixed permutation)."""
    perm = np.random.default_rng(7).permutation(x.shape[0])
    for i in range(steps):
        rows = perm[i * batch:(i + 1) * batch]
        yield x[rows], y[rows]


def make_optimizer(model):
    return optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=1e-3)


def equivalence(world, out: Path) -> None:
    """A few steps of a data-parallel SGD; rank 0 saves the parameters."""
    model = tiny_model(layers=(32, 10), activation="relu", seed=world.rank)  # different per rank
    world.broadcast_parameters(model.named_arrays().values())
    opt = distributed.DistributedOptimizer(make_optimizer(model), world,
                                           bucket_bytes=int(os.environ.get("BUCKET_BYTES", 4096)),
                                           overlap=os.environ.get("OVERLAP", "1") == "1")
    x, y = blobs(200, seed=1)
    model.fit_preprocessing(x)
    costs = []
    for xb, yb in global_batches(x, y, STEPS, GLOBAL_BATCH):
        lo, hi = distributed.shard_bounds(xb.shape[0], world.rank, world.size)
        feed = {model.images: model.prepare(xb[lo:hi]), model.labels: yb[lo:hi].astype(np.int64)}
        costs.append(float(opt.minimize(model.train_graph, feed, samples=hi - lo)))
    if world.is_root:
        arrays = {k: gn.to_numpy(p.value) for k, p in model.named_arrays().items()}
        np.savez(out / "params.npz", costs=np.array(costs), buckets=np.array(opt.buckets(model.train_graph)),
                 overlapped=opt.overlapped, **arrays)
        print(f"transport {opt.transport}: {opt.reason}")


def hang(world, out: Path) -> None:
    """Rank 1 never joins the first collective; the others must give up, not wait forever."""
    if world.rank == 1:
        time.sleep(600)
    world.barrier("the first step")


def die(world, out: Path) -> None:
    """Rank 1 crashes before the gradient all-reduce."""
    model = tiny_model(layers=(8, 10))
    opt = distributed.DistributedOptimizer(make_optimizer(model), world)
    if world.rank == 1:
        os._exit(7)
    x, y = blobs(16)
    model.fit_preprocessing(x)
    opt.minimize(model.train_graph, {model.images: model.prepare(x), model.labels: y.astype(np.int64)})


def fail(world, out: Path) -> None:
    """Rank 1 raises while rank 0 waits in a collective: the guard ends both at once."""
    with failure_ends_all(world):
        if world.rank == 1:
            raise ValueError("rank 1 cannot go on")
        world.barrier("rank 1")


def config(world, out: Path) -> None:
    """Rank 1 was given another learning rate and batch size."""
    cfg = {"layers": [32, 10], "lr": 0.1, "batch_size": 8}
    if world.rank == 1:
        cfg.update(lr=0.2, batch_size=16)
    try:
        world.check_config(cfg)
    except distributed.DistributedError as exc:
        print(f"rank {world.rank}: DistributedError: {exc}")
        sys.exit(2)


def train(world, out: Path) -> None:
    """Trainer for ``EPOCHS`` epochs with per-rank batch ``BATCH``, resuming from ``out`` if it
    holds a checkpoint; rank 0 writes it."""
    epochs, batch = int(os.environ["EPOCHS"]), int(os.environ["BATCH"])
    gn.seed(0)
    model = tiny_model(layers=(32, 10), activation="relu", seed=0)
    x, y = blobs(200, seed=1)
    model.fit_preprocessing(x)
    stop_after, calls = int(os.environ.get("STOP_AFTER", 0)), [0]

    def ctrl_c_on_rank_0(xb):  # as if Ctrl-C reached rank 0 alone during batch STOP_AFTER
        calls[0] += 1
        if calls[0] == stop_after and (world is None or world.is_root):
            trainer.stop_requested = True
        return xb

    trainer = Trainer(model, make_optimizer(model), batch_size=batch, checkpoint_dir=out,
                      progress=False, augment=ctrl_c_on_rank_0,
                      strategy=None if world is None else distributed.DataParallel(world))
    if (out / "checkpoint.npz").exists():
        trainer.load_checkpoint(out / "checkpoint.npz")
        if hasattr(trainer, "replan"):  # a Trainer that restores the saved batch size
            trainer.replan(batch_size=batch)
    try:
        trainer.fit(x, y, x[:50], y[:50], epochs=epochs)
    except TrainingInterrupted as exc:
        print(f"rank {0 if world is None else world.rank}: {exc}")
        return
    if world is None or world.is_root:
        np.savez(out / "params.npz", **{k: gn.to_numpy(p.value) for k, p in model.named_arrays().items()})


def sigint_in_step(world, out: Path) -> None:
    """A real SIGINT reaches rank 0 alone while step SIGNAL_AT runs: in backward, before the
    ranks vote (SIGNAL_IN=gradients), or in the update, after it (SIGNAL_IN=update). Every rank
    must stop after the same batch, rank 0 saving there; each rank exits 130."""
    at, where = int(os.environ["SIGNAL_AT"]), os.environ["SIGNAL_IN"]
    gn.seed(0)
    model = tiny_model(layers=(32, 10), activation="relu", seed=0)
    x, y = blobs(200, seed=1)
    model.fit_preprocessing(x)
    opt = make_optimizer(model)
    rank = 0 if world is None else world.rank
    calls = [0]

    def signalling(fn):
        @functools.wraps(fn)  # the same signature: the engine's options are still seen
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at and rank == 0:
                os.kill(os.getpid(), signal.SIGINT)  # handled at once, in the middle of the step
            return fn(*args, **kwargs)
        return wrapper

    if where == "gradients":
        model.train_graph.gradients = signalling(model.train_graph.gradients)
    else:
        opt.apply = signalling(opt.apply)
    trainer = Trainer(model, opt, batch_size=int(os.environ["BATCH"]), checkpoint_dir=out,
                      progress=False,
                      strategy=None if world is None else distributed.DataParallel(world))
    try:
        trainer.fit(x, y, epochs=2)
    except TrainingInterrupted as exc:
        print(f"rank {rank}: {exc}", flush=True)
        sys.exit(130)
    print(f"rank {rank}: finished without stopping", flush=True)


SCENARIOS = {f.__name__: f for f in (equivalence, hang, die, fail, config, train, sigint_in_step)}

if __name__ == "__main__":
    name, out = sys.argv[1], Path(sys.argv[2])
    gn.set_backend("numpy")
    world = None if os.environ.get("ONE_PROCESS") else distributed.init()
    SCENARIOS[name](world, out)
