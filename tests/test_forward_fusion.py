"""Forward passes (``Graph.run``, ``Graph.values``, evaluation) run the fused steps too.

A fused pair (conv2d + max_pool2d, conv2d + activation, linear + activation) must give
the bits of the reference executor's two nodes, and must not happen where the caller
asks for the producer's value or where ``check_numerics`` names every node.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, ops
from graphnet.kernels import implementations

from test_conv_fusion import CASES, _assert_bits, _data, _net


def _ops(graph: gn.Graph, nodes) -> list[str]:
    return [s.node.op for s in graph.planner.forward_plan(nodes).steps]


@pytest.mark.parametrize("name", list(CASES))
def test_run_fuses_conv_and_pool_with_the_bits_of_the_two_nodes(backend, name):
    case = dict(CASES[name])
    dtype = case.pop("dtype", np.float32)
    flat, nan = case.pop("flat", False), case.pop("nan", False)
    case.pop("nan_grad", None)
    x_shape, w_shape = case.pop("x_shape"), case.pop("w_shape")
    with_bias = case.pop("with_bias", True)
    (x, w, b, _), y, _ = _net(x_shape, w_shape, with_bias, **case)
    xv, wv, bv = _data(np.random.default_rng(5), x_shape, w_shape, dtype, flat, nan)
    feed = {x: xv, w: wv, **({b: bv} if with_bias else {})}
    fast, ref = gn.Graph(y), gn.Graph(y, plan="reference")
    for _ in range(2):
        _assert_bits(fast.run(feed), ref.run(feed), "run")
    # (windows that do not tile the output run as the two ops inside the fused step)
    assert _ops(fast, [y]) == ["conv2d+max_pool2d"]


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_run_fuses_conv_and_linear_with_their_activation(backend, act):
    x = gn.Input("x", shape=(None, 2, 9, 9))
    conv = nn.Conv2d(2, 3, 3)
    h = getattr(gn, act)(conv(x))
    dense = nn.Linear(3 * 7 * 7, 4)
    out = getattr(gn, act)(dense(ops.flatten(h)))
    xv = np.random.default_rng(1).standard_normal((5, 2, 9, 9)).astype(np.float32)
    xv[0, 0, 0, 0] = np.nan
    fast, ref = gn.Graph(out), gn.Graph(out, plan="reference")
    _assert_bits(fast.run({x: xv}), ref.run({x: xv}), "run")
    assert _ops(fast, [out]) == [f"conv2d+{act}", "flatten", f"linear+{act}"]


def test_a_requested_producer_is_not_fused_away(backend):
    (x, w, b, _), y, _ = _net((3, 2, 8, 8), (3, 2, 3, 3))
    conv = y.inputs[0]
    xv, wv, bv = _data(np.random.default_rng(2), (3, 2, 8, 8), (3, 2, 3, 3), np.float32)
    feed = {x: xv, w: wv, b: bv}
    fast, ref = gn.Graph(y), gn.Graph(y, plan="reference")
    got, want = fast.values(feed, [conv, y]), ref.values(feed, [conv, y])
    for k in range(2):
        _assert_bits(got[k], want[k], f"value {k}")
    assert _ops(fast, [conv, y]) == ["conv2d", "max_pool2d"]
    assert _ops(fast, [y]) == ["conv2d+max_pool2d"]


def test_check_numerics_runs_every_node_alone_and_names_it(numpy_backend):
    (x, w, b, _), y, _ = _net((2, 1, 6, 6), (2, 1, 3, 3))
    g = gn.Graph(y, check_numerics=True)
    assert _ops(g, [y]) == ["conv2d", "max_pool2d"]
    xv, wv, bv = _data(np.random.default_rng(4), (2, 1, 6, 6), (2, 1, 3, 3), np.float32)
    wv[...] = 3e38  # the products overflow float32 inside conv2d
    with pytest.raises(gn.NumericsError, match="conv2d"):
        g.run({x: xv, w: wv, b: bv})


def test_classifier_evaluation_matches_the_reference_executor(backend):
    gn.seed(3)
    net = nn.Sequential([nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.MaxPool2d(2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 16), nn.Tanh(),
                         nn.Linear(16, 10)])
    model = nn.Classifier(net, (1, 14, 14))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 1, 14, 14)).astype(np.uint8)
    labels = rng.integers(0, 10, 37)
    fast = model.evaluate(images, labels, batch_size=16)
    assert "conv2d+max_pool2d" in _ops(model.eval_graph, [model.loss, model.probs])
    model.eval_graph.plan = "reference"
    ref = model.evaluate(images, labels, batch_size=16)
    assert fast == ref  # the same floats: accuracy and loss


def test_a_forward_pass_skips_what_only_backward_reads(numpy_backend, monkeypatch):
    """The pool's argmax index is built in training steps, not in forward passes."""
    from graphnet.ops.conv import kernels as conv_pool
    (x, w, b, r), y, cost = _net((3, 2, 8, 8), (3, 2, 3, 3))
    xv, wv, bv = _data(np.random.default_rng(6), (3, 2, 8, 8), (3, 2, 3, 3), np.float32)
    feed = {x: xv, w: wv, b: bv, r: np.ones((3, 3, 3, 3), np.float32)}
    calls = []
    table = implementations(numpy_backend.name)  # what ops call: ctx.kernels[kernel]
    real = table[conv_pool.first_max_index]
    monkeypatch.setitem(table, conv_pool.first_max_index, lambda *a: calls.append(1) or real(*a))
    g = gn.Graph(y, cost=cost)
    g.run(feed)
    g.values(feed, [y, cost])
    assert calls == []
    g.gradients(feed, wrt=[w])
    assert calls, "a training step must record where the maxima were"


@pytest.mark.parametrize("bad, error, message", [
    (None, TypeError, r"forward_plan\(nodes=...\) takes a list of this graph's nodes, got None"),
    (["x"], TypeError, "takes a list of this graph's nodes"),
    ("other", gn.GraphError, "is not part of this graph"),
])
def test_forward_plan_refuses_what_is_not_this_graphs_nodes(numpy_backend, bad, error, message):
    x = gn.Input("x", (None, 3))
    g = gn.Graph(gn.tanh(x))
    if bad == "other":
        bad = [gn.Input("other", (None, 3))]
    with pytest.raises(error, match=message):
        g.planner.forward_plan(bad)
    with pytest.raises(error, match=message.replace("forward_plan", "values")):
        g.values({x: np.zeros((1, 3), np.float32)}, bad)
