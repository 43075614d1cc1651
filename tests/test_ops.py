"""Every op in ``graphnet.ops``: float64 gradient checks, backend agreement, dtypes, sugar.

One table (``CASES``) drives both the central-difference check and the
backend-agreement check; each case carries its own plain-NumPy forward and
vector-Jacobian product (float64), written independently of graphnet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

import graphnet as gn
from graphnet import ops
from graphnet.testing import assert_close, check_gradients


# --- value generators -----------------------------------------------------------------
def normal(rng, shape):
    return rng.standard_normal(shape)


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def away(rng, shape):
    """Values with |x| >= 0.2 (no kinks of relu within the finite-difference step)."""
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 2.0, shape)


# --- plain NumPy reference helpers ----------------------------------------------------
def unb(g, shape):
    """Sum ``g`` back to ``shape`` (undo broadcasting)."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for i, d in enumerate(shape):
        if d == 1 and g.shape[i] != 1:
            g = g.sum(axis=i, keepdims=True)
    return g


def swap(a):
    return np.swapaxes(a, -1, -2)


def np_softmax(a, axis=-1):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(a, axis=-1):
    z = a - a.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def reduce_vjp(r, a, axis, keepdims, mean):
    """Gradient of sum/mean over ``axis`` of ``a`` for upstream ``r``."""
    axes = tuple(range(a.ndim)) if axis is None else tuple(
        ax % a.ndim for ax in ((axis,) if isinstance(axis, int) else axis))
    g = r if keepdims else np.expand_dims(r, axes)
    count = np.prod([a.shape[ax] for ax in axes]) if mean else 1
    return (np.broadcast_to(g, a.shape) / count,)


def getitem_vjp(index):
    def vjp(r, a):
        out = np.zeros_like(a)
        np.add.at(out, index, r)
        return (out,)
    return vjp


def concat_vjp(axis):
    def vjp(r, *xs):
        cuts = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return tuple(np.split(r, cuts, axis=axis))
    return vjp


LABELS = np.array([0, 3, 1, 1, 2])
ONE_HOT = np.eye(4)[LABELS]


def ce_vjp(r, a, y):
    y = np.eye(a.shape[1])[y] if y.ndim == 1 else y
    return (r * (np_softmax(a) - y) / a.shape[0],)


def ce_ref(a, y):
    y = np.eye(a.shape[1])[y] if y.ndim == 1 else y
    return -(np_log_softmax(a) * y).sum() / a.shape[0]


# --- the table --------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    build: Callable[..., Any]
    shapes: list
    ref: Callable[..., Any]
    vjp: Callable[..., tuple]
    gens: list = field(default_factory=list)
    nondiff: dict = field(default_factory=dict)

    def inputs(self, rng) -> list:
        gens = self.gens or [normal] * len(self.shapes)
        return [g(rng, s) for g, s in zip(gens, self.shapes)]

    def args(self, diff: list) -> list:
        """Differentiable values with the non-differentiable ones inserted at their positions."""
        out = list(diff)
        for k, v in sorted(self.nondiff.items()):
            out.insert(k, v)
        return out


