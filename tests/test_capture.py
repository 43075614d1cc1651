"""CUDA-graph replay of a training step (graphnet.capture) and the emulation's capture model.

The replay tests run on the CPU emulation of CuPy (EMULATED: ``tests/cupy_emulation/_capture.py``
records each array operation while a stream captures and replays the record on the same
arrays; values read during capture are garbage, host synchronisations raise). On a real GPU
they run on CuPy's own CUDA graphs.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet.capture import CaptureError, CapturedStep
from graphnet.testing import assert_close

import capture_models as models
from conftest import cupy_mode

pytestmark = pytest.mark.gpu


def _train(build, make_opt, feeds_of, captured: bool, step_cls=CapturedStep):
    """(parameters as host arrays, costs, the CapturedStep or None) after the feeds' steps."""
    graph, params, x, labels = build()
    opt = make_opt(params)
    step = step_cls(graph, opt) if captured else None
    costs = [step.minimize(f) if captured else opt.minimize(graph, f) for f in feeds_of(x, labels)]
    return [gn.to_numpy(p.value) for p in params], [float(c) for c in costs], step


CASES = {"mlp-sgd": (lambda: models.mlp(dropout=0), models.sgd),
         "cnn-adam": (models.cnn, models.adam)}


def _exact(a, b, what):
    for k, (u, v) in enumerate(zip(a, b)):
        assert_close(u, v, rtol=0, atol=0, what=f"{what}[{k}]")


@pytest.mark.parametrize("case", list(CASES))
def test_replay_gives_the_bits_of_the_plain_step(cupy_backend, case):
    build, make_opt = CASES[case]
    feeds = lambda x, labels: models.feeds(x, labels, batch=8, steps=5)  # noqa: E731
    plain, plain_costs, _ = _train(build, make_opt, feeds, captured=False)
    replayed, costs, step = _train(build, make_opt, feeds, captured=True)
    _exact(replayed, plain, "parameters")
    assert costs == plain_costs
    assert step.captures == 1
    (replay,) = step._replays.values()
    if hasattr(replay.graph, "launches"):  # the emulation counts launches: 4 replays, no reruns
        assert replay.graph.launches == 4 and len(replay.graph) > 10


class _StaleFeed(CapturedStep):
    def _replay(self, replay, fed):  # planted bug: the new feed never reaches the captured input
        replay.graph.launch(self.graph.backend.xp.cuda.get_current_stream())
        return replay.cost.copy()


class _SharedCost(CapturedStep):
    def _replay(self, replay, fed):  # planted bug: hands out the array the next replay rewrites
        super()._replay(replay, fed)
        return replay.cost


@pytest.mark.parametrize("bug", [_StaleFeed, _SharedCost])
def test_a_planted_replay_bug_changes_the_bits(cupy_backend, bug):
    feeds = lambda x, labels: models.feeds(x, labels, batch=8, steps=4)  # noqa: E731
    build, make_opt = CASES["mlp-sgd"]
    plain, plain_costs, _ = _train(build, make_opt, feeds, captured=False)
    params, costs, _ = _train(build, make_opt, feeds, captured=True, step_cls=bug)
    same = all(np.array_equal(a, b) for a, b in zip(params, plain)) and costs == plain_costs
    assert not same, f"{bug.__name__}: the planted bug went unseen"


def test_each_feed_shape_gets_its_own_capture(cupy_backend):
    def feeds(x, labels):
        batches = [models.feeds(x, labels, n, 1, seed=s)[0] for s, n in enumerate([8, 6, 8, 6, 8])]
        return batches
    build, make_opt = CASES["cnn-adam"]
    plain, plain_costs, _ = _train(build, make_opt, feeds, captured=False)
    replayed, costs, step = _train(build, make_opt, feeds, captured=True)
    _exact(replayed, plain, "parameters")
    assert costs == plain_costs and step.captures == 2


def test_more_shapes_than_max_shapes_is_an_error(cupy_backend):
    graph, params, x, labels = models.mlp(dropout=0)
    step = CapturedStep(graph, models.sgd(params), max_shapes=1)
    step.minimize(models.feeds(x, labels, 8, 1)[0])
    with pytest.raises(CaptureError, match=r"\(6, 20\).*max_shapes=1.*\(8, 20\)"):
        step.minimize(models.feeds(x, labels, 6, 1)[0])


def test_a_replaced_parameter_array_is_captured_again(cupy_backend):
    build, make_opt = CASES["mlp-sgd"]
    results = []
    for captured in (False, True):
        graph, params, x, labels = build()
        opt = make_opt(params)
        step = CapturedStep(graph, opt) if captured else None
        for k, f in enumerate(models.feeds(x, labels, 8, 5)):
            if k == 3:
                params[0].value = gn.to_numpy(params[0].value) * 0.5  # a new array (a load)
            step.minimize(f) if captured else opt.minimize(graph, f)
        results.append([gn.to_numpy(p.value) for p in params])
    _exact(results[1], results[0], "parameters")
    assert step.captures == 2


