"""The step planner (graphnet/planner.py) on the graphs its mutants slipped past: the
generated step against the reference executor, bit for bit, on graphs with shared nodes,
views, several outputs, leaves of every kind, fused pairs and batch sizes that re-plan; the
arena, the offered arrays, the fusion conditions and the planner's errors.

See docs/testing.md, "Mutation testing" (planner.py).
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import planner
from graphnet.errors import ArgumentTypeError, GraphError
from graphnet.planner import Arena, StepContext, register_fusion
from graphnet.testing import assert_close

from test_planner import _ran_generated


def _same(a, b, what):
    assert_close(a, b, rtol=0, atol=0, what=what, check_dtype=gn.to_numpy(b).dtype)


def _mixed(backend, dtype=np.float32):
    """Leaves of every kind, a shared node, views, a fused linear + relu, several outputs:
    parameters the cost does not read, one through an op and two as they are."""
    rng = np.random.default_rng(7)
    x = gn.Input("x", (None, 6), dtype=dtype)
    w = gn.Parameter(backend.asarray(rng.standard_normal((6, 5)).astype(dtype)), name="w")
    b = gn.Parameter(backend.asarray(rng.standard_normal(5).astype(dtype)), name="b")
    v = gn.Parameter(backend.asarray(rng.standard_normal((5, 4)).astype(dtype)), name="v")
    unused = gn.Parameter(backend.asarray(np.ones(3, dtype)), name="unused")
    c = gn.Constant(backend.asarray(np.full(4, 0.5, dtype)), name="c")
    h = gn.relu(gn.linear(x, w, b))          # fused: the linear's value is needed nowhere else
    s = gn.tanh(h @ v)                        # read three times below
    t = gn.transpose(s)                       # a view
    u = s * s + gn.sigmoid(s) * c             # the same input twice in one op
    out2 = gn.reshape(gn.transpose(t), (-1,))
    cost = gn.mean(u * u) + gn.sum(out2) * 0.25
    params = [w, b, v, unused]
    spares = [gn.Parameter(backend.asarray(np.ones(2, dtype)), name=f"spare{k}") for k in (1, 2)]
    params += spares  # outputs themselves: no step of the cost's reads them
    return x, params, [u, out2, unused * 2.0, *spares], cost


def _feed(x, n, seed, backend, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {x: backend.asarray(rng.standard_normal((n, 6)).astype(dtype))}


def _pair(outputs, cost):
    return gn.Graph(outputs, cost=cost), gn.Graph(outputs, cost=cost, plan="reference")


def _into(like, backend):
    """Arrays for ``into=``, shaped like the gradients ``like`` and full of sevens."""
    return {p: backend.xp.full(tuple(g.shape), 7.0, dtype=g.dtype) for p, g in like.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_steps_match_the_reference_bit_for_bit_across_batch_sizes(backend, dtype):
    x, params, outs, cost = _mixed(backend, dtype)
    step, ref = _pair(outs, cost)
    held = []
    for n, size in enumerate((3, 3, 5, 2, 5)):  # a new batch size replaces the arena's arrays
        feed = _feed(x, size, n, backend, dtype)
        c1, g1 = step.gradients(feed, return_cost=True, rng_key=(0, n))
        c2, g2 = ref.gradients(feed, return_cost=True, rng_key=(0, n))
        _same(c1, c2, f"cost, step {n}")
        for p in params:
            _same(g1[p], g2[p], f"gradient of {p.name}, step {n}")
        held.append((gn.to_numpy(c1).copy(), {p: gn.to_numpy(g1[p]).copy() for p in params},
                     c1, g1))
        for a, b in zip(step.run(feed), ref.run(feed)):
            _same(a, b, f"outputs, step {n}")
    for n, (cost_copy, grads_copy, c1, g1) in enumerate(held):  # no later step wrote over them
        _same(c1, cost_copy, f"cost kept from step {n}")
        for p in params:
            _same(g1[p], grads_copy[p], f"gradient of {p.name} kept from step {n}")
    assert step.planner.fused_ops(step._targets(None)) == ["linear+relu"]
    assert _ran_generated(step, None, False)


def test_steps_with_into_and_on_final_match_the_reference(backend):
    x, params, outs, cost = _mixed(backend)
    step, ref = _pair(outs, cost)
    wrt = params + [x]
    for n, size in enumerate((4, 4, 2)):
        feed = _feed(x, size, 10 + n, backend)
        g2 = ref.gradients(feed, wrt=wrt)
        for hooked in (False, True):
            into = _into(g2, backend)
            seen = []

            def report(node):
                seen.append((node, gn.to_numpy(into[node]).copy()))
            g1 = step.gradients(feed, wrt=wrt, into=into, on_final=report if hooked else None)
            assert set(g1) == set(wrt)
            for p in wrt:
                assert g1[p] is into[p], p.name
                _same(g1[p], g2[p], f"into gradient of {p.name}, step {n}")
            if hooked:
                order = []
                ref.gradients(feed, wrt=wrt, into=_into(g2, backend), on_final=order.append)
                # latest nodes first, as on the reference; the spares, which no step reads,
                # only once backward is over (the reference reports everything then)
                got, ref_order = [node.name for node, _ in seen], [node.name for node in order]
                late = [name for name in ref_order if name.startswith("spare")]
                assert got == [name for name in ref_order if name not in late] + late
                for node, value in seen:
                    _same(value, g2[node], f"gradient of {node.name} when reported")
            assert _ran_generated(step, wrt, True, on_final=hooked)


def test_a_gradient_is_the_sum_over_every_consumer(backend):
    """x read by four ops, one of them twice: the step and the reference agree, and both agree
    with the gradient written out by hand."""
    x = gn.Input("x", (None, 3))
    cost = gn.sum(x * x) + gn.sum(gn.tanh(x)) + gn.sum(x * 3.0)
    step, ref = _pair([cost], cost)
    xv = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    feed = {x: backend.asarray(xv)}
    for _ in range(2):
        g1, g2 = step.gradients(feed, wrt=[x])[x], ref.gradients(feed, wrt=[x])[x]
        _same(g1, g2, "x's gradient")
    expect = 2 * xv + (1 - np.tanh(xv) ** 2) + 3
    assert_close(g1, expect, rtol=1e-6, atol=1e-6, what="x's gradient by hand")


def test_an_unused_target_gets_zero_and_the_cost_stays_a_fresh_array(backend):
    x, params, outs, cost = _mixed(backend)
    step, _ = _pair(outs, cost)
    feed = _feed(x, 3, 1, backend)
    c1, g1 = step.gradients(feed, return_cost=True)
    into = _into(g1, backend)
    step.gradients(feed, into=into)
    for p in params[3:]:
        _same(g1[p], np.zeros(p.shape, np.float32), f"{p.name}'s gradient")
        _same(into[p], np.zeros(p.shape, np.float32), f"{p.name}'s into array")
    assert all(id(c1) != i for i in step.planner.arena.ids)


# --- the arena and the step context -----------------------------------------------------------
def test_the_arena_keeps_an_array_until_its_shape_or_dtype_changes(backend):
    arena = Arena(backend.xp)
    a = arena.get("k", (2, 3), np.float32)
    assert arena.get("k", (2, 3), np.float32) is a and arena.ids == {id(a)}
    assert arena.nbytes() == 24
    b = arena.get("k", (4, 3), np.float32)
    assert b is not a and b.shape == (4, 3) and arena.ids == {id(b)} and arena.nbytes() == 48
    c = arena.get("k", (4, 3), np.float64)
    assert c.dtype == np.float64 and arena.ids == {id(c)} and arena.nbytes() == 96
    d = arena.get("other", (1,), np.float32)
    assert arena.ids == {id(c), id(d)} and arena.nbytes() == 100


def test_the_step_context_hands_out_arena_arrays_but_never_for_the_escaping_node(backend):
    arena = Arena(backend.xp)
    ctx = StepContext(backend, True, arena, escape=3)
    ctx.key = 2
    first = ctx.empty((2,), np.float32)
    assert ctx.empty((2,), np.float32) is first and ctx.empty((2,), np.float32, slot=1) is not first
    ctx.key = 3
    assert id(ctx.empty((2,), np.float32)) not in arena.ids
    plain = StepContext(backend, True, None)
    plain.key = 2
    assert plain.empty((2,), np.float32).shape == (2,) and arena.nbytes() == 16


def test_grad_out_offers_only_an_array_of_the_asked_dtype(backend):
    ctx = StepContext(backend, True, Arena(backend.xp))
    assert ctx.grad_out(0, np.float32) is None
    d = backend.xp.zeros(2, np.float32)
    ctx.dests = [None, d]
    assert ctx.grad_out(0, np.float32) is None
    assert ctx.grad_out(1, np.float32) is d
    assert ctx.grad_out(1, np.float64) is None


# --- fusion: where a registered rule applies --------------------------------------------------
class _ExpNeg:
    """``-exp(x)`` as one step, with the two ops' own arithmetic (a rule for these tests)."""

    def __init__(self, producer, consumer):
        self.producer, self.consumer = producer, consumer
        self.op, self.name = "exp+neg", consumer.name

    def forward(self, ctx, x):
        return self.consumer.forward(ctx, self.producer.forward(ctx, x))

    def backward(self, ctx, g, xs, y):
        e = self.producer.forward(ctx, xs[0])
        (gz,) = self.consumer.backward(ctx, g, (e,), y)
        return self.producer.backward(ctx, gz, xs, e)