A, B = (3, 1, 4), (2, 4)  # broadcast to (3, 2, 4)
CASES = [
    Case("add", ops.add, [A, B], np.add,
         lambda r, a, b: (unb(r, a.shape), unb(r, b.shape))),
    Case("sub", ops.sub, [A, B], np.subtract,
         lambda r, a, b: (unb(r, a.shape), -unb(r, b.shape))),
    Case("mul", ops.mul, [A, B], np.multiply,
         lambda r, a, b: (unb(r * b, a.shape), unb(r * a, b.shape))),
    Case("div", ops.div, [A, B], np.divide,
         lambda r, a, b: (unb(r / b, a.shape), unb(-r * a / b**2, b.shape)), [normal, positive]),
    Case("neg", ops.neg, [(3, 4)], np.negative, lambda r, a: (-r,)),
    Case("power_2", lambda x: ops.power(x, 2), [(3, 4)], lambda a: a**2,
         lambda r, a: (2 * a * r,)),
    Case("power_3_int", lambda x: ops.power(x, 3), [(2, 3)], lambda a: a**3,
         lambda r, a: (3 * a**2 * r,)),
    Case("power_half", lambda x: ops.power(x, 0.5), [(3, 4)], np.sqrt,
         lambda r, a: (0.5 / np.sqrt(a) * r,), [positive]),
    Case("power_neg", lambda x: ops.power(x, -1.5), [(3, 4)], lambda a: a**-1.5,
         lambda r, a: (-1.5 * a**-2.5 * r,), [positive]),
    Case("power_0", lambda x: ops.power(x, 0), [(3,)], np.ones_like,
         lambda r, a: (np.zeros_like(a),)),
    Case("matmul_2d", ops.matmul, [(3, 4), (4, 5)], np.matmul,
         lambda r, a, b: (r @ b.T, a.T @ r)),
    Case("matmul_batched", ops.matmul, [(2, 3, 4), (2, 4, 5)], np.matmul,
         lambda r, a, b: (r @ swap(b), swap(a) @ r)),
    Case("matmul_broadcast", ops.matmul, [(2, 1, 3, 4), (3, 4, 2)], np.matmul,
         lambda r, a, b: (unb(r @ swap(b), a.shape), unb(swap(a) @ r, b.shape))),
    Case("matmul_2d_by_3d", ops.matmul, [(3, 4), (2, 4, 5)], np.matmul,
         lambda r, a, b: (unb(r @ swap(b), a.shape), a.T @ r)),
    Case("transpose_default", ops.transpose, [(2, 3, 4)], np.transpose,
         lambda r, a: (r.T,)),
    Case("transpose_axes", lambda x: ops.transpose(x, (1, 2, 0)), [(2, 3, 4)],
         lambda a: a.transpose(1, 2, 0), lambda r, a: (r.transpose(2, 0, 1),)),
    Case("transpose_negative_axes", lambda x: ops.transpose(x, (0, -1, -2)), [(2, 3, 4)],
         lambda a: a.transpose(0, 2, 1), lambda r, a: (r.transpose(0, 2, 1),)),
    Case("reshape", lambda x: ops.reshape(x, (4, 6)), [(2, 3, 4)],
         lambda a: a.reshape(4, 6), lambda r, a: (r.reshape(a.shape),)),
    Case("reshape_minus_one", lambda x: ops.reshape(x, (-1, 3, 2)), [(2, 3, 4)],
         lambda a: a.reshape(4, 3, 2), lambda r, a: (r.reshape(a.shape),)),
    Case("flatten", ops.flatten, [(2, 3, 4)], lambda a: a.reshape(2, 12),
         lambda r, a: (r.reshape(a.shape),)),
    Case("getitem_slices", lambda x: x[1:, ::2], [(3, 5)], lambda a: a[1:, ::2],
         getitem_vjp((slice(1, None), slice(None, None, 2)))),
    Case("getitem_int", lambda x: x[1], [(3, 4)], lambda a: a[1], getitem_vjp(1)),
    Case("getitem_scalar", lambda x: x[-1, 2], [(3, 4)], lambda a: a[-1, 2],
         getitem_vjp((-1, 2))),
    Case("getitem_none_ellipsis", lambda x: x[None, ..., 1], [(2, 3, 4)],
         lambda a: a[None, ..., 1],
         lambda r, a: getitem_vjp((Ellipsis, 1))(r[0], a)),
    Case("getitem_int_array_repeats", lambda x: x[[0, 2, 0, 0]], [(3, 4)],
         lambda a: a[[0, 2, 0, 0]], getitem_vjp(([0, 2, 0, 0],))),
    Case("getitem_int_array_and_slice", lambda x: x[[1, 1, 0], 1:], [(3, 4)],
         lambda a: a[[1, 1, 0], 1:], getitem_vjp(([1, 1, 0], slice(1, None)))),
    Case("concat_axis0", lambda a, b, c: ops.concat([a, b, c]), [(2, 3), (1, 3), (4, 3)],
         lambda *xs: np.concatenate(xs), concat_vjp(0)),
    Case("concat_axis_last", lambda a, b: ops.concat([a, b], axis=-1), [(2, 1), (2, 3)],
         lambda *xs: np.concatenate(xs, axis=-1), concat_vjp(-1)),
    Case("sum_all", ops.sum, [(2, 3, 4)], np.sum,
         lambda r, a: reduce_vjp(r, a, None, False, False)),
    Case("sum_axis", lambda x: ops.sum(x, 1), [(2, 3, 4)], lambda a: a.sum(1),
         lambda r, a: reduce_vjp(r, a, 1, False, False)),
    Case("sum_tuple_keepdims", lambda x: ops.sum(x, (0, 2), keepdims=True), [(2, 3, 4)],
         lambda a: a.sum((0, 2), keepdims=True),
         lambda r, a: reduce_vjp(r, a, (0, 2), True, False)),
    Case("sum_all_keepdims", lambda x: ops.sum(x, keepdims=True), [(2, 3)],
         lambda a: a.sum(keepdims=True), lambda r, a: reduce_vjp(r, a, None, True, False)),
    Case("sum_numpy_int_axes", lambda x: ops.sum(x, [np.int64(0), np.int64(-1)]), [(2, 3, 4)],
         lambda a: a.sum((0, 2)), lambda r, a: reduce_vjp(r, a, (0, 2), False, False)),
    Case("mean_all", ops.mean, [(2, 3, 4)], np.mean,
         lambda r, a: reduce_vjp(r, a, None, False, True)),
    Case("mean_negative_axis", lambda x: ops.mean(x, -1), [(2, 3, 4)], lambda a: a.mean(-1),
         lambda r, a: reduce_vjp(r, a, -1, False, True)),
    Case("mean_tuple_keepdims", lambda x: ops.mean(x, (0, -1), keepdims=True), [(2, 3, 4)],
         lambda a: a.mean((0, 2), keepdims=True),
         lambda r, a: reduce_vjp(r, a, (0, 2), True, True)),
    Case("tanh", ops.tanh, [(3, 4)], np.tanh, lambda r, a: (r * (1 - np.tanh(a) ** 2),)),
    Case("sigmoid", ops.sigmoid, [(3, 4)], sigmoid,
         lambda r, a: (r * sigmoid(a) * (1 - sigmoid(a)),)),
    Case("relu", ops.relu, [(3, 4)], lambda a: np.maximum(a, 0),
         lambda r, a: (r * (a > 0),), [away]),
    Case("exp", ops.exp, [(3, 4)], np.exp, lambda r, a: (r * np.exp(a),)),
    Case("log", ops.log, [(3, 4)], np.log, lambda r, a: (r / a,), [positive]),
    Case("softmax", ops.softmax, [(3, 5)], np_softmax,
         lambda r, a: (np_softmax(a) * (r - (r * np_softmax(a)).sum(-1, keepdims=True)),)),
    Case("softmax_axis0", lambda x: ops.softmax(x, axis=0), [(4, 3)],
         lambda a: np_softmax(a, 0),
         lambda r, a: (np_softmax(a, 0) * (r - (r * np_softmax(a, 0)).sum(0, keepdims=True)),)),
    Case("log_softmax", ops.log_softmax, [(3, 5)], np_log_softmax,
         lambda r, a: (r - np_softmax(a) * r.sum(-1, keepdims=True),)),
    Case("ce_class_indices", ops.softmax_cross_entropy, [(5, 4)], ce_ref, ce_vjp,
         nondiff={1: LABELS}),
    Case("ce_one_hot", ops.softmax_cross_entropy, [(5, 4)], ce_ref, ce_vjp,
         nondiff={1: ONE_HOT}),
    Case("mse", ops.mse, [(3, 4), (3, 4)], lambda a, b: ((a - b) ** 2).mean(),
         lambda r, a, b: (2 * r * (a - b) / a.size, -2 * r * (a - b) / a.size)),
    Case("linear_bias", ops.linear, [(3, 4), (4, 2), (2,)], lambda x, w, b: x @ w + b,
         lambda r, x, w, b: (r @ w.T, x.T @ r, r.sum(0))),
    Case("linear_no_bias", ops.linear, [(3, 4), (4, 2)], lambda x, w: x @ w,
         lambda r, x, w: (r @ w.T, x.T @ r)),
    Case("dropout_eval", lambda x: ops.dropout(x, 0.5), [(3, 4)], lambda a: a,
         lambda r, a: (r,)),
]
IDS = [c.id for c in CASES]