def test_dropout_is_refused_by_name(cupy_backend):
    graph, params, _, _ = models.mlp(dropout=0.5)
    with pytest.raises(CaptureError, match=r"random ops: 'dropout_\d+' \(dropout\)"):
        CapturedStep(graph, models.sgd(params))


def test_batch_norm_running_statistics_are_refused(cupy_backend):
    x = gn.Input("x", shape=(None, 3))
    labels = gn.Input("labels", shape=(None,), dtype="int64")
    gamma, beta = gn.Parameter(np.ones(3, np.float32)), gn.Parameter(np.zeros(3, np.float32))
    rm = gn.Parameter(np.zeros(3, np.float32), name="rm", trainable=False)
    rv = gn.Parameter(np.ones(3, np.float32), name="rv", trainable=False)
    cost = gn.softmax_cross_entropy(gn.batch_norm(x, gamma, beta, rm, rv), labels)
    graph = gn.Graph(cost, cost=cost)
    step = CapturedStep(graph, models.sgd([gamma, beta]))
    feed = {x: np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32),
            labels: np.array([0, 1, 2, 0])}
    with pytest.raises(CaptureError, match=r"replaces the arrays of \['rm', 'rv'\]"):
        step.minimize(feed)


class _Peek(gn.Node):
    """An op that reads its input's maximum on the host: a synchronisation in the step."""

    op = "peek"

    def __init__(self, x):
        super().__init__((x,), shape=x.shape)

    def forward(self, ctx, x):
        float(x.max())
        return x

    def backward(self, ctx, g, xs, y):
        return (g,)


def test_a_host_sync_inside_the_step_is_a_capture_error(cupy_backend):
    x = gn.Input("x", shape=(None, 20))
    labels = gn.Input("labels", shape=(None,), dtype="int64")
    w = gn.Parameter(np.ones((20, 10), np.float32) * 0.1, name="w")
    cost = gn.softmax_cross_entropy(_Peek(gn.matmul(x, w)), labels)
    step = CapturedStep(gn.Graph(cost, cost=cost), models.sgd([w]))
    with pytest.raises(CaptureError, match="could not be captured.*(capturing|Capture)"):
        step.minimize(models.feeds(x, labels, 4, 1)[0])


def test_numpy_backend_is_refused(numpy_backend):
    graph, params, _, _ = models.mlp(dropout=0)
    with pytest.raises(CaptureError, match="needs the cupy backend.*'numpy'"):
        CapturedStep(graph, models.sgd(params))


def test_bad_arguments_are_named(cupy_backend):
    graph, params, _, _ = models.mlp(dropout=0)
    with pytest.raises(TypeError, match="graph must be a gn.Graph, got list"):
        CapturedStep([graph], models.sgd(params))
    with pytest.raises(TypeError, match="optimizer must be a graphnet Optimizer, got str"):
        CapturedStep(graph, "sgd")
    with pytest.raises(ValueError, match="max_shapes"):
        CapturedStep(graph, models.sgd(params), max_shapes=0)
    with pytest.raises(CaptureError, match="check_numerics=True"):
        CapturedStep(gn.Graph(graph.cost, cost=graph.cost, check_numerics=True),
                     models.sgd(params))


# --- the emulation's capture model (what makes a wrong replay fail) --------------------------
@pytest.fixture
def emulated_xp():
    if cupy_mode()[0] != "emulated":
        pytest.skip("tests of the CuPy emulation itself")
    with gn.use_backend("cupy") as b:
        yield b.xp


def test_emulated_capture_records_and_replays_on_the_same_arrays(emulated_xp):
    xp = emulated_xp
    x = xp.arange(4, dtype=xp.float32)
    stream = xp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        y = x * 2
        y += 1
        graph = stream.end_capture()
    assert np.isnan(y.get()).all()  # nothing ran during capture
    graph.launch(stream)
    assert y.get().tolist() == [1, 3, 5, 7]
    x[...] = 10  # a new input in the captured buffer
    graph.launch(stream)
    assert y.get().tolist() == [21] * 4


def test_emulated_capture_refuses_syncs_other_streams_and_the_null_stream(emulated_xp):
    xp = emulated_xp
    runtime_error = xp.cuda.runtime.CUDARuntimeError
    x = xp.ones(3, dtype=xp.float32)
    stream = xp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(runtime_error, match="cudaErrorStreamCaptureUnsupported"):
            float(x.sum())
        with pytest.raises(runtime_error, match="cudaErrorStreamCaptureInvalidated"):
            stream.end_capture()
    with stream:
        stream.begin_capture()
        with xp.cuda.Stream(non_blocking=True):
            with pytest.raises(runtime_error, match="another stream"):
                x + 1
        with pytest.raises(runtime_error):
            stream.end_capture()
    with pytest.raises(runtime_error, match="null"):
        xp.cuda.Stream.null.begin_capture()


def test_the_replay_benchmark_runs_and_agrees(cupy_backend):
    from benchmarks import bench_replay
    res = bench_replay.run("mlp", steps=3, batch=4, chunk=2)
    assert res["same_bits"] is True and res["steps"] == 3
    assert res["ms_per_step_plain"] > 0 and res["ms_per_step_replay"] > 0