@pytest.fixture
def exp_neg(monkeypatch):
    """Registers the exp -> neg rule for one test; ``when`` reads ``allowed``."""
    from graphnet.ops.arith import Neg
    from graphnet.ops.unary import Exp
    monkeypatch.setattr(planner, "_RULES", list(planner._RULES))
    allowed = {"ok": True}
    register_fusion(Exp, Neg, _ExpNeg, when=lambda node: allowed["ok"])
    assert planner.fusion_rules()[-1].build is _ExpNeg
    return allowed


def _exp_graph(extra: str):
    x = gn.Input("x", (None, 3))
    e = gn.exp(x * 0.5)
    y = gn.neg(e)
    outputs = [y]
    cost = gn.sum(y * y)
    if extra == "the cost":  # the producer is the cost: its value is handed out
        cost = gn.exp(gn.sum(x * 0.5))
        outputs, e = [gn.neg(cost)], cost
    elif extra == "read twice":
        cost = cost + gn.sum(e)
    elif extra == "an output":
        outputs.append(e)
    return x, e, outputs, cost


@pytest.mark.parametrize("extra", ["", "read twice", "an output", "differentiated", "refused",
                                   "the cost"])
def test_a_registered_rule_fuses_only_where_nothing_else_needs_the_producer(backend, exp_neg,
                                                                          extra):
    x, e, outputs, cost = _exp_graph(extra)
    exp_neg["ok"] = extra != "refused"
    wrt = [x, e] if extra == "differentiated" else [x]
    step, ref = _pair(outputs, cost)
    feed = {x: backend.asarray(np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3))}
    for _ in range(2):
        c1, g1 = step.gradients(feed, wrt=wrt, return_cost=True)
        c2, g2 = ref.gradients(feed, wrt=wrt, return_cost=True)
        _same(c1, c2, "cost")
        for node in wrt:
            _same(g1[node], g2[node], f"gradient of {node.name}")
    fused = ["exp+neg"] if extra == "" else []
    assert step.planner.fused_ops(step._targets(wrt)) == fused
    plan = step.planner.forward_plan(outputs)
    in_forward = 1 if extra in ("", "differentiated") else 0  # a forward pass wants no gradient
    assert [s.node.op for s in plan.steps].count("exp+neg") == in_forward
    for a, b in zip(step.run(feed), ref.run(feed)):
        _same(a, b, "outputs")