# Op classes whose gradient and agreement tests live in their own file (tests/test_conv.py).
TESTED_ELSEWHERE = {"Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm"}


def _op_classes() -> set:
    """Every concrete node class the ops modules define (those no other op class extends)."""
    import inspect
    from graphnet.node import Node
    found = set()
    for name in dir(ops):
        mod = getattr(ops, name)
        if inspect.ismodule(mod) and mod.__name__.startswith("graphnet.ops."):
            found |= {c for _, c in inspect.getmembers(mod, inspect.isclass)
                      if issubclass(c, Node) and (c.__module__ == mod.__name__  # or a package's
                                                  or c.__module__.startswith(mod.__name__ + "."))}
    return {c for c in found if not any(o is not c and issubclass(o, c) for o in found)}


def _classes_built(case: Case) -> set:
    """The node classes in the graph a case builds (walked from its output)."""
    rng = np.random.default_rng(0)
    nodes = [gn.Input(f"x{i}", shape=x.shape) for i, x in enumerate(case.inputs(rng))]
    extra = {k: gn.Input(f"n{k}", shape=v.shape,
                         dtype=v.dtype if v.dtype.kind in "iu" else "float32")
             for k, v in case.nondiff.items()}
    seen, stack = set(), [case.build(*_with_extra(nodes, extra))]
    while stack:
        node = stack.pop()
        if type(node) not in seen:
            seen.add(type(node))
        stack.extend(node.inputs)
    return seen


