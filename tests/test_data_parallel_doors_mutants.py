"""The data-parallel doors on two ranks in this process (threads, tests/thread_ranks.py): the
choice of transport agreed by every rank, the DataParallel strategy (attach, step, describe,
end_epoch, the deprecated attach) and the sampler that compares the ranks' epochs.
Written against the mutants of graphnet/distributed/data_parallel.py that survived the suite
(issue 25)."""
from __future__ import annotations

import threading
import types

import numpy as np
import pytest

import graphnet as gn
from graphnet import distributed, optim
from graphnet.distributed import data_parallel as dp
from graphnet.testing import assert_close
from test_data_parallel_mutants import VALUES, ScriptedGraph, _grads, make_params
from thread_ranks import RankAborted, ThreadReducer, run_ranks


class NcclThreadReducer(ThreadReducer):
    """Stands in for the NCCL reducer: counts the worlds it was built for."""
    built: list = []

    def __init__(self, world):
        super().__init__(world)
        NcclThreadReducer.built.append(world.rank)


@pytest.fixture
def transports(monkeypatch):
    """Each rank's (NCCL available, GPU count), set per test; rank threads are named rank<r>."""
    per_rank = {}
    rank = lambda: int(threading.current_thread().name[4:])  # noqa: E731
    monkeypatch.setattr(dp, "_nccl_available", lambda: per_rank[rank()][0])
    monkeypatch.setattr(dp, "_gpu_count", lambda: per_rank[rank()][1])
    monkeypatch.setattr(dp, "_MpiReducer", ThreadReducer)
    monkeypatch.setattr(dp, "_NcclReducer", NcclThreadReducer)
    NcclThreadReducer.built = []
    return per_rank


NOT_EVERY = "not every rank has NCCL and a GPU of its own: MPI through host copies"
NO_NCCL = ("NCCL is not available to CuPy (pip install nvidia-nccl-cu12): MPI all-reduce "
           "through host copies")


@pytest.mark.parametrize("ranks, transport, reasons", [
    ([(True, 2), (True, 2)], "nccl",
     ["NCCL all-reduce on the GPUs (2 rank(s) per host, one GPU each)"] * 2),
    ([(True, 2), (True, 1)], "mpi", [NOT_EVERY] * 2),
    ([(False, 2), (True, 2)], "mpi", [NO_NCCL, NOT_EVERY]),
    ([(False, 2), (False, 2)], "mpi", [NO_NCCL] * 2),
])
def test_the_transport_is_agreed_by_every_rank(backend, transports, ranks, transport, reasons):
    """NCCL only where every rank has it and a GPU of its own; the buckets then go over NCCL.
    Each rank says why not, as it sees it."""
    transports.update(enumerate(ranks))
    if backend.name != "cupy":
        transport, reasons = "mpi", [f"{backend.name} arrays live on the host: MPI all-reduce"] * 2

    def rank(world):
        params = make_params(VALUES)
        opt = distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world)
        opt.minimize(ScriptedGraph(params, _grads(1.0)), {})
        return opt.transport, opt.reason, opt._reducer.summed

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    assert [r[:2] for r in results] == [(transport, reason) for reason in reasons]
    assert sorted(NcclThreadReducer.built) == ([0, 1] if transport == "nccl" else [])
    assert [r[2] for r in results] == [2, 2]  # the bucket and the stats, summed by that reducer


def test_a_rank_that_dies_while_the_transport_is_chosen_is_named(transports):
    transports.update({0: (False, 0), 1: (False, 0)})

    def rank(world):
        params = make_params(VALUES)
        if world.rank == 1:  # it checks the models, then dies
            return world.check_parameters(params, "wrapping the optimizer in DistributedOptimizer")
        return distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world)

    _, errors = run_ranks(rank, timeout=0.5)
    assert errors[1] is None and isinstance(errors[0], RankAborted)
    assert str(errors[0]) == "waited 0.5 s for choosing NCCL: another rank died or hangs"


