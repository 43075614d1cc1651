"""The generated step code (graphnet/stepgen.py) on what its mutants slipped past: the
errors a step raises (the reference's), the step limit, the source's variants, and large
graphs whose value list and hand-out span several lines of generated code.

See docs/testing.md, "Mutation testing" (stepgen.py).
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import stepgen
from graphnet.errors import FeedError, GraphError, RunError
from graphnet.testing import assert_close

from test_planner import _ran_generated
from test_planner_mutants import _pair as _both, _same


def _chain(backend, layers: int):
    """``layers`` parameters, each used once in a chain: a long value list and many targets."""
    rng = np.random.default_rng(3)
    x = gn.Input("x", (None, 4))
    labels = gn.Input("labels", (None,), dtype=np.int64)
    params, h = [], x
    for k in range(layers):
        w = gn.Parameter(backend.asarray(rng.standard_normal((4, 4)).astype(np.float32) * 0.5),
                         name=f"w{k}")
        c = gn.Parameter(backend.asarray(rng.standard_normal(4).astype(np.float32)), name=f"c{k}")
        params += [w, c]
        h = gn.tanh(h @ w) + c
    cost = gn.softmax_cross_entropy(h, labels)
    return x, labels, params, h, cost


def _chain_feed(x, labels, n, seed, backend):
    rng = np.random.default_rng(seed)
    return {x: backend.asarray(rng.standard_normal((n, 4)).astype(np.float32)),
            labels: backend.asarray(rng.integers(0, 4, n))}


def test_a_long_chain_gives_the_references_values_and_gradients(backend):
    x, labels, params, h, cost = _chain(backend, 7)
    step, ref = _both([h], cost)
    wrt = params + [x]
    for n, size in enumerate((5, 3)):
        feed = _chain_feed(x, labels, size, n, backend)
        g2 = ref.gradients(feed, wrt=wrt)
        into = {p: backend.xp.full(tuple(g.shape), 9.0, dtype=g.dtype) for p, g in g2.items()}
        for kind in ("fresh", "into"):
            g1 = step.gradients(feed, wrt=wrt, into=into if kind == "into" else None)
            assert list(g1) == wrt
            for p in wrt:
                _same(g1[p], g2[p], f"{kind} gradient of {p.name}, step {n}")
        for a, b in zip(step.values(feed, [h, cost]), ref.values(feed, [h, cost])):
            _same(a, b, f"values, step {n}")
    assert _ran_generated(step, wrt, False) and _ran_generated(step, wrt, True)


def test_the_source_with_into_alone_writes_into_the_arrays(numpy_backend):
    x, labels, params, h, cost = _chain(numpy_backend, 2)
    graph = gn.Graph([h], cost=cost)
    src = graph.step_source(into=True)
    assert "into[" in src and "return values, {" in src and "final(" not in src
    assert "return values, [" in graph.step_source()


def test_a_plan_of_exactly_max_steps_is_generated_and_one_more_is_not(numpy_backend, monkeypatch):
    x, labels, params, h, cost = _chain(numpy_backend, 2)
    feed = _chain_feed(x, labels, 3, 0, numpy_backend)
    probe = gn.Graph([h], cost=cost)
    plan = probe.planner.plan(probe._targets(None))
    n = len(plan.forward.steps) + len(plan.backward)
    expect = gn.Graph([h], cost=cost, plan="reference").gradients(feed)
    for limit, generated in ((n, True), (n - 1, False)):
        monkeypatch.setattr(stepgen, "MAX_STEPS", limit)
        graph = gn.Graph([h], cost=cost)
        got = graph.gradients(feed)
        assert _ran_generated(graph, None, False) is generated, limit
        src = graph.step_source()
        if not generated:
            assert f"the plan has {n} steps, more than stepgen.MAX_STEPS = {limit}" in src
        for p in params:
            _same(got[p], expect[p], f"gradient of {p.name} with MAX_STEPS={limit}")


def test_a_missing_input_is_named_as_the_reference_names_it(numpy_backend):
    x, labels, params, h, cost = _chain(numpy_backend, 1)
    feed = _chain_feed(x, labels, 3, 0, numpy_backend)
    del feed[labels]
    messages = []
    for graph in _both([h], cost):
        with pytest.raises(FeedError) as e:
            graph.gradients(feed)
        assert "'labels'" in str(e.value) and e.value.__cause__ is None
        messages.append(str(e.value))
    assert messages[0] == messages[1]


def test_a_parameter_on_another_backend_is_named_as_the_reference_names_it(numpy_backend):
    from graphnet.backends.numpy_backend import NumpyBackend
    x = gn.Input("x", (None, 3))
    w = gn.Parameter(np.ones((3, 2), np.float32), name="w")
    cost = gn.sum(x @ w)
    feed = {x: np.ones((2, 3), np.float32)}
    w.backend = NumpyBackend()  # same arrays, another backend object: not this graph's
    messages = []
    for graph in _both([cost], cost):
        with pytest.raises(GraphError, match="parameter 'w' lives on") as e:
            graph.gradients(feed)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


def test_a_constant_leaf_is_read_as_it_is(backend):
    x = gn.Input("x", (None, 3))
    c = gn.Constant(backend.asarray(np.array([1.0, -2.0, 0.5], np.float32)), name="c")
    cost = gn.sum(gn.tanh(x * c))
    feed = {x: backend.asarray(np.full((2, 3), 0.25, np.float32))}
    step, ref = _both([cost], cost)
    _same(step.gradients(feed, wrt=[x])[x], ref.gradients(feed, wrt=[x])[x], "x's gradient")
    assert_close(step.gradients(feed, wrt=[x])[x],
                 np.broadcast_to((1 - np.tanh(0.25 * np.array([1.0, -2.0, 0.5])) ** 2)
                                 * np.array([1.0, -2.0, 0.5]), (2, 3)).astype(np.float32),
                 what="x's gradient by hand")


# --- errors from inside a step -----------------------------------------------------------------
class _Fails(gn.Node):
    """Multiplies its two inputs; raises ``exc`` in ``phase``."""

    op = "fails"

    def __init__(self, x, y, exc, phase):
        super().__init__((x, y), shape=x.shape)
        self.exc, self.phase = exc, phase

    def forward(self, ctx, x, y):
        if self.phase == "forward":
            raise self.exc
        return x * y

    def backward(self, ctx, g, xs, y):
        if self.phase == "backward":
            raise self.exc
        return g * xs[1], g * xs[0]


@pytest.mark.parametrize("phase", ["forward", "backward"])
@pytest.mark.parametrize("exc", [ValueError("no luck"), MemoryError("no room"),
                                 FeedError("fed wrong"), GraphError("built wrong"),
                                 gn.NumericsError("not finite"), gn.OutOfMemoryError("full")],
                         ids=lambda e: type(e).__name__)
def test_an_error_inside_a_step_is_the_references_error(numpy_backend, phase, exc):
    """Every kind of error from a forward or a backward: the same type, message and cause as on
    the reference executor, naming the node and its inputs' shapes where it wraps."""
    x = gn.Input("x", (None, 3))
    w = gn.Parameter(np.full((3, 3), 0.5, np.float32), name="w")
    h = gn.tanh(x @ w)
    bad = _Fails(h, gn.exp(h), exc, phase)
    cost = gn.sum(bad * 2.0)
    raised = []
    for graph in _both([cost], cost):
        with pytest.raises(Exception) as e:
            graph.gradients({x: np.ones((4, 3), np.float32)})
        raised.append(e.value)
    as_is = (GraphError, gn.OutOfMemoryError) + ((FeedError, gn.NumericsError)
                                                 if phase == "forward" else ())
    (a, b), wraps = raised, not isinstance(exc, as_is)
    assert type(a) is type(b) and str(a) == str(b)
    assert (a is exc) is (not wraps) and (a.__cause__ is exc) is wraps
    if wraps and not isinstance(exc, MemoryError):
        assert isinstance(a, RunError) and "'fails'" in str(a) and "(4, 3)" in str(a)


