"""What a training step (graphnet/planner.py) hands the ops it runs: arrays offered for the
gradients, the run's flag and key, arena arrays; and what it hands back: the cost and the
gradients as arrays no later step writes over; plans built once.

Part of the planner's mutation tests (tests/test_planner_mutants.py; docs/testing.md,
"Mutation testing").
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import planner
from graphnet.errors import ArgumentTypeError, GraphError

from test_planner import _ran_generated
from test_planner_mutants import _into, _pair, _same



class _Probe(gn.Node):
    """Sums its inputs (broadcast to the first's shape) and records, per run, its context: the
    training flag, the rng key, whether ``empty`` gave arena arrays, and in backward the
    gradients needed, the arrays offered and what forward saved. Opts in to every offer."""

    op = "probe"
    seen: list = []

    def __init__(self, *xs):
        super().__init__(xs, shape=xs[0].shape)

    def forward(self, ctx, *xs):
        out = ctx.empty(tuple(xs[0].shape), xs[0].dtype)
        out[...] = sum(xs)
        ctx.save(("kept by", self.name))
        _Probe.seen.append(("forward", ctx.training, ctx.rng_key, _in_arena(ctx, out)))
        return out

    def backward(self, ctx, g, xs, y):
        offers = [ctx.grad_out(k, x.dtype) for k, x in enumerate(xs)]
        scratch = ctx.empty(tuple(g.shape), g.dtype, slot=1)
        _Probe.seen.append(("backward", ctx.training, ctx.needs, offers, _in_arena(ctx, scratch),
                            ctx.saved()))
        grads = []
        for k, x in enumerate(xs):
            if not ctx.needs[k]:
                grads.append(None)
                continue
            gk = g if x.shape == g.shape else g.sum(axis=tuple(range(g.ndim - x.ndim)))
            if offers[k] is not None:
                offers[k][...] = gk
                gk = offers[k]
            grads.append(gk)
        return tuple(grads)


def _in_arena(ctx, array):
    arena = getattr(ctx, "arena", None)
    return arena is not None and id(array) in arena.ids


def _probe_graph():
    x = gn.Input("x", (None, 3))
    w = gn.Parameter(np.full((3, 3), 0.5, np.float32), name="w")
    bias = gn.Parameter(np.arange(3, dtype=np.float32), name="bias")
    c = gn.Constant(np.ones(3, np.float32), name="c")
    h = gn.tanh(x @ w)                      # 2-d, needs a gradient, not differentiated
    v = gn.sum(h, axis=0)                   # 1-d
    s = gn.sum(h)                           # 0-d
    p = _Probe(h, h, bias, c, v, s)         # h twice; c needs no gradient
    return x, w, bias, h, v, s, p, gn.sum(gn.tanh(p))


def test_a_step_offers_arrays_where_the_plan_promises_them(numpy_backend):
    """Offered to a needed input of rank >= 1, once per input, never to one that needs no
    gradient or is 0-d; with ``into=``, a differentiated input is offered its own array. The
    reference offers nothing. Either way the gradients are the same."""
    x, w, bias, h, v, s, p, cost = _probe_graph()
    step, ref = _pair([cost], cost)
    feed = {x: np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
    for into in (False, True):
        _Probe.seen.clear()
        g2 = ref.gradients(feed, wrt=[w, bias])
        given = _into(g2, numpy_backend) if into else None
        g1 = step.gradients(feed, wrt=[w, bias], into=given)
        (_, ref_train, ref_needs, ref_offers, _, _), (_, train, needs, offers, _, _) = \
            [e for e in _Probe.seen if e[0] == "backward"]
        assert ref_needs == needs == (True, True, True, False, True, True)
        assert ref_offers == [None] * 6 and ref_train is train is True
        assert [o is not None for o in offers] == [True, False, into, False, True, False]
        assert offers[2] is (given[bias] if into else None)
        for node in (w, bias):
            _same(g1[node], g2[node], f"gradient of {node.name}")
        assert _ran_generated(step, [w, bias], into)


@pytest.mark.parametrize("training", [True, False])
def test_a_step_gives_its_ops_the_flag_the_key_and_arena_arrays(numpy_backend, training):
    x, w, bias, h, v, s, p, cost = _probe_graph()
    step, ref = _pair([cost], cost)
    feed = {x: np.ones((2, 3), np.float32)}
    for graph in (step, ref):
        _Probe.seen.clear()
        graph.gradients(feed, wrt=[w], training=training, rng_key=(4, 2))
        forward, backward = _Probe.seen
        assert forward[:3] == ("forward", training, (4, 2)) and backward[1] is training
        assert forward[3] is backward[4] is (graph is step)
        assert backward[5] == ("kept by", p.name)


def test_the_cost_array_is_never_an_arena_array(numpy_backend):
    """The cost's value is handed out: a later step must not write over it."""
    x = gn.Input("x", (None, 3))
    w = gn.Parameter(np.full((3, 2), 0.5, np.float32), name="w")
    cost = _Probe(gn.sum(gn.tanh(x @ w)))
    graph = gn.Graph(cost, cost=cost)
    first = graph.gradients({x: np.ones((2, 3), np.float32)}, return_cost=True)[0]
    kept = gn.to_numpy(first).copy()
    second = graph.gradients({x: np.full((2, 3), 2.0, np.float32)}, return_cost=True)[0]
    assert float(second) != float(kept)
    _same(first, kept, "the first cost, after the second step")


def test_a_gradient_that_is_an_arena_array_is_copied_out(backend):
    """s's gradient is the very array its consumer's gradient was written into: handed out,
    it must not change with the next step."""
    x = gn.Input("x", (None, 3))
    s = gn.tanh(x) * 2.0
    cost = gn.sum(gn.tanh(s + 1.0))
    step, ref = _pair([cost], cost)
    feeds = [{x: backend.asarray(np.full((2, 3), k, np.float32))} for k in (0.1, 0.7)]
    first = step.gradients(feeds[0], wrt=[s])[s]
    kept = gn.to_numpy(first).copy()
    step.gradients(feeds[1], wrt=[s])
    _same(first, kept, "s's gradient from the first step")
    _same(first, ref.gradients(feeds[0], wrt=[s])[s], "s's gradient")


class _Unknown(gn.Node):
    """The identity, of a shape known only when it runs."""

    op = "unknown"

    def __init__(self, x):
        super().__init__((x,))

    def forward(self, ctx, x):
        return x

    def backward(self, ctx, g, xs, y):
        return (g,)


def test_a_non_scalar_cost_is_named_in_a_step(numpy_backend):
    x = gn.Input("x", (None, 3))
    cost = _Unknown(gn.tanh(x))
    graph = gn.Graph(cost, cost=cost)
    with pytest.raises(GraphError, match=r"the cost must be a scalar, but 'unknown_\d+' has "
                                         r"shape \(2, 3\) at run time"):
        graph.gradients({x: np.ones((2, 3), np.float32)}, wrt=[x])
    assert _ran_generated(graph, [x], False)


def test_plans_code_and_forward_plans_are_built_once(numpy_backend, monkeypatch):
    calls = []
    real = planner.generate
    monkeypatch.setattr(planner, "generate", lambda *a: calls.append(1) or real(*a))
    x = gn.Input("x", (None, 3))
    w = gn.Parameter(np.full((3, 2), 0.5, np.float32), name="w")
    y = gn.relu(gn.linear(x, w))
    graph = gn.Graph(y, cost=gn.sum(y))
    feed = {x: np.ones((2, 3), np.float32)}
    for _ in range(3):
        graph.gradients(feed)
        graph.run(feed)
    targets = graph._targets(None)
    assert len(calls) == 1 and graph.planner.plan(targets) is graph.planner.plan(targets)
    assert graph.planner.forward_plan([y]) is graph.planner.forward_plan([y])
    with pytest.raises(ArgumentTypeError, match=r"^values\(nodes=\.\.\.\) takes a list"):
        graph.values(feed, y)


def test_a_step_runs_the_kernels_of_its_backend(numpy_backend):
    """An op calling ``ctx.kernels[k]`` gets the backend's override of ``k`` in a step too."""
    from graphnet.kernels import kernel

    @kernel
    def twice(be, x):
        return x * 2

    @twice.override("numpy")
    def _(be, x):
        return x * 3

    class Kernelled(gn.Node):
        op = "kernelled"

        def __init__(self, x):
            super().__init__((x,), shape=x.shape)

        def forward(self, ctx, x):
            return ctx.kernels[twice](ctx.b, x)

        def backward(self, ctx, g, xs, y):
            return (ctx.kernels[twice](ctx.b, g),)

    x = gn.Input("x", (None, 2))
    cost = gn.sum(Kernelled(x))
    for graph in _pair([cost], cost):
        _same(graph.gradients({x: np.ones((2, 2), np.float32)}, wrt=[x])[x],
              np.full((2, 2), 3, np.float32), f"{graph.plan}: the gradient by the override")


class _Ident(gn.Node):
    """The identity; records whether the gradient it gets is an arena array."""

    op = "ident"
    grads_in_arena: list = []

    def __init__(self, x):
        super().__init__((x,), shape=x.shape)

    def forward(self, ctx, x):
        return x * 1.0

    def backward(self, ctx, g, xs, y):
        _Ident.grads_in_arena.append(_in_arena(ctx, g))
        return (g,)


def test_a_gradient_from_several_consumers_is_summed_into_its_arena_array(numpy_backend):
    """The first consumer (backward runs latest first: the probe) writes h's gradient into an
    arena array; the others add into it there (no new array per contribution), and h's
    producer gets that array."""
    x = gn.Input("x", (None, 3))
    h = _Ident(x)
    cost = gn.sum(gn.tanh(h)) + gn.sum(h * h) + gn.sum(gn.tanh(_Probe(h)))  # the probe first
    step, ref = _pair([cost], cost)
    feed = {x: np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
    _Ident.grads_in_arena.clear()
    for _ in range(2):
        _same(step.gradients(feed, wrt=[x])[x], ref.gradients(feed, wrt=[x])[x], "x's gradient")
    assert _Ident.grads_in_arena == [True, False] * 2


class _Saver(gn.Node):
    """The identity; its forward saves a value if ``keep``; its backward records what it finds."""

    op = "saver"
    found: list = []

    def __init__(self, x, keep):
        super().__init__((x,), shape=x.shape)
        self.keep = keep

    def forward(self, ctx, x):
        if self.keep:
            ctx.save("from an earlier run")
        return x * 1.0

    def backward(self, ctx, g, xs, y):
        _Saver.found.append(ctx.saved())
        return (g,)


def test_what_a_run_saves_stays_in_that_run(numpy_backend):
    """A value saved by one step's forward is not seen by another graph's step."""
    x = gn.Input("x", (None, 3))
    feed = {x: np.ones((2, 3), np.float32)}
    _Saver.found.clear()
    for keep in (True, False):  # the two savers sit at the same place in their graphs
        cost = gn.sum(_Saver(gn.tanh(x), keep))
        gn.Graph(cost, cost=cost).gradients(feed, wrt=[x])
    assert _Saver.found == ["from an earlier run", None]
