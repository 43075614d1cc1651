"""The generated step code (graphnet/stepgen.py): its source, its fallback to the reference
executor, and the errors a step raises, the same as the reference's.

Bit-identity with the reference executor is tested in tests/test_planner.py.
"""
from __future__ import annotations

import traceback

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, stepgen
from graphnet.errors import ArgumentTypeError, FeedError, GraphError, RunError
from graphnet.node import Node


def _model():
    gn.seed(0)
    return nn.Classifier(nn.MLP([8, 10], 784, "tanh"), (784,))


def _feed(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return {model.images: rng.standard_normal((n, 784)).astype(np.float32),
            model.labels: rng.integers(0, 10, n)}


def test_the_source_is_python_a_reader_can_print(numpy_backend):
    graph = _model().train_graph
    src = graph.planner.source()
    compile(src, "<test>", "exec")
    assert src.startswith("def step(") and "'linear+tanh'" in src and "'softmax_cross_entropy'" in src
    assert "into[" not in src and "final(" not in src
    hooked = graph.planner.source(into=True, on_final=True)
    assert "into[" in hooked and "final(" in hooked


def test_the_graph_shows_its_step_source(numpy_backend):
    graph = _model().train_graph
    assert graph.step_source() == graph.planner.source()
    assert graph.step_source(into=True, on_final=True) == graph.planner.source(into=True, on_final=True)
    with pytest.raises(ArgumentTypeError, match="source on_final.*1"):
        graph.step_source(on_final=1)
    reference = gn.Graph(graph.outputs, cost=graph.cost, plan="reference")
    assert reference.step_source().startswith("# no generated step") and "plan=reference" in reference.step_source()


def test_source_validates_its_arguments(numpy_backend):
    graph = _model().train_graph
    with pytest.raises(ArgumentTypeError, match="source into.*'yes'"):
        graph.planner.source(into="yes")
    with pytest.raises(GraphError, match="not part of this graph"):
        graph.planner.source(wrt=[gn.Input("elsewhere", (2,))])
    no_cost = gn.Graph(gn.Input("x", (2,)) * 2)
    with pytest.raises(GraphError, match="no cost"):
        no_cost.planner.source()


def _steps(graph, feeds):
    out = []
    for n, feed in enumerate(feeds):
        cost, grads = graph.gradients(feed, return_cost=True, rng_key=(2, n))
        out.append([gn.to_numpy(cost)] + [gn.to_numpy(grads[p]) for p in graph.parameters()])
    return out


def _check_same(a, b):
    for sa, sb in zip(a, b):
        for x, y in zip(sa, sb):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("why", ["check_numerics", "too many steps"])
def test_a_plan_the_generator_does_not_handle_runs_on_the_reference(numpy_backend, monkeypatch,
                                                                      why):
    model = _model()
    graph = model.train_graph
    if why == "check_numerics":
        graph = gn.Graph(graph.outputs, cost=graph.cost, check_numerics=True)
        expected = "check_numerics"
    else:
        monkeypatch.setattr(stepgen, "MAX_STEPS", 3)
        expected = "MAX_STEPS = 3"
    ref = gn.Graph(graph.outputs, cost=graph.cost, plan="reference")
    feeds = [_feed(model, n, seed=n) for n in (4, 4, 3)]
    _check_same(_steps(graph, feeds), _steps(ref, feeds))
    if why != "check_numerics":  # check_numerics never reaches the planner
        code = graph.planner.generated(graph._targets(None), False, False)
        assert code.run is None
        assert code.source.startswith("# no generated step") and expected in code.source
    assert graph.step_source().startswith("# no generated step") and expected in graph.step_source()


class _Boom(Node):
    """An op whose forward raises ``exc``."""

    op = "boom"

    def __init__(self, x, exc):
        super().__init__((x,), shape=x.shape)
        self.exc = exc

    def forward(self, ctx, x):
        raise self.exc

    def backward(self, ctx, g, xs, y):
        return (g,)


def _boom_graphs(exc):
    x = gn.Input("x", (None, 3))
    w = gn.Parameter(np.ones((3, 3), np.float32), name="w")
    cost = gn.sum(_Boom(gn.tanh(x @ w), exc))
    return x, [gn.Graph(cost, cost=cost, plan=plan) for plan in ("step", "reference")]


def test_a_failing_op_raises_the_same_run_error_as_the_reference(numpy_backend):
    x, graphs = _boom_graphs(ValueError("no luck"))
    messages = []
    for graph in graphs:
        with pytest.raises(RunError, match="op 'boom' at node 'boom_.*failed on inputs.*no luck") as e:
            graph.gradients({x: np.ones((2, 3), np.float32)})
        assert isinstance(e.value.__cause__, ValueError)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert graphs[0].planner._code[(graphs[0]._targets(None), False, False)].run is not None


def test_out_of_memory_and_feed_errors_pass_through_as_they_are(numpy_backend):
    x, graphs = _boom_graphs(MemoryError("out of memory"))
    for graph in graphs:
        with pytest.raises(MemoryError):
            graph.gradients({x: np.ones((2, 3), np.float32)})
        with pytest.raises(FeedError, match="'x' was not fed"):
            graph.gradients({})


def test_a_traceback_through_the_generated_step_shows_its_lines(numpy_backend):
    x, graphs = _boom_graphs(ValueError("no luck"))
    try:
        graphs[0].gradients({x: np.ones((2, 3), np.float32)})
    except RunError as e:
        text = "".join(traceback.format_exception(e.__cause__))
    assert "<graphnet step" in text and "'boom'" in text  # the generated line's comment


class _Widen(Node):
    """The identity, whose gradient comes back as float64 (the engine keeps the input's dtype)."""

    op = "widen"

    def __init__(self, x):
        super().__init__((x,), shape=x.shape)

    def forward(self, ctx, x):
        return x

    def backward(self, ctx, g, xs, y):
        return (g.astype(np.float64),)


def test_gradients_keep_their_nodes_dtype_once_and_when_summed(numpy_backend):
    x = gn.Input("x", (None, 3))
    once = gn.sum(_Widen(x) * 3)
    summed = gn.sum(_Widen(x) * 3) + gn.sum(_Widen(x) * _Widen(x))
    feed = {x: np.arange(6, dtype=np.float32).reshape(2, 3) / 7}
    for cost in (once, summed):
        grads = [gn.Graph(cost, cost=cost, plan=plan).gradients(feed, wrt=[x])[x]
                 for plan in ("step", "reference")]
        for g in grads:
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, grads[-1])