def test_table_covers_every_op_class():
    """Matched by class, not name: every op class is built by at least one case."""
    built = set().union(*(_classes_built(c) for c in CASES))
    missing = sorted(c.__name__ for c in _op_classes() - built
                     if c.__name__ not in TESTED_ELSEWHERE)
    assert not missing, f"op classes without a test case: {missing}"
    assert TESTED_ELSEWHERE <= {c.__name__ for c in _op_classes()}, "stale TESTED_ELSEWHERE"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_match_central_differences(backend, case):
    rng = np.random.default_rng(sum(map(ord, case.id)))
    check_gradients(case.build, case.inputs(rng), nondiff=case.nondiff)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backend_agrees_with_numpy_float64(backend, case):
    rng = np.random.default_rng(sum(map(ord, case.id)) + 1)
    fed = [x.astype(np.float32) for x in case.inputs(rng)]
    ref_args = case.args([x.astype(np.float64) for x in fed])
    nodes = [gn.Input(f"x{i}", shape=x.shape) for i, x in enumerate(fed)]
    extra = {k: gn.Input(f"n{k}", shape=v.shape,
                         dtype=v.dtype if v.dtype.kind in "iu" else "float32")
             for k, v in case.nondiff.items()}
    out = case.build(*_with_extra(nodes, extra))
    want = np.asarray(case.ref(*ref_args), dtype=np.float64)
    r = rng.standard_normal(want.shape).astype(np.float32)
    r_node = gn.Input("r", shape=want.shape)
    graph = gn.Graph(out, cost=gn.sum(out * r_node))
    feed = {n: backend.asarray(x) for n, x in zip(nodes, fed)}
    feed.update({node: backend.asarray(case.nondiff[k]) for k, node in extra.items()})
    y = graph.run(feed)
    assert_close(y, want, rtol=2e-4, atol=2e-5, what=f"{case.id} forward", check_dtype="float32")
    grads = graph.gradients({**feed, r_node: backend.asarray(r)}, wrt=nodes, training=False)
    expected = case.vjp(r.astype(np.float64), *ref_args)
    assert len(expected) == len(nodes)
    for i, (node, g) in enumerate(zip(nodes, expected)):
        assert backend.is_array(grads[node])
        assert_close(grads[node], g, rtol=2e-4, atol=2e-5, what=f"{case.id} gradient {i}",
                     check_dtype="float32")


def _with_extra(nodes: list, extra: dict) -> list:
    out = list(nodes)
    for k, node in sorted(extra.items()):
        out.insert(k, node)
    return out


# --- softmax cross-entropy: large logits stay finite ------------------------------------
@pytest.mark.parametrize("labels", [np.array([0, 2]), np.eye(3)[[0, 2]]], ids=["index", "one_hot"])
def test_cross_entropy_large_logits_stay_finite(backend, labels):
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 1000.0]], dtype=np.float32)
    z = gn.Parameter(logits)
    y = gn.Constant(labels)
    loss = gn.softmax_cross_entropy(z, y)
    cost, grads = gn.Graph(loss, cost=loss).gradients({}, return_cost=True)
    # row 0: log-prob of class 0 is 0; row 1: classes 1 and 2 tie, log-prob of class 2 = -log 2
    assert_close(cost, np.log(2) / 2, rtol=1e-6, what="loss", check_dtype="float32")
    want = (np.array([[1, 0, 0], [0, 0.5, 0.5]]) - np.eye(3)[[0, 2]]) / 2
    assert_close(grads[z], want, atol=1e-7, what="gradient", check_dtype="float32")