def test_wrapping_differing_models_names_the_door_and_refuses_bad_optimizers(transports):
    transports.update({0: (False, 0), 1: (False, 0)})

    def rank(world):
        params = make_params(VALUES if world.rank == 0 else VALUES[:2])
        with pytest.raises(distributed.DistributedError, match=r"^the ranks' models differ "
                           r"\(wrapping the optimizer in DistributedOptimizer\): rank 1 differs"):
            distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world)
        with pytest.raises(gn.ArgumentTypeError, match="^optimizer must be a graphnet optimizer"):
            distributed.DistributedOptimizer(types.SimpleNamespace(params=params), world)
        with pytest.raises(gn.ArgumentTypeError, match="^optimizer must be a graphnet optimizer"):
            distributed.DistributedOptimizer(types.SimpleNamespace(minimize=print, params=()),
                                             world)
        with pytest.raises(ValueError, match="^optimizer has no parameters to average$"):
            distributed.DistributedOptimizer(types.SimpleNamespace(minimize=print, params=[]),
                                             world)

    _, errors = run_ranks(rank)
    assert errors == [None, None]


# --- DataParallel, the trainer's strategy -------------------------------------------------
def _trainer(params, progress=True):
    model = types.SimpleNamespace(named_arrays=lambda: {p.name: p for p in params})
    return types.SimpleNamespace(optimizer=optim.SGD([p for p in params if p.trainable], lr=1.0),
                                 model=model, progress=progress)


def test_the_strategy_attaches_quiets_other_ranks_and_steps_with_the_rank_key(transports):
    transports.update({0: (False, 0), 1: (False, 0)})

    def rank(world):
        strategy = distributed.DataParallel(world, bucket_bytes=8)
        lines = [strategy.describe(16)]
        with pytest.raises(distributed.DistributedError, match=r"^DataParallel\.step: attach the "
                           r"strategy to the trainer first \(Trainer\(\.\.\., "
                           r"strategy=DataParallel\(world\)\) does\)$"):
            strategy.step(None, None, {}, None, 1, lambda: False)
        params = make_params([[float(world.rank)] * 3, *VALUES[1:]])  # rank 0's values win
        quiet = _trainer(params, progress=world.rank == 1)
        strategy.attach(quiet)
        lines.append(strategy.describe(16))
        with pytest.raises(distributed.DistributedError, match="attach the strategy"):
            strategy.step(optim.SGD(params, lr=1.0), None, {}, None, 1, lambda: False)
        graph = ScriptedGraph(params, _grads(1.0 + 2 * world.rank))
        cost, stop = strategy.step(quiet.optimizer, graph, {}, (3, world.rank), 1 + 2 * world.rank,
                                   lambda: world.rank == 1)
        return (strategy.writes, quiet.progress, lines, stop, graph.calls[0]["rng_key"],
                strategy.optimizer.overlapped, {p.name: gn.to_numpy(p.value) for p in params})

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    for r, (writes, progress, lines, stop, key, overlapped, values) in enumerate(results):
        assert (writes, progress) == (r == 0, False)
        assert lines == ["data-parallel on 2 ranks: global batch 32 = 16 per rank x 2",
                         "data-parallel on 2 ranks: global batch 32 = 16 per rank x 2; mpi: "
                         "numpy arrays live on the host: MPI all-reduce"]
        assert stop is True and key == (3, r) and overlapped == 3
        # samples 1 and 3: the mean gradient is (1 * 1 + 3 * 3) / 4 = 2.5 of _grads(1)
        assert_close(values["p0"], np.zeros(3, np.float32) - 2.5 * _grads(1.0)["p0"])
        assert_close(values["p1"], np.asarray(VALUES[1], np.float32) - 2.5 * _grads(1.0)["p1"])


@pytest.mark.parametrize("door", ["strategy", "world", "deprecated"])
def test_the_options_reach_the_optimizer_whichever_door(transports, door):
    transports.update({0: (False, 0), 1: (False, 0)})

    def rank(world):
        params = make_params(VALUES)
        trainer = _trainer(params)
        if door == "deprecated":
            with pytest.warns(DeprecationWarning) as caught:
                distributed.attach(trainer, world, 8, overlap=False)
            assert [str(w.message) for w in caught] == [
                "distributed.attach is deprecated: Trainer(..., strategy=DataParallel(world))"]
            assert caught[0].filename == __file__  # the caller's line
            strategy = trainer.strategy
        else:
            make = distributed.DataParallel if door == "strategy" else world.data_parallel
            strategy = make(world, bucket_bytes=8, overlap=False) if door == "strategy" else \
                make(bucket_bytes=8, overlap=False)
            strategy.attach(trainer)
        assert isinstance(strategy, distributed.DataParallel)
        graph = ScriptedGraph(params, _grads(1.0))
        strategy.step(trainer.optimizer, graph, {}, None, 1, lambda: False)
        return strategy.optimizer.overlapped, strategy.optimizer.buckets(graph)

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    assert results == [(0, [4, 16, 12])] * 2


