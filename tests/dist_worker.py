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


def _report(world, fn) -> None:
    """Run ``fn``; a raised error is printed as ``rank R: Type: message`` and exits 2."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - printed for the test to read
        print(f"rank {world.rank}: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(2)
    print(f"rank {world.rank}: no error", flush=True)


def models_differ(world, out: Path) -> None:
    """Rank 1's model differs from rank 0's (MODE: shape, count, dtype, name, or the trainer's
    strategy with another hidden width); every rank must stop with the difference named."""
    mode = os.environ["MODE"]
    if mode == "strategy":
        model = tiny_model(layers=(32, 10) if world.rank == 0 else (16, 10))
        _report(world, lambda: Trainer(model, make_optimizer(model), batch_size=8, progress=False,
                                       strategy=distributed.DataParallel(world)))
        return
    shapes = [(4, 3), (3,), (3, 2)]
    dtypes = [np.float32] * 3
    names = ["layer0.W", "layer0.b", "layer1.W"]
    if world.rank == 1:
        if mode == "shape":
            shapes[2] = (3, 5)
        elif mode == "count":
            shapes.append((2,))
            dtypes.append(np.float32)
            names.append("layer1.b")
        elif mode == "dtype":
            dtypes[1] = np.float64
        elif mode == "name":
            names[0] = "encoder.W"
    ps = []
    for shape, dtype, name in zip(shapes, dtypes, names):
        with gn.default_dtype(dtype):  # as a rank whose default dtype was set otherwise
            ps.append(gn.Parameter(np.ones(shape), name=name))
    if os.environ.get("DOOR") == "optimizer":
        _report(world, lambda: distributed.DistributedOptimizer(optim.SGD(ps, lr=0.1), world))
    else:
        _report(world, lambda: world.broadcast_parameters(ps))


class _AbortReturns:
    """A communicator whose Abort returns, as MPICH's MPI_Abort can; the rest is the real one."""

    def __init__(self, comm) -> None:
        self._comm = comm

    def Abort(self, code: int = 0) -> None:  # noqa: N802 - MPI's name
        print(f"rank {self._comm.Get_rank()}: Abort({code}) returned", flush=True)

    def __getattr__(self, name):
        return getattr(self._comm, name)


def abort_returns(world, out: Path) -> None:
    """Rank 1 never joins the sum; rank 0's deadline passes and its Abort returns: rank 0
    must never go on with the unreduced buffer."""
    world.comm = _AbortReturns(world.comm)
    if world.rank == 1:
        time.sleep(float(os.environ.get("RANK1_SLEEP", "15")))
        os._exit(0)
    buf = np.full(4, 1.0)
    world.allreduce_(buf, "the sum rank 1 never joins")
    print(f"rank 0: allreduce_ returned {buf.tolist()} (unreduced)", flush=True)
    os._exit(0)