def test_softmax_and_log_softmax_large_inputs_stay_finite(backend):
    x = gn.Parameter(np.array([[1000.0, -1000.0, 999.0]]))
    s, ls = gn.softmax(x), gn.log_softmax(x)
    got_s, got_ls = gn.Graph([s, ls]).run({})
    z = np.array([0.0, -2000.0, -1.0])  # x - max
    e = np.exp(z)
    assert_close(got_s, [e / e.sum()], rtol=1e-6, what="softmax")
    assert_close(got_ls, [z - np.log(e.sum())], rtol=1e-6, what="log_softmax")


# --- dropout in training --------------------------------------------------------------
def test_dropout_eval_is_identity_and_training_masks(backend):
    x = gn.Input("x", shape=(None, 500))
    d = gn.dropout(x, 0.3)
    xs = np.ones((200, 500), dtype=np.float32)
    g = gn.Graph(d)
    assert_close(g.run({x: backend.asarray(xs)}), xs, rtol=0, atol=0, what="eval")
    y = gn.to_numpy(g.run({x: backend.asarray(xs)}, training=True))
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01, f"dropped fraction {1 - kept.mean()}"
    assert_close(y[kept], np.full(kept.sum(), 1 / 0.7), rtol=1e-6, what="kept scaling")
    assert abs(y.mean() - 1) < 0.02  # inverted dropout keeps the expectation


def test_dropout_gradient_equals_mask(backend):
    rng = np.random.default_rng(3)
    xs = rng.uniform(0.5, 1.5, (50, 40)).astype(np.float32)
    r = rng.standard_normal((50, 40)).astype(np.float32)
    x, r_node = gn.Input("x", shape=xs.shape), gn.Input("r", shape=r.shape)
    d = gn.dropout(x, 0.5)
    graph = gn.Graph(d, cost=gn.sum(d * r_node))
    cost, grads = graph.gradients({x: backend.asarray(xs), r_node: backend.asarray(r)},
                                  wrt=[x], training=True, return_cost=True)
    mask = gn.to_numpy(grads[x]) / r  # the mask itself, from the gradient
    assert set(np.round(np.unique(mask), 5)) <= {0.0, 2.0}
    assert 0.4 < (mask == 0).mean() < 0.6
    # the same mask was used forward: cost = sum(x * mask * r)
    assert_close(cost, np.sum(xs.astype(np.float64) * mask * r), rtol=1e-4, what="cost")
    gn.seed(7)
    a = gn.to_numpy(graph.run({x: backend.asarray(xs)}, training=True))
    gn.seed(7)
    b = gn.to_numpy(graph.run({x: backend.asarray(xs)}, training=True))
    assert_close(a, b, rtol=0, atol=0, what="seeded masks")


def test_dropout_rate_is_validated():
    with pytest.raises(ValueError, match="rate"):
        gn.dropout(gn.Input("x", shape=(2,)), 1.0)


# --- no silent float64 promotion ----------------------------------------------------------
PROMOTION_EXPRS = {
    "add_int": lambda x: x + 2, "sub_float": lambda x: x - 2.5, "rsub": lambda x: 2 - x,
    "mul": lambda x: 3 * x, "div": lambda x: x / 2, "rdiv": lambda x: 2 / x,
    "pow_int": lambda x: x ** 2, "pow_float": lambda x: x ** 0.5, "neg": lambda x: -x,
    "np_float64_scalar": lambda x: x * np.float64(1.5),
    "np_float64_0d": lambda x: x + np.array(1.5),
    "np_int_array": lambda x: x * np.array([1, 2, 3]),
    "np_float64_array": lambda x: np.arange(3.0) + x,
    "matmul_np": lambda x: x.reshape(1, 3) @ np.ones((3, 2)),
    "mse_np_target": lambda x: gn.mse(x, np.zeros(3)),
    "linear_np": lambda x: gn.linear(x.reshape(1, 3), np.ones((3, 2)), np.ones(2)),
    "concat_sum": lambda x: gn.concat([x, x]).sum() / 4,
}


