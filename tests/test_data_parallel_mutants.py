"""The data-parallel step on two ranks in this process (threads, tests/thread_ranks.py):
uneven shards step like one process, a failing or non-finite rank stops the step everywhere,
the stop vote, the overlap of the all-reduce with backward, and the time counters.
Written against the mutants of graphnet/distributed/data_parallel.py that survived the suite
(issue 25)."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import distributed, optim
from graphnet.distributed import data_parallel as dp
from graphnet.testing import assert_close
from helpers import blobs, tiny_model
from thread_ranks import RankAborted, ThreadReducer, run_ranks

LR = 0.1


@pytest.fixture(autouse=True)
def _thread_reducer(monkeypatch):
    monkeypatch.setattr(dp, "_MpiReducer", ThreadReducer)


class ScriptedGraph:
    """A graph whose gradients are given: written into ``into`` last parameter first, each
    reported final at once; records what each ``gradients`` call was given."""

    def __init__(self, params, grads, cost=1.0, fail=None):
        self.params, self.grads, self.cost, self.fail = list(params), grads, cost, fail
        self.calls: list[dict] = []

    def __contains__(self, p):
        return any(p is q for q in self.params)

    def parameters(self):
        return list(self.params)

    def _gradients(self, feed, wrt, into, rng_key=None, on_final=None):
        self.calls.append({"wrt": list(wrt), "rng_key": rng_key, "on_final": on_final is not None})
        if self.fail is not None:
            raise self.fail
        for p in reversed(list(wrt)):
            into[p][...] = gn.backend().xp.asarray(self.grads[p.name], dtype=p.dtype)
            if on_final is not None:
                on_final(p)
        return np.float32(self.cost), into

    def gradients(self, feed, wrt=None, training=True, return_cost=False, into=None,
                  rng_key=None, on_final=None):
        return self._gradients(feed, wrt, into, rng_key, on_final)


class PlainGraph(ScriptedGraph):
    """A graph whose ``gradients`` takes neither ``rng_key`` nor ``on_final``."""

    def gradients(self, feed, wrt=None, training=True, return_cost=False, into=None):
        return self._gradients(feed, wrt, into)


def make_params(values):
    """Parameters named p0, p1... (float32) with the given values."""
    return [gn.Parameter(np.asarray(v, np.float32), name=f"p{i}") for i, v in enumerate(values)]


VALUES = ([1.0, 2.0, 3.0], [[0.5, -1.0], [2.0, 0.0]], [4.0])


def _host(params):
    return {p.name: gn.to_numpy(p.value).copy() for p in params}


def _assert_unchanged(params):
    for p, v in zip(params, VALUES):
        np.testing.assert_array_equal(gn.to_numpy(p.value), np.asarray(v, np.float32))


# --- the step: the mean over the global batch ------------------------------------------------
@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("bucket_bytes", [8, dp.BUCKET_BYTES])
def test_uneven_shards_on_two_ranks_step_like_one_process(backend, overlap, bucket_bytes):
    """5 rows on rank 0 and 3 on rank 1 step like one process on all 8 (the mean over the
    global batch, not the mean of the ranks' means)."""
    x, y = blobs(8, pixels=36, seed=4)
    models = []
    for _ in range(3):
        m = tiny_model(layers=(6, 10), pixels=36, seed=1)
        m.fit_preprocessing(x)
        models.append(m)

    def feed(m, rows):
        return {m.images: m.prepare(x[rows]), m.labels: y[rows].astype(np.int64)}

    ref_opt = optim.SGD(models[2].parameters(), lr=LR, momentum=0.9)
    ref_costs = [float(ref_opt.minimize(models[2].train_graph, feed(models[2], slice(0, 8))))
                 for _ in range(2)]
    shards = (slice(0, 5), slice(5, 8))

    def rank(world):
        m = models[world.rank]
        opt = distributed.DistributedOptimizer(optim.SGD(m.parameters(), lr=LR, momentum=0.9),
                                               world, bucket_bytes=bucket_bytes, overlap=overlap)
        rows = shards[world.rank]
        return [float(opt.minimize(m.train_graph, feed(m, rows), samples=rows.stop - rows.start))
                for _ in range(2)]

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    for costs in results:
        assert_close(np.array(costs), np.array(ref_costs), rtol=1e-5, atol=1e-6)
    ref = _host(models[2].parameters())
    for m in models[:2]:
        for name, value in _host(m.parameters()).items():
            assert_close(value, ref[name], rtol=1e-5, atol=1e-6)


def _scripted_step(world, grads_by_rank, samples=(None, None), overlap=True, bucket_bytes=8,
                   graph_type=ScriptedGraph, costs=(1.0, 1.0), steps=1, **kw):
    params = make_params(VALUES)
    opt = distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world,
                                           bucket_bytes=bucket_bytes, overlap=overlap)
    graph = graph_type(params, grads_by_rank[world.rank], cost=costs[world.rank])
    out = [opt.minimize(graph, {}, samples=samples[world.rank], **kw) for _ in range(steps)]
    return opt, graph, params, out