# --- the planner's doors ------------------------------------------------------------------------
def test_source_names_what_is_wrong_and_how_to_mend_it(numpy_backend):
    x = gn.Input("x", (None, 3))
    with pytest.raises(GraphError) as e:
        gn.Graph(gn.tanh(x)).step_source()
    assert str(e.value) == ("this graph has no cost, so no training step: build it as "
                            "gn.Graph(outputs, cost=loss)")
    cost = gn.sum(gn.tanh(x))
    graph = gn.Graph(cost, cost=cost)
    for kw, name in (({"into": "yes"}, "into"), ({"on_final": 1}, "on_final")):
        with pytest.raises(ArgumentTypeError, match=rf"^source {name} must be True or False"):
            graph.step_source(**kw)


def test_into_arrays_are_checked_again_when_they_change(numpy_backend):
    x = gn.Input("x", (None, 3))
    w = gn.Parameter(np.ones((3, 2), np.float32), name="w")
    cost = gn.sum(gn.tanh(x @ w))
    graph = gn.Graph(cost, cost=cost)
    feed = {x: np.ones((2, 3), np.float32)}
    into = {w: np.zeros((3, 2), np.float32)}
    graph.gradients(feed, into=into)
    for bad in (np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float64)):
        with pytest.raises(GraphError, match="the array for 'w' must be"):
            graph.gradients(feed, into={w: bad})
        into[w] = bad  # the same dict, a new array in it
        with pytest.raises(GraphError, match="the array for 'w' must be"):
            graph.gradients(feed, into=into)
        into[w] = np.zeros((3, 2), np.float32)
        graph.gradients(feed, into=into)


