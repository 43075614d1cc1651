"""Arrays reused from step to step (the graph's arena, ``gradients(into=)``, ``minimize``).

Reuse must never change a result or overwrite an array a caller holds.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, optim
from graphnet.testing import assert_close


def _mlp_graph(activation: str = "tanh"):
    x = gn.Input("x", shape=(None, 6))
    y = gn.Input("y", shape=(None,), dtype="int64")
    w1, b1 = gn.Parameter(np.random.default_rng(1).normal(size=(6, 5)) * 0.5), gn.Parameter(np.zeros(5))
    w2, b2 = gn.Parameter(np.random.default_rng(2).normal(size=(5, 3)) * 0.5), gn.Parameter(np.zeros(3))
    act = {"tanh": gn.tanh, "relu": gn.relu, "sigmoid": gn.sigmoid}[activation]
    h = act(gn.linear(x, w1, b1))
    logits = gn.linear(h, w2, b2)
    loss = gn.softmax_cross_entropy(logits, y)
    return gn.Graph(logits, cost=loss), x, y, [w1, b1, w2, b2]


def _feed(x, y, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {x: rng.normal(size=(n, 6)).astype(gn.get_default_dtype()), y: rng.integers(0, 3, n)}


def _host(grads: dict) -> dict:
    return {p: gn.to_numpy(g).copy() for p, g in grads.items()}


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_held_gradients_survive_later_steps(backend, activation):
    graph, x, y, params = _mlp_graph(activation)
    first = graph.gradients(_feed(x, y, 8, 0))
    kept = _host(first)
    graph.gradients(_feed(x, y, 8, 1))  # same shapes: every reused array is rewritten
    graph.gradients(_feed(x, y, 5, 2))  # another batch size
    for p in params:
        np.testing.assert_array_equal(gn.to_numpy(first[p]), kept[p], err_msg=p.name)


def test_gradient_that_is_an_internal_array_is_copied_out(backend):
    """add's backward hands its upstream gradient (an arena array) to the parameter."""
    x = gn.Input("x", shape=(None, 3))
    y = gn.Input("y", shape=(None,), dtype="int64")
    w = gn.Parameter(np.random.default_rng(0).normal(size=(3, 3)))
    shift = gn.Parameter(np.zeros((4, 3)))
    graph = gn.Graph([], cost=gn.softmax_cross_entropy(gn.tanh(x @ w) + shift, y))
    feed = lambda s: {x: np.random.default_rng(s).normal(size=(4, 3)).astype(gn.get_default_dtype()),
                      y: np.array([0, 1, 2, 1])}
    first = graph.gradients(feed(0))
    kept = gn.to_numpy(first[shift]).copy()
    graph.gradients(feed(1))
    np.testing.assert_array_equal(gn.to_numpy(first[shift]), kept)


def test_run_outputs_survive_a_training_step(backend):
    graph, x, y, _ = _mlp_graph()
    out = graph.run(_feed(x, y, 8, 0))
    kept = gn.to_numpy(out).copy()
    graph.gradients(_feed(x, y, 8, 1))
    np.testing.assert_array_equal(gn.to_numpy(out), kept)


def test_costs_returned_are_not_overwritten(backend):
    graph, x, y, _ = _mlp_graph()
    c0, _ = graph.gradients(_feed(x, y, 8, 0), return_cost=True)
    v0 = float(c0)
    graph.gradients(_feed(x, y, 8, 1), return_cost=True)
    assert float(c0) == v0


def test_cost_that_views_a_reused_array_is_copied_out(backend):
    x = gn.Input("x", shape=(1, 2))
    w = gn.Parameter(np.array([[1.0], [2.0]]))
    graph = gn.Graph([], cost=gn.reshape(gn.linear(x, w), ()))
    c0, _ = graph.gradients({x: np.array([[1.0, 1.0]], gn.get_default_dtype())}, return_cost=True)
    graph.gradients({x: np.array([[5.0, 5.0]], gn.get_default_dtype())}, return_cost=True)
    assert float(c0) == 3.0


def test_gradients_into_matches_fresh_gradients_bitwise(backend):
    graph, x, y, params = _mlp_graph()
    for seed, n in [(0, 8), (1, 8), (2, 3)]:
        feed = _feed(x, y, n, seed)
        fresh = _host(graph.gradients(feed))
        bufs = {p: backend.xp.full(p.shape, np.nan, dtype=p.dtype) for p in params}
        got = graph.gradients(feed, into=bufs)
        for p in params:
            assert got[p] is bufs[p]
            np.testing.assert_array_equal(gn.to_numpy(bufs[p]), fresh[p], err_msg=p.name)