def test_the_gradient_of_the_costs_own_input_is_handed_out(backend):
    x = gn.Input("x", (None, 3))
    h = gn.tanh(x) * 2.0
    cost = gn.sum(h)
    step, ref = _both([cost], cost)
    feed = {x: backend.asarray(np.full((2, 3), 0.5, np.float32))}
    g1, g2 = step.gradients(feed, wrt=[h, x]), ref.gradients(feed, wrt=[h, x])
    _same(g1[h], np.ones((2, 3), np.float32), "the gradient of the cost's input")
    _same(g1[x], g2[x], "x's gradient")
    assert _ran_generated(step, [h, x], False)


def test_a_step_python_cannot_compile_runs_on_the_reference_and_says_why(numpy_backend,
                                                                        monkeypatch):
    def refuse(*args, **kwargs):
        raise SyntaxError("too deep")
    x, labels, params, h, cost = _chain(numpy_backend, 1)
    feed = _chain_feed(x, labels, 3, 0, numpy_backend)
    expect = gn.Graph([h], cost=cost, plan="reference").gradients(feed)
    monkeypatch.setattr(stepgen, "compile", refuse, raising=False)
    graph = gn.Graph([h], cost=cost)
    got = graph.gradients(feed)
    assert not _ran_generated(graph, None, False)
    assert graph.step_source() == ("# no generated step: Python could not compile it: "
                                   "SyntaxError('too deep'); it runs on the reference executor\n")
    for p in params:
        _same(got[p], expect[p], f"gradient of {p.name}")


def test_the_steps_lines_are_in_linecache_while_its_graph_lives(numpy_backend):
    """Tracebacks and debuggers read the step's lines from linecache (each line with its end,
    as linecache keeps files); the entry goes with the graph, quietly, even if linecache was
    cleared meanwhile."""
    import gc
    import linecache
    import sys
    x, labels, params, h, cost = _chain(numpy_backend, 1)
    unraisable = []
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        names = []
        for clear in (False, True):
            graph = gn.Graph([h], cost=cost)
            graph.gradients(_chain_feed(x, labels, 2, 0, numpy_backend))
            step = graph.planner._code[(graph._targets(None), False, False)]
            name = step.run.__code__.co_filename
            assert linecache.getlines(name) == step.source.splitlines(True)
            names.append(name)
            if clear:
                linecache.clearcache()
            del graph, step
            gc.collect()
            assert name not in linecache.cache
        assert unraisable == [] and names[0] != names[1]
    finally:
        sys.unraisablehook = old_hook
