"""Graph behaviour and its errors (type and culprit), backend selection, seeding."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import graphnet as gn
import graphnet.backends as backends
from graphnet.backends.host import host_rng
from graphnet.graph import topological_order
from graphnet.testing import assert_close


def f32(*shape):
    return np.ones(shape, dtype=np.float32)


# --- shape errors at build ---------------------------------------------------------------
@pytest.mark.parametrize("build", [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b,
    lambda a, b: gn.mse(a, b),
], ids=["add", "sub", "mul", "div", "mse"])
def test_broadcast_error_names_both_operands(build):
    a, b = gn.Input("left", shape=(3, 4)), gn.Input("right", shape=(2, 5))
    with pytest.raises(gn.ShapeError) as err:
        build(a, b)
    msg = str(err.value)
    assert "'left' (3, 4)" in msg and "'right' (2, 5)" in msg


@pytest.mark.parametrize("sa,sb", [((3, 4), (5, 2)), ((2, 3, 4), (3, 4, 2)), ((4,), (4, 2))],
                         ids=["inner", "batch", "vector"])
def test_matmul_error_names_both_operands(sa, sb):
    a, b = gn.Input("lhs", shape=sa), gn.Input("rhs", shape=sb)
    with pytest.raises(gn.ShapeError) as err:
        a @ b
    assert "lhs" in str(err.value) and "rhs" in str(err.value)
    assert str(sa[-1]) in str(err.value)


def test_linear_error_names_operands():
    with pytest.raises(gn.ShapeError, match=r"'x' \(3, 4\).*'w' \(5, 2\)"):
        gn.linear(gn.Input("x", shape=(3, 4)), gn.Input("w", shape=(5, 2)))


@pytest.mark.parametrize("build,needle", [
    (lambda x: x.reshape(5, 5), "'x' (2, 3)"),
    (lambda x: x.reshape(-1, -1), "only one"),
    (lambda x: x[0, 0, 0], "too many"),
    (lambda x: x[5], "out of range"),
    (lambda x: x.sum(axis=2), "axis 2"),
    (lambda x: gn.transpose(x, (0, 0)), "transpose axes"),
    (lambda x: gn.concat([x, gn.Input("y", shape=(2, 4))], axis=0), "'y' (2, 4)"),
    (lambda x: gn.softmax_cross_entropy(x, gn.Input("y", shape=(2, 2))), "'y' (2, 2)"),
    (lambda x: gn.softmax_cross_entropy(x, gn.Input("y", shape=(5,), dtype="int64")), "5 labels"),
], ids=["reshape", "reshape_two_minus_one", "too_many_indices", "index_range", "axis",
        "transpose", "concat", "ce_one_hot_shape", "ce_label_count"])
def test_other_shape_errors_at_build(build, needle):
    with pytest.raises(gn.ShapeError) as err:
        build(gn.Input("x", shape=(2, 3)))
    assert needle in str(err.value)


def test_float_class_labels_rejected_at_build():
    with pytest.raises(gn.GraphError, match="'y'.*integer"):
        gn.softmax_cross_entropy(gn.Input("z", shape=(2, 3)), gn.Input("y", shape=(2,)))


# --- cost, cycles, membership --------------------------------------------------------------
def test_non_scalar_cost_is_rejected_naming_it():
    x = gn.Input("x", shape=(3,))
    with pytest.raises(gn.GraphError, match=r"'doubled' has shape \(3,\)"):
        gn.Graph(x, cost=_named(x * 2, "doubled"))


def test_non_scalar_cost_found_at_run_time():
    x = gn.Input("x", shape=None)
    cost = _named(x * 2, "loss")
    graph = gn.Graph(cost, cost=cost)
    with pytest.raises(gn.GraphError, match=r"'loss' has shape \(3,\)"):
        graph.gradients({x: f32(3)}, wrt=[x])


def _named(node, name):
    node.name = name
    return node


def test_cycle_is_reported_naming_a_node():
    x = gn.Input("x", shape=(2,))
    a = _named(x + 1, "a")
    b = _named(a * 2, "b")
    a.inputs = (b, a.inputs[1])  # a -> b -> a
    with pytest.raises(gn.GraphError, match="cycle") as err:
        gn.Graph(b)
    assert "'a'" in str(err.value) or "'b'" in str(err.value)


def test_gradients_without_cost_or_wrt_foreign_node():
    x = gn.Input("x", shape=(2,))
    stranger = _named(gn.Input("other", shape=(2,)) * 3, "stranger")
    with pytest.raises(gn.GraphError, match="no cost"):
        gn.Graph(x * 2).gradients({x: f32(2)})
    cost = (x * x).sum()
    with pytest.raises(gn.GraphError, match="stranger.*not part of this graph"):
        gn.Graph(cost, cost=cost).gradients({x: f32(2)}, wrt=[stranger])


def test_gradient_wrt_unused_parameter_is_zero():
    """Documented: a node the cost does not depend on gets zeros of its shape and dtype."""
    x = gn.Input("x", shape=(2,))
    used, unused = gn.Parameter(np.ones(2)), gn.Parameter(np.ones((3, 2)))
    side = x * 3  # an output the cost ignores
    cost = (x * used).sum()
    graph = gn.Graph([cost, unused * 1, side], cost=cost)
    grads = graph.gradients({x: f32(2)}, wrt=[used, unused, side])
    assert_close(grads[used], [1, 1], what="used")
    assert_close(grads[unused], np.zeros((3, 2)), what="unused", check_dtype="float32")
    assert_close(grads[side], np.zeros(2), what="side", check_dtype="float32")


def test_gradients_are_writable_and_not_shared():
    a, b = gn.Parameter(np.ones(3)), gn.Parameter(np.ones((2, 3)))
    cost = (a + b).mean()  # Add hands the same upstream to both; mean broadcasts a view
    grads = gn.Graph(cost, cost=cost).gradients({})
    assert grads[a] is not grads[b]
    for g in grads.values():
        g *= 2  # an optimizer may update in place
    assert_close(grads[a], np.full(3, 2 * 2 / 6), what="a")


# --- feeds --------------------------------------------------------------------------------
def _graph():
    x = gn.Input("x", shape=(None, 3))
    labels = gn.Input("labels", shape=(None,), dtype="int64")
    return x, labels, gn.Graph(x * 2, cost=gn.softmax_cross_entropy(x, labels))


class FakeCupyArray:
    """Stands in for a cupy.ndarray on a machine without CuPy."""

    __module__ = "cupy"
    shape, ndim, dtype = (2, 3), 2, np.dtype("float32")


@pytest.mark.parametrize("feed,needle", [
    ({}, "'x' was not fed"),
    ({"x": f32(2, 3), "bogus": f32(1)}, "'bogus'"),
    ({"x": f32(2, 3), gn.Input("x", shape=(2, 3)): f32(2, 3)}, "different Input"),
    ({"x": f32(2, 3, 1)}, "'x' expects rank 2"),
    ({"x": f32(2, 4)}, "'x' expects size 3 on axis 1"),
    ({"x": np.ones((2, 3), dtype=np.int64)}, "'x' needs floating values, got dtype int64"),
    ({"x": np.array([[None] * 3] * 2, dtype=object)}, "'x' needs floating values, got dtype object"),
    ({"x": FakeCupyArray()}, "'x' was fed a cupy"),
    ({"x": f32(2, 3), "labels": np.zeros(2, np.float32)}, "'labels' needs integer values"),
], ids=["missing", "unknown_name", "same_name_other_node", "rank", "size", "int_dtype",
        "object_dtype", "other_backend", "float_labels"])
def test_feed_errors_name_the_input(feed, needle):
    x, labels, graph = _graph()
    with pytest.raises(gn.FeedError) as err:
        graph.run(feed)
    assert needle in str(err.value)


def test_feed_by_name_node_and_host_scalar():
    x, labels, graph = _graph()
    assert_close(graph.run({"x": f32(2, 3)}), np.full((2, 3), 2), what="by name")
    assert_close(graph.run({x: [[1.0, 2, 3]] * 2}), [[2, 4, 6]] * 2, what="a list is converted")
    s = gn.Input("s", shape=())
    assert_close(gn.Graph(s * 2).run({s: np.float32(1.5)}), 3.0, what="numpy scalar feed")


def test_run_time_op_failure_names_node_and_inputs():
    a, b = gn.Input("a"), gn.Input("b")  # unknown shapes: only the run can tell
    total = _named(a + b, "total")
    with pytest.raises(gn.RunError, match=r"'total'.*'a' \(2,\).*'b' \(3,\)"):
        gn.Graph(total).run({a: f32(2), b: f32(3)})


# --- numerics -------------------------------------------------------------------------------
def test_check_numerics_names_first_non_finite_node():
    x = gn.Input("x", shape=(3,))
    bad = _named(gn.log(x), "logx")
    out = gn.exp(bad) * 2  # also non-finite, but later
    feed = {x: np.array([1.0, -1.0, 2.0], np.float32)}
    with np.errstate(invalid="ignore"):
        gn.Graph(out).run(feed)  # off by default: NaN flows through
        with pytest.raises(gn.NumericsError) as err:
            gn.Graph(out, check_numerics=True).run(feed)
    msg = str(err.value)
    assert "'logx'" in msg and "op 'log'" in msg and "'x' (3,) range [-1, 2]" in msg


# --- outputs and order -------------------------------------------------------------------
def test_several_outputs_in_one_run():
    x = gn.Input("x", shape=(2,))
    outs = [x + 1, x * 3, (x * x).sum()]
    got = gn.Graph(outs).run({x: np.array([1.0, 2.0], np.float32)})
    assert isinstance(got, list) and len(got) == 3
    for g, want in zip(got, [[2, 3], [3, 6], 5]):
        assert_close(g, want, what="output")


def test_topological_order_is_stable_and_inputs_first():
    def build():
        x = gn.Input("x", shape=(2,))
        a, b = x + 1, x * 2
        return a * b + a
    orders = [[n.op for n in topological_order([build()])] for _ in range(2)]
    assert orders[0] == orders[1] == ["input", "constant", "add", "constant", "mul", "mul", "add"]
    out = build()
    order = topological_order([out])
    pos = {n.id: i for i, n in enumerate(order)}
    assert all(pos[i.id] < pos[n.id] for n in order for i in n.inputs)
    assert len(order) == len({n.id for n in order})


def test_deep_chain_has_no_recursion_limit():
    x = gn.Input("x", shape=(2,))
    h = x
    for _ in range(5000):
        h = h * 1.0001
    cost = h.sum()
    graph = gn.Graph(h, cost=cost)
    feed = {x: np.array([1.0, 2.0])}
    assert_close(graph.run(feed), np.array([1.0, 2.0]) * 1.0001 ** 5000, rtol=1e-4, what="run")
    grads = graph.gradients(feed, wrt=[x])
    assert_close(grads[x], np.full(2, 1.0001 ** 5000), rtol=1e-4, what="gradient")


def test_parameters_in_graph_order():
    w1, w2 = gn.Parameter(np.ones((3, 2)), name="w1"), gn.Parameter(np.ones(2), name="w2")
    frozen = gn.Parameter(np.ones(2), name="frozen", trainable=False)
    gn.Parameter(np.ones(2), name="elsewhere")
    x = gn.Input("x", shape=(None, 3))
    graph = gn.Graph(gn.linear(x, w1, w2) * frozen)
    assert graph.parameters() == [w1, w2]
    assert graph.parameters(trainable_only=False) == [w1, w2, frozen]


def test_parameter_value_setter_checks_shape_and_keeps_dtype():
    p = gn.Parameter(np.zeros((2, 3)), name="weights")
    p.value = np.arange(6.0).reshape(2, 3)  # float64 in, float32 kept
    assert p.value.dtype == np.float32
    with pytest.raises(gn.ShapeError, match=r"'weights' has shape \(2, 3\).*\(3, 2\)"):
        p.value = np.zeros((3, 2))
    assert_close(p.value, np.arange(6.0).reshape(2, 3), what="unchanged after error")


# --- backend selection ------------------------------------------------------------------------
@pytest.fixture
def fresh_backends(monkeypatch):
    """No active backend and no cached instances: the next ``gn.backend()`` reads the env."""
    monkeypatch.setattr(backends, "_active", None)
    monkeypatch.setattr(backends, "_instances", {})
    return monkeypatch


def test_env_unset_gives_numpy(fresh_backends):
    fresh_backends.delenv("GRAPHNET_BACKEND", raising=False)
    assert gn.backend().name == "numpy"


def test_env_selects_and_unknown_name_lists_valid_ones(fresh_backends):
    fresh_backends.setenv("GRAPHNET_BACKEND", " NumPy ")
    assert gn.backend().name == "numpy"
    fresh_backends.setattr(backends, "_active", None)
    fresh_backends.setenv("GRAPHNET_BACKEND", "tpu")
    with pytest.raises(ValueError, match=r"GRAPHNET_BACKEND='tpu'.*'numpy', 'cupy'"):
        gn.backend()
    with pytest.raises(ValueError, match="valid names"):
        gn.set_backend("tpu")


def test_cupy_not_installed_says_so_and_how_to_fix(fresh_backends):
    fresh_backends.setitem(sys.modules, "cupy", None)  # `import cupy` now fails
    fresh_backends.setenv("GRAPHNET_BACKEND", "cupy")
    with pytest.raises(gn.BackendUnavailableError) as err:
        gn.backend()
    msg = str(err.value)
    assert "CuPy" in msg and "not installed" in msg and "pip install" in msg
    assert "GRAPHNET_BACKEND=numpy" in msg
    assert gn.available_backends() == ["numpy"]


def test_cupy_without_cuda_device_says_so(fresh_backends):
    fake = types.ModuleType("cupy")
    fake.__version__ = "13.0.0"
    fake.cuda = types.SimpleNamespace(is_available=lambda: False)
    fresh_backends.setitem(sys.modules, "cupy", fake)
    with pytest.raises(gn.BackendUnavailableError, match="CuPy 13.0.0 but no usable CUDA device"):
        gn.get_backend("cupy")


def test_real_cupy_without_device_says_so(fresh_backends):
    cupy = pytest.importorskip("cupy")
    fresh_backends.setattr(cupy.cuda, "is_available", lambda: False)
    with pytest.raises(gn.BackendUnavailableError, match="no usable CUDA device"):
        gn.get_backend("cupy")


def test_set_backend_and_use_backend_restore():
    before = gn.backend()
    numpy_b = gn.get_backend("numpy")
    with gn.use_backend("numpy") as b:
        assert b is numpy_b and gn.backend() is numpy_b
    assert gn.backend() is before
    with pytest.raises(RuntimeError):
        with gn.use_backend(numpy_b):
            raise RuntimeError("boom")
    assert gn.backend() is before
    try:
        assert gn.set_backend("numpy") is numpy_b and gn.backend() is numpy_b
    finally:
        gn.set_backend(before)


def test_available_backends_lists_what_runs():
    names = gn.available_backends()
    assert "numpy" in names and set(names) <= set(gn.backend_names())
    for name in gn.backend_names():
        if name not in names:
            with pytest.raises(gn.BackendUnavailableError):
                gn.get_backend(name)


# --- seeding -----------------------------------------------------------------------------
def test_seed_gives_identical_parameter_draws(numpy_backend):
    def draw():
        return gn.Parameter(host_rng().normal(size=(4, 3))), numpy_backend.uniform((5,), "float32")
    gn.seed(11)
    p1, u1 = draw()
    gn.seed(11)
    p2, u2 = draw()
    gn.seed(12)
    p3, _ = draw()
    assert_close(p1.value, p2.value, rtol=0, atol=0, what="host draws")
    assert_close(u1, u2, rtol=0, atol=0, what="backend draws")
    assert not np.allclose(gn.to_numpy(p1.value), gn.to_numpy(p3.value))