def test_gradients_into_zero_fills_unused_parameters(backend):
    x = gn.Input("x", shape=(None, 2))
    used, unused = gn.Parameter(np.ones((2, 2))), gn.Parameter(np.ones(3))
    graph = gn.Graph(unused * 2.0, cost=(x @ used).sum())  # unused: in the graph, not the cost
    bufs = {used: backend.xp.zeros((2, 2), gn.get_default_dtype()),
            unused: backend.xp.full((3,), 7.0, dtype=gn.get_default_dtype())}
    graph.gradients({x: np.ones((4, 2), gn.get_default_dtype())}, wrt=[used, unused], into=bufs)
    assert_close(bufs[unused], np.zeros(3))
    assert_close(bufs[used], np.full((2, 2), 4.0))


def test_gradients_into_rejects_wrong_arrays_by_name(backend):
    graph, x, y, params = _mlp_graph()
    feed = _feed(x, y, 8, 0)
    bufs = {p: backend.xp.zeros(p.shape, p.dtype) for p in params}
    bad = dict(bufs)
    bad[params[0]] = backend.xp.zeros((5, 6), params[0].dtype)
    with pytest.raises(gn.GraphError, match=params[0].name):
        graph.gradients(feed, into=bad)
    missing = dict(bufs)
    del missing[params[3]]
    with pytest.raises(gn.GraphError, match=params[3].name):
        graph.gradients(feed, into=missing)