def _grads(scale):
    return {f"p{i}": scale * (np.arange(np.size(v), dtype=np.float32).reshape(np.shape(v)) + 1)
            for i, v in enumerate(VALUES)}


@pytest.mark.parametrize("overlap, graph_type, overlapped", [
    (True, ScriptedGraph, 3), (False, ScriptedGraph, 0), (True, PlainGraph, 0)])
def test_weighted_mean_of_the_ranks_gradients_and_the_overlapped_buckets(overlap, graph_type,
                                                                         overlapped):
    """Rank 0 (3 samples) and rank 1 (1 sample): the step is 0.75 g0 + 0.25 g1; with overlap
    (and a graph that reports final gradients) every bucket's all-reduce starts in backward."""
    def rank(world):
        opt, graph, params, costs = _scripted_step(
            world, [_grads(1.0), _grads(5.0)], samples=(3, 1), overlap=overlap,
            graph_type=graph_type, costs=(2.0, 6.0))
        assert opt.buckets(graph) == [4, 16, 12]  # 8 bytes: one parameter a bucket, last first
        return opt.overlapped, _host(params), [float(c) for c in costs]

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    for got_overlapped, values, costs in results:
        assert got_overlapped == overlapped
        assert costs == [0.75 * 2.0 + 0.25 * 6.0]
        for i, v in enumerate(VALUES):
            assert_close(values[f"p{i}"], np.asarray(v, np.float32) - 2.0 * _grads(1.0)[f"p{i}"])


def test_equal_weights_without_samples_and_the_cost_in_the_parameters_dtype():
    def rank(world):
        opt, _, params, costs = _scripted_step(world, [_grads(1.0), _grads(3.0)],
                                               costs=(1.0, 2.0), steps=2)
        return _host(params), costs

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    for values, costs in results:
        assert [float(c) for c in costs] == [1.5, 1.5]
        assert all(c.dtype == np.float32 for c in costs)
        for i, v in enumerate(VALUES):
            assert_close(values[f"p{i}"], np.asarray(v, np.float32) - 4.0 * _grads(1.0)[f"p{i}"])


def test_a_rank_without_samples_runs_no_graph_and_adds_nothing():
    def rank(world):
        _, graph, params, costs = _scripted_step(world, [_grads(1.0), _grads(100.0)],
                                                 samples=(2, 0), costs=(3.0, 50.0))
        return _host(params), [float(c) for c in costs], len(graph.calls)

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    assert [calls for *_, calls in results] == [1, 0]
    for values, costs, _ in results:
        assert costs == [3.0]
        for i, v in enumerate(VALUES):
            assert_close(values[f"p{i}"], np.asarray(v, np.float32) - _grads(1.0)[f"p{i}"])


@pytest.mark.parametrize("graph_type, keyed, hooked", [(ScriptedGraph, True, True),
                                                       (PlainGraph, False, False)])
