"""Hypothesis properties: random (broadcastable) shapes and bounded values.

For elementwise, broadcasting, reduction and matmul ops: the forward agrees with
NumPy float64 and the gradients with float64 central differences.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import (array_shapes, arrays, mutually_broadcastable_shapes,
                                    valid_tuple_axes)

import graphnet as gn
from graphnet.testing import assert_close, check_gradients

SETTINGS = settings(max_examples=30, deadline=None)


def values(shape, lo=-3.0, hi=3.0, away_from_zero=False):
    elems = st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    if away_from_zero:
        elems = elems.filter(lambda v: abs(v) > 0.05)
    return arrays(np.float64, shape, elements=elems)


def forward64(build, arrays_):
    """``build`` on float64 Inputs, run on the NumPy backend, as a host array."""
    with gn.use_backend("numpy"), gn.default_dtype("float64"):
        nodes = [gn.Input(f"x{i}", shape=a.shape) for i, a in enumerate(arrays_)]
        out = build(*nodes)
        return gn.to_numpy(gn.Graph(out).run(dict(zip(nodes, arrays_))))


def check(build, reference, arrays_):
    got = forward64(build, arrays_)
    assert_close(got, reference(*arrays_), rtol=1e-12, atol=1e-12, what="forward",
                 check_dtype="float64")
    with gn.use_backend("numpy"):
        check_gradients(build, arrays_, rtol=1e-5, atol=1e-6)


BINARY = {"add": (gn.add, np.add), "sub": (gn.sub, np.subtract),
          "mul": (gn.mul, np.multiply), "div": (gn.div, np.divide)}


@SETTINGS
@given(data=st.data(), op=st.sampled_from(sorted(BINARY)))
def test_binary_ops_broadcast(data, op):
    shapes = data.draw(mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
    a = data.draw(values(shapes.input_shapes[0]))
    b = data.draw(values(shapes.input_shapes[1], 0.5, 3.0) if op == "div"
                  else values(shapes.input_shapes[1]))
    build, ref = BINARY[op]
    check(build, ref, [a, b])
    assert forward64(build, [a, b]).shape == shapes.result_shape


UNARY = {
    "neg": (gn.neg, np.negative, {}),
    "tanh": (gn.tanh, np.tanh, {}),
    "sigmoid": (gn.sigmoid, lambda a: 1 / (1 + np.exp(-a)), {}),
    "relu": (gn.relu, lambda a: np.maximum(a, 0), {"away_from_zero": True}),
    "exp": (gn.exp, np.exp, {}),
    "log": (gn.log, np.log, {"lo": 0.2}),
    "square": (lambda x: x ** 2, np.square, {}),
    "sqrt": (lambda x: x ** 0.5, np.sqrt, {"lo": 0.2}),
}


@SETTINGS
@given(data=st.data(), op=st.sampled_from(sorted(UNARY)))
def test_unary_ops(data, op):
    build, ref, bounds = UNARY[op]
    shape = data.draw(array_shapes(min_dims=0, max_dims=3, max_side=4))
    check(build, ref, [data.draw(values(shape, **bounds))])


@st.composite
def reduction_args(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=3))
    n = len(shape)
    axis = draw(st.none() | st.integers(-n, n - 1) | valid_tuple_axes(n, min_size=1))
    return shape, axis, draw(st.booleans())


@SETTINGS
@given(data=st.data(), args=reduction_args(), op=st.sampled_from(["sum", "mean"]))
def test_reductions(data, args, op):
    shape, axis, keepdims = args
    x = data.draw(values(shape))
    build = lambda n: getattr(gn, op)(n, axis, keepdims)  # noqa: E731
    check(build, lambda a: getattr(np, op)(a, axis=axis, keepdims=keepdims), [x])


@SETTINGS
@given(data=st.data(), dims=st.tuples(*[st.integers(1, 4)] * 3))
def test_matmul_batched_broadcast(data, dims):
    n, k, m = dims
    batch = data.draw(mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    a = data.draw(values(batch.input_shapes[0] + (n, k)))
    b = data.draw(values(batch.input_shapes[1] + (k, m)))
    check(gn.matmul, np.matmul, [a, b])
    assert gn.matmul(gn.Input("a", shape=a.shape), gn.Input("b", shape=b.shape)).shape \
        == batch.result_shape + (n, m)