def test_the_defaults_overlap_and_the_deprecated_attach_works(transports):
    transports.update({0: (False, 0), 1: (False, 0)})

    def rank(world):
        out = []
        for door in ("strategy", "deprecated"):
            params = make_params(VALUES)
            trainer = _trainer(params)
            if door == "deprecated":
                with pytest.warns(DeprecationWarning):
                    distributed.attach(trainer, world)
            else:
                trainer.strategy = distributed.DataParallel(world)
                trainer.strategy.attach(trainer)
            trainer.strategy.step(trainer.optimizer, ScriptedGraph(params, _grads(1.0)), {}, None,
                                  1, lambda: False)
            out.append(trainer.strategy.optimizer.overlapped)
        return out

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    assert results == [[1, 1]] * 2  # one bucket (25 MiB), sent from backward


def test_end_epoch_averages_the_statistics_and_leaves_the_weights():
    def rank(world):
        w = gn.Parameter(np.full(2, 1.0 + world.rank, np.float32), name="W")
        stat = gn.Parameter(np.full(3, 1.0 + 2 * world.rank, np.float32), name="mean",
                            trainable=False)
        model = types.SimpleNamespace(named_arrays=lambda: {"W": w, "mean": stat})
        distributed.DataParallel(world).end_epoch(model)
        return gn.to_numpy(w.value), gn.to_numpy(stat.value)

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    for r, (w, stat) in enumerate(results):
        np.testing.assert_array_equal(w, np.full(2, 1.0 + r, np.float32))
        np.testing.assert_array_equal(stat, np.full(3, 2.0, np.float32))


# --- the sampler that compares the ranks' epochs ------------------------------------------
def test_the_ranks_epochs_are_compared_at_the_first_batch_only():
    def rank(world):
        sampler = distributed.DataParallel(world).sampler(3)
        perm = np.arange(10)[::-1]
        first = sampler.rows_at(perm, 0)
        before = len(world.whats)
        second = sampler.rows_at(perm, 6)
        return first, second, len(world.whats) - before, world.whats

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    (rows0, at0), (rows1, at1), extra, whats = results[0]
    assert (rows0.tolist(), at0, rows1.tolist(), at1, extra) == ([9, 8, 7], 0, [3, 2], 6, 0)
    assert whats == ["comparing the ranks' epochs"]
    (rows0, at0), (rows1, at1), _, _ = results[1]
    assert (rows0.tolist(), at0, rows1.tolist(), at1) == ([6, 5, 4], 3, [1, 0], 8)


@pytest.mark.parametrize("n1, start1, batch1", [(12, 0, 3), (10, 3, 3), (10, 0, 4)])
def test_ranks_with_different_epochs_stop_at_the_first_batch_naming_them(n1, start1, batch1):
    def rank(world):
        mine = (10, 0, 3) if world.rank == 0 else (n1, start1, batch1)
        distributed.DataParallel(world).sampler(mine[2]).rows_at(np.arange(mine[0]), mine[1])

    _, errors = run_ranks(rank)
    expected = ("the ranks' epochs differ (each rank must be given the same training data and "
                "batch size): rank 0: batch_size 3, from sample 0, samples 10; rank 1: "
                f"batch_size {batch1}, from sample {start1}, samples {n1}")
    for e in errors:
        assert type(e) is distributed.DistributedError and str(e) == expected


def test_a_rank_that_never_starts_its_epoch_is_named():
    def rank(world):
        if world.rank == 0:
            distributed.DataParallel(world).sampler(2).rows_at(np.arange(4), 0)

    _, errors = run_ranks(rank, timeout=0.5)
    assert errors[1] is None
    assert str(errors[0]) == "waited 0.5 s for comparing the ranks' epochs: another rank died or hangs"