def test_the_graph_is_given_the_rank_key_and_the_hook_it_takes(graph_type, keyed, hooked):
    """Each rank's rng_key reaches the graph (dropout masks differ between ranks) where its
    gradients() takes one; the parameters asked for are the optimizer's in the graph."""
    def rank(world):
        _, graph, params, _ = _scripted_step(world, [_grads(1.0)] * 2, graph_type=graph_type,
                                             rng_key=(7, world.rank))
        return graph.calls, params

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    for r, (calls, params) in enumerate(results):
        assert len(calls) == 1
        assert calls[0]["rng_key"] == ((7, r) if keyed else None)
        assert calls[0]["on_final"] is hooked
        assert [p.name for p in calls[0]["wrt"]] == [p.name for p in params]


def test_a_global_batch_without_samples_and_a_wrapped_wrapper_are_refused():
    def rank(world):
        params = make_params(VALUES)
        opt = distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world)
        with pytest.raises(ValueError, match="^optimizer is already a DistributedOptimizer$"):
            distributed.DistributedOptimizer(opt, world)
        with pytest.raises(distributed.DistributedError,
                           match="^no rank had any samples in this global batch$"):
            opt.minimize(ScriptedGraph(params, _grads(1.0)), {}, samples=0)
        _assert_unchanged(params)

    assert run_ranks(rank)[1] == [None, None]


def test_buckets_of_a_graph_using_part_of_the_parameters():
    """buckets(graph): byte sizes for the parameters the graph uses; two float32 arrays that
    fill bucket_bytes exactly share one bucket; none used is a clear error."""
    def rank(world):
        params = make_params(VALUES)
        opt = distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world,
                                               bucket_bytes=12 + 16)
        sizes = opt.buckets(ScriptedGraph(params[:2], {}))
        one = distributed.DistributedOptimizer(optim.SGD(params[2:], lr=1.0), world)
        with pytest.raises(ValueError, match="^graph uses none of the optimizer's parameters: "
                                             "nothing to train$"):
            one.buckets(ScriptedGraph(params[:2], {}))
        return sizes, one.buckets(ScriptedGraph(params[2:], {}))

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    assert results[0] == ([28], [4])


# --- a rank that cannot take the step ------------------------------------------------------
NOWHERE = "step 1 (taken on no rank: the parameters are unchanged) failed: "


def test_a_rank_whose_graph_raises_stops_the_step_on_every_rank():
    def rank(world):
        params = make_params(VALUES)
        opt = distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world, bucket_bytes=8)
        fail = ValueError("boom") if world.rank == 1 else None
        try:
            opt.minimize(ScriptedGraph(params, _grads(1.0), fail=fail), {}, samples=2)
        finally:
            _assert_unchanged(params)

    _, errors = run_ranks(rank)
    assert type(errors[0]) is distributed.DistributedError
    assert str(errors[0]) == NOWHERE + "rank 1: ValueError: boom"
    assert type(errors[1]) is ValueError and str(errors[1]) == "boom"
    assert errors[1].__notes__ == ["graphnet.distributed: " + NOWHERE + "rank 1: ValueError: boom"]


@pytest.mark.parametrize("bad", ["first", "last", "cost"])
def test_non_finite_gradients_or_cost_on_one_rank_are_named_and_taken_nowhere(bad):
    """A NaN in any bucket (the first or the last sent) or in the cost, on rank 1 only."""
    def rank(world):
        grads = _grads(1.0)
        cost = 1.0
        if world.rank == 1:
            if bad == "cost":
                cost = np.inf
            else:
                grads[{"first": "p2", "last": "p0"}[bad]][0] = np.nan
        params = make_params(VALUES)
        opt = distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world, bucket_bytes=8)
        try:
            opt.minimize(ScriptedGraph(params, grads, cost=cost), {})
        finally:
            _assert_unchanged(params)

    _, errors = run_ranks(rank)
    for e in errors:
        assert type(e) is distributed.NonFiniteGradientsError
        assert str(e) == NOWHERE + "rank 1: non-finite cost or gradients"