def test_a_forward_plan_refuses_a_node_given_alone_and_follows_check_numerics(numpy_backend):
    x = gn.Input("x", (None, 3))
    w = gn.Parameter(np.ones((3, 2), np.float32), name="w")
    y = gn.relu(gn.linear(x, w))
    graph = gn.Graph(y, cost=gn.sum(y))
    with pytest.raises(ArgumentTypeError, match=r"^forward_plan\(nodes=\.\.\.\) takes a list"):
        graph.planner.forward_plan(y)
    assert [s.node.op for s in graph.planner.forward_plan([y]).steps] == ["linear+relu"]
    graph.check_numerics = True
    assert [s.node.op for s in graph.planner.forward_plan([y]).steps] == ["linear", "relu"]
    graph.gradients({x: np.ones((2, 3), np.float32)})
    assert graph.planner.fused_ops(graph._targets(None)) == []


class _Scope:
    """Two op classes with their own step scopes: a step enters both, once each."""

    log: list = []
    backends: list = []

    def __init__(self, tag):
        self.tag = tag

    def __call__(self, backend):
        from contextlib import contextmanager

        @contextmanager
        def scope():
            _Scope.log.append(("enter", self.tag))
            _Scope.backends.append(backend)
            yield
            _Scope.log.append(("exit", self.tag))
        return scope()


def _scoped_class(tag):
    class Scoped(gn.Node):
        op = f"scoped_{tag}"
        step_scope = _Scope(tag)

        def __init__(self, x):
            super().__init__((x,), shape=x.shape)

        def forward(self, ctx, x):
            _Scope.log.append(("forward", tag))
            return x

        def backward(self, ctx, g, xs, y):
            return (g,)
    return Scoped


def test_a_step_enters_every_scope_its_ops_name(backend):
    a, b = _scoped_class("a"), _scoped_class("b")
    x = gn.Input("x", (None, 3))
    feed = {x: backend.asarray(np.ones((2, 3), np.float32))}
    one = gn.sum(gn.tanh(a(x)))
    _Scope.log.clear(), _Scope.backends.clear()
    gn.Graph(one, cost=one).gradients(feed, wrt=[x])
    assert _Scope.log == [("enter", "a"), ("forward", "a"), ("exit", "a")]
    cost = gn.sum(b(gn.tanh(a(x))))
    graph = gn.Graph(cost, cost=cost)
    _Scope.log.clear()
    graph.gradients(feed, wrt=[x])
    assert _Scope.backends == [backend] * 3
    log = _Scope.log
    assert {e for e in log if e[0] == "enter"} == {("enter", "a"), ("enter", "b")}
    assert len(log) == 6 and log[:2] in ([("enter", "a"), ("enter", "b")],
                                         [("enter", "b"), ("enter", "a")])
    assert log[2:4] == [("forward", "a"), ("forward", "b")] and log[-2][0] == log[-1][0] == "exit"