@pytest.mark.parametrize("expr", list(PROMOTION_EXPRS.values()), ids=list(PROMOTION_EXPRS))
def test_float32_stays_float32(backend, expr):
    x = gn.Input("x", shape=(3,))
    out = expr(x)
    assert out.dtype == np.float32, f"node dtype {out.dtype}"
    y = gn.Graph(out).run({x: backend.asarray(np.array([1.0, 2.0, 3.0], np.float32))})
    assert gn.to_numpy(y).dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_gradient_has_its_parameters_dtype(backend, dtype):
    with gn.default_dtype(dtype):
        w = gn.Parameter(np.ones((3, 2)))
        b = gn.Parameter(np.zeros(2))
        s = gn.Parameter(np.ones(()))
    x = gn.Input("x", shape=(None, 3), dtype="float32")
    y = gn.Input("y", shape=(None, 2), dtype="float64")  # a float64 target mixes dtypes
    cost = gn.mse(gn.tanh(gn.linear(x, w, b)) * s, y) + 0.1 * (w ** 2).sum()
    feed = {x: backend.asarray(np.ones((4, 3))), y: backend.asarray(np.zeros((4, 2)))}
    grads = gn.Graph(cost, cost=cost).gradients(feed)
    for p in (w, b, s):
        assert grads[p].dtype == np.dtype(dtype), f"{p.name}: {grads[p].dtype}"
        assert grads[p].shape == p.shape


# --- operator sugar ---------------------------------------------------------------------
XS = np.arange(1.0, 7.0).reshape(2, 3)
WS = np.arange(6.0).reshape(3, 2) / 10
SUGAR = {
    "add": (lambda x, w: x + x, "add", XS + XS),
    "sub": (lambda x, w: x - 1, "sub", XS - 1),
    "mul": (lambda x, w: x * x, "mul", XS * XS),
    "div": (lambda x, w: x / 2, "div", XS / 2),
    "pow": (lambda x, w: x ** 2, "pow", XS ** 2),
    "matmul": (lambda x, w: x @ w, "matmul", XS @ WS),
    "rmatmul_numpy": (lambda x, w: XS @ w, "matmul", XS @ WS),
    "T": (lambda x, w: x.T, "transpose", XS.T),
    "reshape_args": (lambda x, w: x.reshape(3, 2), "reshape", XS.reshape(3, 2)),
    "reshape_tuple": (lambda x, w: x.reshape((-1,)), "reshape", XS.reshape(-1)),
    "sum": (lambda x, w: x.sum(0), "sum", XS.sum(0)),
    "mean": (lambda x, w: x.mean(axis=1, keepdims=True), "mean", XS.mean(1, keepdims=True)),
    "slice": (lambda x, w: x[:, 1:], "getitem", XS[:, 1:]),
    "neg": (lambda x, w: -x, "neg", -XS),
    "rsub": (lambda x, w: 2 - x, "sub", 2 - XS),
    "rdiv": (lambda x, w: 1 / x, "div", 1 / XS),
    "radd_numpy": (lambda x, w: np.ones(3) + x, "add", np.ones(3) + XS),
    "rmul_numpy": (lambda x, w: np.arange(3.0) * x, "mul", np.arange(3.0) * XS),
}


@pytest.mark.parametrize("expr,op,want", list(SUGAR.values()), ids=list(SUGAR))
def test_operator_sugar(backend, expr, op, want):
    x, w = gn.Input("x", shape=(2, 3)), gn.Parameter(WS)
    out = expr(x, w)
    assert isinstance(out, gn.Node) and out.op == op
    assert out.shape == want.shape
    graph = gn.Graph(out)
    got = graph.run({x: backend.asarray(XS.astype(np.float32))} if x in graph else {})
    assert_close(got, want, rtol=1e-6, what=op, check_dtype="float32")


def test_power_needs_a_number():
    x = gn.Input("x", shape=(2,))
    with pytest.raises(TypeError, match="number"):
        x ** x


def test_power_gradient_at_zero_is_finite(backend):
    x = gn.Input("x", shape=(3,))
    cost = (x ** 0).sum() + (x ** 2).sum() + (x ** 1).sum()
    grads = gn.Graph(cost, cost=cost).gradients({x: backend.asarray(np.zeros(3, np.float32))},
                                                wrt=[x])
    assert_close(grads[x], np.ones(3), what="d/dx (x**0 + x**2 + x) at 0", check_dtype="float32")