def _failing_gradients(fn, fail_at: int, where: str, calls: list):
    """``graph.gradients`` that raises at call ``fail_at``: before backward, or inside it after
    the first bucket's gradients are final (that bucket's sum already started)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] != fail_at:
            return fn(*args, **kwargs)
        if where == "before":
            raise ValueError(f"this rank's batch {fail_at} is broken")
        hook = kwargs["on_final"]

        def failing_hook(p):
            hook(p)
            raise ValueError(f"backward failed on batch {fail_at}")
        return fn(*args, **{**kwargs, "on_final": failing_hook})
    return wrapper


def step_fails(world, out: Path) -> None:
    """Rank 1 cannot take step 2 (FAIL=raise: its graph raises, WHERE=before or during
    backward; FAIL=nan: its batch holds a NaN pixel). Every rank must raise naming rank 1,
    none may apply step 2, and step 3 must still work; each rank saves its parameters."""
    model = tiny_model(layers=(32, 10), activation="relu", seed=0)
    opt = distributed.DistributedOptimizer(make_optimizer(model), world, bucket_bytes=4096)
    x, y = blobs(48, seed=1)
    model.fit_preprocessing(x)
    kind, calls = os.environ["FAIL"], [0]
    if kind == "raise" and world.rank == 1:
        model.train_graph.gradients = _failing_gradients(model.train_graph.gradients, 2,
                                                         os.environ["WHERE"], calls)
    snapshots = []
    for step, (xb, yb) in enumerate(global_batches(x, y, 3, 16), start=1):
        lo, hi = distributed.shard_bounds(xb.shape[0], world.rank, world.size)
        images = model.prepare(xb[lo:hi])
        if kind == "nan" and step == 2 and world.rank == 1:
            images[0, 0] = np.nan
        feed = {model.images: images, model.labels: yb[lo:hi].astype(np.int64)}
        try:
            opt.minimize(model.train_graph, feed, samples=hi - lo)
            print(f"rank {world.rank}: step {step} done", flush=True)
        except Exception as exc:  # noqa: BLE001 - printed for the test to read
            print(f"rank {world.rank}: step {step}: {type(exc).__name__}: {exc} | notes "
                  f"{getattr(exc, '__notes__', [])}", flush=True)
        snapshots.append({k: gn.to_numpy(p.value).copy() for k, p in model.named_arrays().items()})
    np.savez(out / f"rank{world.rank}.npz", steps=opt.steps,
             **{f"{k}@{i}": v for i, snap in enumerate(snapshots) for k, v in snap.items()})


def collectives_differ(world, out: Path) -> None:
    """Ranks that call a collective with different arguments (MODE: metrics, array, config)."""
    mode = os.environ["MODE"]
    if mode == "metrics":
        values = {"loss": 1.0, "accuracy": 0.5} if world.rank == 0 else {"loss": 1.0, "acc": 0.5}
        _report(world, lambda: world.reduce_mean(values))
    elif mode == "sum":
        _report(world, lambda: world.allreduce_(np.ones(2, np.int64 if world.rank == 0 else np.float64),
                                                "the counts"))
    elif mode == "array":
        _report(world, lambda: world.broadcast_array(np.zeros(3 + world.rank, np.float32), "the mean"))
    else:
        _report(world, lambda: world.check_config({"lr": 0.1, "batch_size": 8 + 8 * world.rank}))


def uneven(world, out: Path) -> None:
    """A Trainer on more ranks than some global batches have rows (3 samples, batch 1 per rank),
    evaluated on fewer samples than ranks; rank 0 saves what it got."""
    gn.seed(0)
    model = tiny_model(layers=(16, 10), activation="relu", seed=0)
    x, y = blobs(int(os.environ.get("SAMPLES", "3")), seed=4)
    model.fit_preprocessing(x)
    trainer = Trainer(model, make_optimizer(model), batch_size=int(os.environ["BATCH"]),
                      progress=False,
                      strategy=None if world is None else distributed.DataParallel(world))
    trainer.fit(x, y, epochs=2)
    metrics = trainer.strategy.evaluate(model, model.prepare(x[:1]), y[:1])
    if world is None or world.is_root:
        np.savez(out / "params.npz", steps=trainer.optimizer.steps, **metrics,
                 **{k: gn.to_numpy(p.value) for k, p in model.named_arrays().items()})


def epochs_differ(world, out: Path) -> None:
    """Rank 1 was handed fewer training samples than rank 0: both must stop, saying so."""
    model = tiny_model(layers=(16, 10), activation="relu", seed=0)
    x, y = blobs(40 if world.rank == 0 else 32, seed=4)
    model.fit_preprocessing(x)
    trainer = Trainer(model, make_optimizer(model), batch_size=4, progress=False,
                      strategy=distributed.DataParallel(world))
    _report(world, lambda: trainer.fit(x, y, epochs=1))


SCENARIOS = {f.__name__: f for f in (equivalence, hang, die, fail, config, train, sigint_in_step,
                                     models_differ, abort_returns, step_fails, collectives_differ,
                                     uneven, epochs_differ)}
if __name__ == "__main__":
    name, out = sys.argv[1], Path(sys.argv[2])
    gn.set_backend("numpy")
    world = None if os.environ.get("ONE_PROCESS") else distributed.init()
    SCENARIOS[name](world, out)
