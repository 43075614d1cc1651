"""graphnet.reference directly: the cases its mutation run (docs/testing.md) showed untested.

The reference executor defines what every run computes, so each of its steps (the order,
the plans, the context an op sees, how gradients are summed and handed out) is pinned here
with small recording ops whose exact calls and results are known.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphnet as gn
from graphnet.node import Node, RunContext
from graphnet.reference import Leaf, Reference, Step, topological_order
from graphnet.testing import assert_close


class Rec(Node):
    """``sum`` of its inputs; records the context it ran with and hands ``g`` to each input."""

    op = "rec"

    def __init__(self, *inputs: Node, grads: tuple | None = None, name: str | None = None):
        super().__init__(inputs, name, inputs[0].shape, inputs[0].dtype)
        self.keys: list = []
        self.needs: list = []
        self.grads = grads  # per input: None (no gradient) or a factor times g

    def forward(self, ctx, *xs):
        self.keys.append(ctx.key)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def backward(self, ctx, g, xs, y):
        self.needs.append(ctx.needs)
        if self.grads is None:
            return tuple(g for _ in xs)
        return tuple(None if f is None else g * f for f in self.grads)


def arr(b, values, dtype="float32"):
    return b.asarray(np.asarray(values, dtype=dtype))


# --- topological_order ----------------------------------------------------------------------
def test_order_lists_each_node_once_when_roots_share_or_repeat():
    x = gn.Input("x", shape=(2,))
    a = Rec(x, name="a")
    b = Rec(a, name="b")
    order = topological_order([a, b, a, x])
    assert [n.name for n in order] == ["x", "a", "b"]


def test_order_visits_every_input_of_a_node_inputs_first():
    x, y, z = (gn.Input(n, shape=(2,)) for n in "xyz")
    top = Rec(x, y, z, name="top")
    assert [n.name for n in topological_order([top])] == ["x", "y", "z", "top"]


def test_a_cycle_is_refused_naming_a_node_on_it():
    x = gn.Input("x", shape=(2,))
    a = Rec(x, name="a")
    b = Rec(a, name="b")
    a.inputs = (b,)
    with pytest.raises(gn.GraphError, match=r"^the graph has a cycle through <Rec 'b' \(2,\)>$"):
        topological_order([b])


# --- Reference: what it keeps -----------------------------------------------------------------
def test_reference_indexes_nodes_args_and_leaves(backend):
    x = gn.Input("x", shape=(2,))
    w = gn.Parameter(arr(backend, [1.0, 2.0]), name="w")
    c = gn.Constant(np.array([3.0, 4.0], dtype=np.float32), name="c")
    top = Rec(x, w, c, name="top")
    ref = Reference([top], None, backend)
    assert [n.name for n in ref.order] == ["x", "w", "c", "top"]
    assert ref.index == {x.id: 0, w.id: 1, c.id: 2, top.id: 3}
    assert ref.args == [(), (), (), (0, 1, 2)]
    assert ref.inputs == [x] and ref.params == [w]
    assert ref.constants == {id(c.value)}
    assert ref.by_name == {"x": x}
    assert ref.cost is None and ref.check_numerics is False


def test_reference_orders_the_cost_after_the_outputs(backend):
    x = gn.Input("x", shape=())
    out, cost = Rec(x, name="out"), Rec(x, name="cost")
    ref = Reference([out], cost, backend)
    assert [n.name for n in ref.order] == ["x", "out", "cost"]


def test_two_inputs_with_one_name_are_refused(backend):
    a, b = gn.Input("x", shape=(2,)), gn.Input("x", shape=(2,))
    with pytest.raises(gn.GraphError, match="^two different inputs are both named 'x'$"):
        Reference([Rec(a, b)], None, backend)


# --- plan_for -----------------------------------------------------------------------------------
def test_plan_holds_exactly_what_the_roots_need_with_each_leaf_kind(backend):
    x = gn.Input("x", shape=(2,))
    w = gn.Parameter(arr(backend, [1.0, 2.0]), name="w")
    c = gn.Constant(np.array([3.0, 4.0], dtype=np.float32), name="c")
    unused = gn.Input("unused", shape=(2,))
    a = Rec(x, w, name="a")
    b = Rec(a, c, name="b")
    other = Rec(unused, name="other")
    ref = Reference([b, other], None, backend)
    i = ref.index
    plan = ref.plan_for([b])
    assert plan.leaves == [Leaf(i[x.id], x, "input"), Leaf(i[w.id], w, "parameter"),
                           Leaf(i[c.id], c, "constant")]
    assert plan.steps == [Step(i[a.id], a, (i[x.id], i[w.id])),
                          Step(i[b.id], b, (i[a.id], i[c.id]))]
    last = ref.plan_for([other])
    assert last.leaves == [Leaf(i[unused.id], unused, "input")]
    assert last.steps == [Step(i[other.id], other, (i[unused.id],))]


# --- forward ------------------------------------------------------------------------------------
def test_forward_gives_values_of_the_plan_only_and_the_position_as_ctx_key(backend):
    x, y = gn.Input("x", shape=(2,)), gn.Input("y", shape=(2,))
    a = Rec(x, name="a")
    b = Rec(a, a, name="b")
    other = Rec(y, name="other")
    ref = Reference([other, b], None, backend)
    ctx = RunContext(backend, False, backward=False)
    values = ref.forward({x.id: arr(backend, [1.0, 2.0])}, ref.plan_for([b]), ctx)
    assert values[ref.index[y.id]] is None and values[ref.index[other.id]] is None
    assert_close(values[ref.index[b.id]], np.array([2.0, 4.0], dtype=np.float32))
    assert a.keys == [ref.index[a.id]] and b.keys == [ref.index[b.id]]
    assert other.keys == []


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_check_numerics_checks_fed_leaves_and_each_step(backend):
    x = gn.Input("x", shape=(2,))
    g = gn.Graph(Rec(x, name="a"), check_numerics=True, plan="reference")
    with pytest.raises(gn.NumericsError, match="node 'x' \\(input\\) produced non-finite"):
        g.run({x: np.array([np.nan, 1.0], dtype=np.float32)})
    big = gn.Parameter(arr(backend, [3e38, 1.0]), name="big")
    g2 = gn.Graph(Rec(big, big, name="twice"), check_numerics=True, plan="reference")
    with pytest.raises(gn.NumericsError, match="node 'twice' \\(op 'rec'\\) produced non-finite"):
        g2.run({})


def test_without_check_numerics_non_finite_values_pass(backend):
    x = gn.Input("x", shape=(2,))
    g = gn.Graph(Rec(x, name="a"), plan="reference")
    out = g.run({x: np.array([np.nan, 1.0], dtype=np.float32)})
    assert np.isnan(np.asarray(backend.to_numpy(out))[0])


class Boom(Rec):
    op = "boom"

    def forward(self, ctx, *xs):
        raise ValueError("kaput")

    def backward(self, ctx, g, xs, y):
        raise ValueError("kaput")


class BoomBack(Rec):
    op = "boomback"

    def backward(self, ctx, g, xs, y):
        raise ValueError("kaput backward")


def test_an_op_failing_in_forward_becomes_a_run_error_naming_it(backend):
    x = gn.Input("x", shape=(2,))
    g = gn.Graph(Boom(x, name="bad"), plan="reference")
    with pytest.raises(gn.RunError, match="bad") as err:
        g.run({x: np.ones(2, dtype=np.float32)})
    assert "(backward)" not in str(err.value)
    assert isinstance(err.value.__cause__, ValueError)


def test_an_op_failing_in_backward_becomes_a_run_error_saying_backward(backend):
    w = gn.Parameter(arr(backend, 2.0), name="w")
    cost = BoomBack(w, name="badback")
    g = gn.Graph(cost, cost=cost, plan="reference")
    with pytest.raises(gn.RunError, match=r"badback.*\(backward\)$") as err:
        g.gradients({})
    assert isinstance(err.value.__cause__, ValueError)


def test_graph_errors_from_an_op_pass_through_unwrapped(backend):
    class Refuses(Rec):
        def forward(self, ctx, *xs):
            raise gn.GraphError("mine")

        def backward(self, ctx, g, xs, y):
            raise gn.GraphError("mine backward")

    x = gn.Input("x", shape=(2,))
    with pytest.raises(gn.GraphError, match="^mine$"):
        gn.Graph(Refuses(x), plan="reference").run({x: np.ones(2, dtype=np.float32)})
    w = gn.Parameter(arr(backend, 2.0), name="w")

    class RefusesBack(Rec):
        def backward(self, ctx, g, xs, y):
            raise gn.GraphError("mine backward")

    cost = RefusesBack(w)
    with pytest.raises(gn.GraphError, match="^mine backward$"):
        gn.Graph(cost, cost=cost, plan="reference").gradients({})


# --- leaf ---------------------------------------------------------------------------------------
def test_leaf_reads_parameters_fed_inputs_and_constants(backend):
    x = gn.Input("x", shape=(2,))
    w = gn.Parameter(arr(backend, [1.0, 2.0]), name="w")
    c = gn.Constant(np.array([3.0, 4.0], dtype=np.float32), name="c")
    ref = Reference([Rec(x, w, c)], None, backend)
    fed_x = arr(backend, [5.0, 6.0])
    assert ref.leaf(w, "parameter", {}) is w._value
    assert ref.leaf(x, "input", {x.id: fed_x}) is fed_x
    assert ref.leaf(c, "constant", {}) is c.value
    with pytest.raises(gn.FeedError, match="^input 'x' was not fed"):
        ref.leaf(x, "input", {})


def test_a_parameter_on_another_backend_is_refused(backend):
    other = gn.get_backend("numpy")
    w = gn.Parameter(arr(backend, [1.0, 2.0]), name="w")
    ref = Reference([Rec(w)], None, other)
    if w.backend is other:
        pytest.skip("the parameter already lives on the numpy backend")
    with pytest.raises(gn.GraphError, match="^parameter 'w' lives on the"):
        ref.leaf(w, "parameter", {})


# --- gradients and backward -----------------------------------------------------------------------
def test_gradients_sum_over_every_use_and_seed_the_cost_with_ones(backend):
    w = gn.Parameter(arr(backend, 3.0), name="w")
    a = Rec(w, w, name="a")        # 2w: gradient 1 from each use
    cost = Rec(a, w, name="cost")  # 3w
    g = gn.Graph(cost, cost=cost, plan="reference")
    grads = g.gradients({})
    assert_close(grads[w], np.array(3.0, dtype=np.float32), check_dtype="float32")


def test_backward_tells_each_op_which_inputs_need_a_gradient(backend):
    x = gn.Input("x", shape=())
    w = gn.Parameter(arr(backend, 2.0), name="w")
    frozen = gn.Parameter(arr(backend, 1.0), name="frozen", trainable=False)
    a = Rec(x, w, name="a")
    cost = Rec(a, frozen, name="cost")
    g = gn.Graph(cost, cost=cost, plan="reference")
    g.gradients({x: np.array(1.0, dtype=np.float32)})
    assert cost.needs == [(True, False)]
    assert a.needs == [(False, True)]


def test_backward_skips_ops_off_the_cost_path_and_leaves(backend):
    x = gn.Input("x", shape=())
    w = gn.Parameter(arr(backend, 2.0), name="w")
    side = Rec(x, name="side")          # before the cost in order, not on its path
    cost = Rec(w, name="cost")
    ref = Reference([side], cost, backend)
    ctx = RunContext(backend, True, saved={})
    values, grads = ref.gradients({x.id: arr(backend, 1.0)}, (w,), ctx)
    assert side.needs == []
    assert_close(grads[w], np.array(1.0, dtype=np.float32))


def test_an_input_gradient_of_none_is_left_out_of_the_sum(backend):
    w = gn.Parameter(arr(backend, 2.0), name="w")
    v = gn.Parameter(arr(backend, 5.0), name="v")
    a = Rec(w, v, grads=(None, 2.0), name="a")
    cost = Rec(a, w, grads=(1.0, 4.0), name="cost")
    grads = gn.Graph(cost, cost=cost, plan="reference").gradients({})
    assert_close(grads[w], np.array(4.0, dtype=np.float32))
    assert_close(grads[v], np.array(2.0, dtype=np.float32))


def test_a_float64_gradient_comes_back_in_the_nodes_float32(backend):
    w = gn.Parameter(arr(backend, [1.0, 2.0]), name="w")
    cost_in = Rec(w, grads=(np.float64(2.0),), name="a")

    class ToScalar(Rec):
        def forward(self, ctx, *xs):
            return xs[0].sum()

        def backward(self, ctx, g, xs, y):
            return (ctx.xp.ones(xs[0].shape, dtype="float64") * g.astype("float64"),)

    cost = ToScalar(cost_in, name="cost")
    cost.shape = ()
    grads = gn.Graph(cost, cost=cost, plan="reference").gradients({})
    assert_close(grads[w], np.array([2.0, 2.0], dtype=np.float32), check_dtype="float32")


def test_keep_dtype_casts_only_to_floating_dtypes(backend):
    xp = backend.xp
    g64 = xp.ones(2, dtype="float64")
    assert Reference.keep_dtype(g64, xp.ones(2, dtype="float32")).dtype == np.float32
    assert Reference.keep_dtype(g64, xp.ones(2, dtype="int64")) is g64
    g32 = xp.ones(2, dtype="float32")
    assert Reference.keep_dtype(g32, xp.ones(2, dtype="float32")) is g32


# --- handing gradients out ------------------------------------------------------------------------
def test_collect_copies_views_shared_and_kept_arrays_only(backend):
    xp = backend.xp
    w, v, u, t = (gn.Parameter(arr(backend, [1.0, 2.0]), name=n) for n in "wvut")
    ref = Reference([Rec(w, v, u, t)], None, backend)
    own = xp.ones(2, dtype="float32")
    base = xp.ones((2, 2), dtype="float32")
    view = base[0]
    kept = xp.zeros(2, dtype="float32")
    grads = [own, own, view, kept, None]
    out = ref.collect((w, v, u, t), grads, [None] * 5, kept={id(kept)})
    assert out[w] is own
    assert out[v] is not own and out[v].base is None
    assert out[u] is not view and out[u].base is None
    assert out[t] is not kept
    for node, expected in ((w, own), (v, own), (u, view), (t, kept)):
        assert_close(out[node], expected)


def test_copy_into_writes_gradients_and_zeros_into_the_given_arrays(backend):
    xp = backend.xp
    w, v, u = (gn.Parameter(arr(backend, [1.0, 2.0]), name=n) for n in "wvu")
    ref = Reference([Rec(w, v, u)], None, backend)
    bw, bv, bu = (xp.full(2, 7.0, dtype="float32") for _ in range(3))
    g = arr(backend, [1.5, 2.5])
    out = ref.copy_into((w, v, u), [g, None, bu], {w: bw, v: bv, u: bu})
    assert out[w] is bw and out[v] is bv and out[u] is bu
    assert_close(bw, np.array([1.5, 2.5], dtype=np.float32))
    assert_close(bv, np.zeros(2, dtype=np.float32))
    assert_close(bu, np.full(2, 7.0, dtype=np.float32))


def test_copy_into_zeroes_a_target_after_the_cost(backend):
    w = gn.Parameter(arr(backend, [1.0, 2.0]), name="w")
    ref = Reference([Rec(w)], None, backend)
    buf = backend.xp.full(2, 7.0, dtype="float32")
    ref.copy_into((w,), [], {w: buf})
    assert_close(buf, np.zeros(2, dtype=np.float32))


def test_gradients_into_arrays_through_the_graph(backend):
    w = gn.Parameter(arr(backend, 3.0), name="w")
    v = gn.Parameter(arr(backend, [1.0, 1.0]), name="v")
    cost = Rec(w, w, name="cost")
    g = gn.Graph([cost, Rec(v)], cost=cost, plan="reference")
    bw = backend.xp.full((), 9.0, dtype="float32")
    bv = backend.xp.full(2, 9.0, dtype="float32")
    out = g.gradients({}, wrt=[w, v], into={w: bw, v: bv})
    assert out[w] is bw and out[v] is bv
    assert_close(bw, np.array(2.0, dtype=np.float32))
    assert_close(bv, np.zeros(2, dtype=np.float32))


def test_grad_or_zero_gives_the_gradient_or_zeros_of_the_value_or_shape(backend):
    xp = backend.xp
    w = gn.Parameter(arr(backend, [1.0, 2.0]), name="w")
    x = gn.Input("x", shape=(3,), dtype="float32")
    cost = Rec(gn.Input("c", shape=()), name="cost")
    ref = Reference([Rec(w), Rec(x)], cost, backend)
    g = arr(backend, [4.0, 5.0])
    n = len(ref.order)
    grads = [None] * n
    grads[ref.index[w.id]] = g
    assert ref.grad_or_zero(w, grads, [None] * n) is g
    zw = ref.grad_or_zero(w, [None] * n, [None] * n)
    assert_close(zw, np.zeros(2, dtype=np.float32), check_dtype=w.dtype)
    values = [None] * n
    values[ref.index[x.id]] = xp.ones(4, dtype="float64")
    assert_close(ref.grad_or_zero(x, [], values), np.zeros(4), check_dtype="float64")
    assert_close(ref.grad_or_zero(x, [], [None] * n), np.zeros(3, dtype=np.float32),
                 check_dtype="float32")


@pytest.mark.parametrize("shape,dtype,shown", [((None, 3), "float32", "(?, 3)"),
                                               (None, "float32", "(shape unknown)"),
                                               ((3,), None, "(3,)")])
def test_grad_or_zero_refuses_a_node_of_unknown_shape_or_dtype(backend, shape, dtype, shown):
    x = gn.Input("x", shape=(2,), dtype="float32")
    x.shape, x.dtype = shape, dtype
    cost = Rec(gn.Input("c", shape=()), name="loss")
    ref = Reference([Rec(gn.Input("y", shape=(2,)))], cost, backend)
    ref.index[x.id] = 0
    with pytest.raises(gn.GraphError, match="^the cost 'loss' does not depend on 'x', whose "
                       "shape " + re.escape(shown) + " is not fully known, so it has no zero gradient to give$"):
        ref.grad_or_zero(x, [], [None] * len(ref.order))


# --- second round: the survivors of the recorded run -------------------------------------------
def test_the_gradient_of_the_cost_itself_is_ones_of_its_dtype(backend):
    w = gn.Parameter(arr(backend, 3.0), name="w")
    cost = Rec(w, name="cost")
    grads = gn.Graph(cost, cost=cost, plan="reference").gradients({}, wrt=[cost])
    assert_close(grads[cost], np.array(1.0, dtype=np.float32), check_dtype="float32")


def test_a_cost_that_is_not_scalar_at_run_time_is_refused(backend):
    x = gn.Input("x", shape=(2,))
    cost = Rec(x, name="cost")
    cost.shape = ()  # declared scalar, a vector when it runs
    g = gn.Graph(cost, cost=cost, plan="reference")
    with pytest.raises(gn.GraphError, match=r"^the cost must be a scalar, but 'cost' has shape "
                       r"\(2,\) at run time"):
        g.gradients({x: np.ones(2, dtype=np.float32)}, wrt=[x])


def test_gradients_give_zeros_for_a_target_off_the_cost_path(backend):
    w = gn.Parameter(arr(backend, 3.0), name="w")
    v = gn.Parameter(arr(backend, [1.0, 1.0]), name="v")
    cost = Rec(w, name="cost")
    grads = gn.Graph([cost, Rec(v)], cost=cost, plan="reference").gradients({}, wrt=[w, v])
    assert_close(grads[v], np.zeros(2, dtype=np.float32), check_dtype="float32")


def test_grad_or_zero_follows_the_nodes_value_where_its_shape_is_not_declared(backend):
    w = gn.Parameter(arr(backend, [1.0, 2.0, 3.0]), name="w")
    ref = Reference([Rec(w)], None, backend)
    w.shape = None  # only the value knows the shape
    zeros = ref.grad_or_zero(w, [], [None] * len(ref.order))
    assert_close(zeros, np.zeros(3, dtype=np.float32), check_dtype="float32")


def test_a_cycle_below_the_root_is_refused(backend):
    x = gn.Input("x", shape=(2,))
    a = Rec(x, name="a")
    b = Rec(a, name="b")
    top = Rec(b, name="top")
    a.inputs = (b,)
    with pytest.raises(gn.GraphError, match=r"^the graph has a cycle through <Rec 'b' \(2,\)>$"):
        topological_order([top])