def test_a_rank_without_samples_after_a_refused_step_adds_nothing():
    """After a step refused for a NaN (every rank's buffers then hold the NaN sum), a rank
    with no rows in the next global batch must not send the stale buffers again."""
    def rank(world):
        params = make_params(VALUES)
        opt = distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world, bucket_bytes=8)
        graph = ScriptedGraph(params, _grads(1.0))
        graph.grads["p2"][0] = np.nan if world.rank == 1 else 1.0
        with pytest.raises(distributed.NonFiniteGradientsError):
            opt.minimize(graph, {})
        graph.grads = _grads(1.0)  # the same graph: its buffers are reused
        opt.minimize(graph, {}, samples=(2, 0)[world.rank])
        return _host(params)

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    for values in results:
        for i, v in enumerate(VALUES):
            assert_close(values[f"p{i}"], np.asarray(v, np.float32) - _grads(1.0)[f"p{i}"])


def test_a_peer_that_never_comes_to_the_all_reduce_is_named_in_the_abort():
    def rank(world):
        _, _, _, _ = _scripted_step(world, [_grads(1.0)] * 2, steps=1 if world.rank else 2)

    _, errors = run_ranks(rank, timeout=0.5)
    assert errors[1] is None and isinstance(errors[0], RankAborted)
    assert str(errors[0]).startswith("waited 0.5 s for the gradient all-reduce (step 2) (buffer 1 ")


def test_the_parameters_of_the_graph_are_compared_at_its_first_step_only():
    """Ranks whose graphs use different parameters stop at the first step, naming it; a
    graph already checked makes no extra collective (one all-reduce per bucket, and stats)."""
    def rank(world):
        params = make_params(VALUES)
        opt = distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world, bucket_bytes=8)
        graph = ScriptedGraph(params, _grads(1.0))
        opt.minimize(graph, {})
        before = len(world.whats)
        opt.minimize(graph, {})
        per_step = world.whats[before:]
        used = params[:2] if world.rank else params
        with pytest.raises(distributed.DistributedError, match=r"^the ranks' models differ \(the "
                           r"parameters of the graph being trained\): rank 1 differs from rank 0"):
            opt.minimize(ScriptedGraph(used, _grads(1.0)), {})
        return per_step

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    assert results[0] == [f"the gradient all-reduce (step 2) (buffer {k} of 4)" for k in (1, 2, 3, 4)]


# --- stopping together, and the counters --------------------------------------------------
def test_a_stop_asked_on_one_rank_is_agreed_on_every_rank_for_that_step_only():
    def rank(world):
        params = make_params(VALUES)
        opt = distributed.DistributedOptimizer(optim.SGD(params, lr=1.0), world)
        fresh = (opt.stop_requested, opt.stop_agreed, opt.comm_seconds, opt.compute_seconds,
                 opt.overlapped)
        graph = ScriptedGraph(params, _grads(1.0))
        agreed = []
        for ask in (False, (lambda: world.rank == 1), (lambda: False), world.rank == 0):
            opt.stop_requested = ask
            opt.minimize(graph, {})
            agreed.append(opt.stop_agreed)
        return fresh, agreed, opt.overlapped

    results, errors = run_ranks(rank)
    assert errors == [None, None]
    for fresh, agreed, overlapped in results:
        assert fresh == (False, False, 0.0, 0.0, 0)
        assert agreed == [False, True, False, True]
        assert overlapped == 4  # by default, the one bucket goes from backward at each step


class _Clock:
    """time.perf_counter that advances one second a call."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def test_compute_and_comm_seconds_add_up_over_the_steps(monkeypatch):
    monkeypatch.setattr(dp, "time", _Clock())
    results, errors = run_ranks(lambda world: _scripted_step(
        world, [_grads(1.0)] * 2, steps=3)[0], size=1)
    assert errors == [None]
    assert (results[0].compute_seconds, results[0].comm_seconds) == (3.0, 3.0)