@pytest.mark.parametrize("training", [True, False])
def test_dropout_and_batch_norm_steps_match_in_and_out_of_training(backend, training):
    """``training`` and ``rng_key`` reach the ops the same way through the generated step."""
    x = gn.Input("x", (None, 6))
    w = gn.Parameter(np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4), name="w")
    gamma = gn.Parameter(np.ones(4, np.float32), name="gamma")
    beta = gn.Parameter(np.zeros(4, np.float32), name="beta")
    h = gn.ops.dropout(gn.relu(gn.ops.batch_norm(x @ w, gamma, beta)), 0.5)
    cost = gn.mean(h * h)
    rng = np.random.default_rng(1)
    results = []
    for plan in ("step", "reference"):
        graph = gn.Graph(h, cost=cost, plan=plan)
        out = []
        for n in (5, 5, 3):
            feed = {x: backend.asarray(np.asarray(rng.standard_normal((n, 6)), np.float32))}
            c, g = graph.gradients(feed, return_cost=True, training=training, rng_key=(3, n))
            out.append([gn.to_numpy(c)] + [gn.to_numpy(g[p]) for p in (w, gamma, beta)])
        rng = np.random.default_rng(1)
        results.append(out)
    _check_same(results[0], results[1])


class _BoomBack(Node):
    """The identity, whose backward raises ``exc``."""

    op = "boom_back"

    def __init__(self, x, exc):
        super().__init__((x,), shape=x.shape)
        self.exc = exc

    def forward(self, ctx, x):
        return x

    def backward(self, ctx, g, xs, y):
        raise self.exc


@pytest.mark.parametrize("phase", ["forward", "backward"])
@pytest.mark.parametrize("plan", ["step", "reference"])
def test_out_of_memory_names_the_node_the_phase_and_the_batch(numpy_backend, phase, plan):
    x = gn.Input("x", (None, 3))
    w = gn.Parameter(np.ones((3, 3), np.float32), name="w")
    node = (_Boom if phase == "forward" else _BoomBack)(gn.tanh(x @ w), MemoryError("no room"))
    cost = gn.sum(node)
    graph = gn.Graph(cost, cost=cost, plan=plan)
    with pytest.raises(gn.OutOfMemoryError, match=rf"out of host memory in the {phase} of op "
                       rf"'{node.op}' at node '{node.name}', batch of 7: reduce the batch size") as e:
        graph.gradients({x: np.ones((7, 3), np.float32)})
    assert isinstance(e.value, MemoryError) and isinstance(e.value.__cause__, MemoryError)
    if phase == "forward":
        with pytest.raises(gn.OutOfMemoryError, match="batch of 5"):
            graph.run({x: np.ones((5, 3), np.float32)})


@pytest.mark.parametrize("plan", ["step", "reference"])
def test_a_failing_backward_names_its_node(numpy_backend, plan):
    x = gn.Input("x", (None, 3))
    node = _BoomBack(gn.tanh(x * 2), ValueError("bad gradient"))
    graph = gn.Graph(gn.sum(node), cost=gn.sum(node), plan=plan)
    with pytest.raises(RunError, match=r"op 'boom_back' at node .*bad gradient \(backward\)"):
        graph.gradients({x: np.ones((2, 3), np.float32)}, wrt=[x])