@pytest.mark.parametrize("build", [
    lambda x, w: gn.tanh(gn.tanh(x @ w) @ w),                     # w used twice
    lambda x, w: gn.relu(x @ w) @ gn.transpose(gn.relu(x @ w)),   # one input on both sides
    lambda x, w: gn.matmul(gn.tanh(x @ w), gn.tanh(x @ w) * 0.5),  # square, shared branch
    lambda x, w: gn.sigmoid(x @ w) + gn.tanh(x @ w) @ w,          # activation output fan-out
    lambda x, w: gn.tanh(x) + (x + w),  # add hands x and w one array; tanh adds to x later
], ids=["twice", "both-sides", "square", "fan-out", "alias"])
def test_shared_nodes_gradients_with_reused_arrays(backend, build):
    """Gradients through nodes with several consumers, against central differences."""
    rng = np.random.default_rng(0)
    gn.testing.check_gradients(build, [rng.normal(size=(4, 4)), rng.normal(size=(4, 4)) * 0.5])


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01),
], ids=["sgd", "momentum", "nesterov-wd", "adamw"])
def test_minimize_equals_gradients_then_step(backend, make):
    runs = []
    for use_minimize in (False, True):
        graph, x, y, params = _mlp_graph()
        opt = make(params)
        costs = []
        for s in range(4):
            feed = _feed(x, y, 8 if s < 3 else 5, s)
            if use_minimize:
                costs.append(float(opt.minimize(graph, feed)))
            else:
                cost, grads = graph.gradients(feed, return_cost=True)
                kept = _host(grads)
                opt.step(grads)
                for p in params:  # step leaves the caller's gradients alone
                    np.testing.assert_array_equal(gn.to_numpy(grads[p]), kept[p])
                costs.append(float(cost))
        runs.append((costs, [gn.to_numpy(p.value).copy() for p in params]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


def test_numpy_adam_matches_the_reference_arithmetic(numpy_backend):
    """The scratch-buffer Adam (the NumPy override) does the reference's operations in the
    same order."""
    from graphnet.optim import adam_update
    assert "numpy" in adam_update.overrides  # else this compares the reference with itself
    rng = np.random.default_rng(0)
    p, g = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    states = [(p.copy(), np.zeros_like(p), np.zeros_like(p)) for _ in range(2)]
    for step in (1, 2, 3):
        for fn, (pp, m, v) in zip([adam_update.implementation("numpy"), adam_update.generic],
                                  states):
            fn(numpy_backend, pp, g, m, v, 1e-3, 0.9, 0.999, 1e-8, step, 0.01)
    for a, b in zip(*states):
        np.testing.assert_array_equal(a, b)


def test_negative_labels_never_pick_another_class(numpy_backend):
    """A negative label makes the cost NaN (tests/test_cupy_parity.py has the full rule);
    fed from the host where the loss knows the class count, it is refused when fed."""
    graph, x, y, _ = _mlp_graph()
    feed = _feed(x, y, 4, 0)
    feed[y] = np.array([0, 1, -1, 2])
    with pytest.raises(gn.FeedError, match=r"class index -1 at position 2"):
        graph.gradients(feed, return_cost=True)
    z = gn.Input("z", shape=(None, None))  # the class count unknown at build time
    y2 = gn.Input("y2", shape=(None,), dtype="int64")
    unchecked = gn.Graph(z, cost=gn.softmax_cross_entropy(z, y2))
    cost, _ = unchecked.gradients({z: np.zeros((4, 3)), y2: feed[y]}, return_cost=True)
    assert np.isnan(gn.to_numpy(cost))


def test_arena_holds_one_step(numpy_backend):
    """The arena keeps one array per (node, slot): a new batch size replaces, not adds."""
    model = nn.Classifier(nn.MLP([32, 10], 784, "relu"), (784,))
    opt = optim.SGD(model.parameters(), lr=0.1)
    graph = model.train_graph
    rng = np.random.default_rng(0)
    sizes = []
    for n in (64, 64, 17, 64, 17, 64):
        feed = {model.images: rng.random((n, 784), dtype=np.float32),
                model.labels: rng.integers(0, 10, n)}
        opt.minimize(graph, feed)
        sizes.append(graph._arena.nbytes())
    assert sizes[0] == sizes[1] == sizes[3] == sizes[5]
    assert sizes[2] == sizes[4] < sizes[0]


# --- linear + activation fused in a training step -----------------------------------------
def _fused_ops(graph, targets=None):
    return graph.planner.fused_ops(graph._targets(targets))


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_fused_linear_activation_is_bit_identical(backend, activation):
    """A step fuses linear + activation; checking numerics runs every node on its own."""
    graph, x, y, params = _mlp_graph(activation)
    plain = gn.Graph(graph.outputs[0], cost=graph.cost, check_numerics=True)
    for seed, n in [(0, 8), (1, 5)]:
        feed = _feed(x, y, n, seed)
        c1, g1 = graph.gradients(feed, return_cost=True)
        c2, g2 = plain.gradients(feed, return_cost=True)
        assert float(c1) == float(c2)
        for p in params:
            np.testing.assert_array_equal(gn.to_numpy(g1[p]), gn.to_numpy(g2[p]), err_msg=p.name)
    assert _fused_ops(graph) == [f"linear+{activation}"]
    assert _fused_ops(plain) == []
    graph.check_numerics = True  # switched on later: the next steps run every node alone
    c3, g3 = graph.gradients(feed, return_cost=True)
    assert _fused_ops(graph) == [] and float(c3) == float(c1)
    for p in params:
        np.testing.assert_array_equal(gn.to_numpy(g3[p]), gn.to_numpy(g1[p]), err_msg=p.name)


def test_no_fusion_where_the_linear_value_is_needed(backend):
    x = gn.Input("x", shape=(None, 6))
    w = gn.Parameter(np.random.default_rng(0).normal(size=(6, 4)))
    b = gn.Parameter(np.zeros(4))
    z = gn.linear(x, w, b)
    h = gn.tanh(z)
    xv = np.random.default_rng(1).normal(size=(3, 6)).astype(gn.get_default_dtype())
    as_output = gn.Graph([z], cost=h.sum())          # the linear is an output
    two_users = gn.Graph([], cost=(h + z).sum())     # the linear has two consumers
    fused = gn.Graph([], cost=h.sum())
    for g in (as_output, two_users, fused):
        g.gradients({x: xv})
    assert _fused_ops(as_output) == [] and _fused_ops(two_users) == []
    assert _fused_ops(fused) == ["linear+tanh"]
    # asking for the linear node's gradient keeps it a node of its own
    grads = fused.gradients({x: xv}, wrt=[z, w])
    assert _fused_ops(fused, [z, w]) == []
    zv = gn.to_numpy(as_output.run({x: xv})[0]).astype(np.float64)
    assert_close(grads[z], 1 - np.tanh(zv) ** 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gn.to_numpy(grads[w]),
                                  gn.to_numpy(fused.gradients({x: xv})[w]))


def test_fused_step_failure_names_both_ops(numpy_backend):
    x = gn.Input("x", shape=(None, None))
    w = gn.Parameter(np.ones((6, 4)))
    graph = gn.Graph([], cost=gn.relu(gn.linear(x, w)).sum())
    with pytest.raises(gn.RunError, match=r"linear\+relu"):
        graph.gradients({x: np.ones((3, 5), np.float32)})


def test_minimize_serves_each_graph_its_own_parameters(numpy_backend):
    """A new graph (even one built after another was freed) gets all its parameters updated."""
    import gc
    x = gn.Input("x", shape=(None, 2))
    a, b = gn.Parameter(np.ones((2, 2))), gn.Parameter(np.ones((2, 2)))
    opt = optim.SGD([a, b], lr=0.1)
    feed = {x: np.ones((3, 2), np.float32)}
    opt.minimize(gn.Graph([], cost=(x @ a).sum()), feed)  # only a; the graph is freed after
    gc.collect()
    before = b.value.copy()
    opt.minimize(gn.Graph([], cost=(x @ a @ b).sum()), feed)
    assert not np.array_equal(b.value, before)
