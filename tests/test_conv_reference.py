"""The fast, chunked conv2d (plain and fused) against the plain reference convolution of
graphnet.testing, forward and both gradients, on every backend; and the reference itself
against the independent loops of tests/test_conv.py."""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import ops
from graphnet.errors import ArgumentError, ShapeError
from graphnet.ops.conv import set_im2col_limit
from graphnet.testing import assert_close, reference_conv2d, reference_conv2d_grads

from test_conv import ref_conv2d, ref_conv2d_grads, ref_pool, ref_pool_grad

CASES = {  # x shape, w shape, stride, padding, bias
    "3x3": ((2, 3, 6, 5), (4, 3, 3, 3), 1, 0, True),
    "stride2-pad1-rect": ((3, 2, 7, 7), (3, 2, 3, 2), (2, 1), (1, 0), True),
    "no-bias-odd": ((1, 1, 9, 5), (2, 1, 5, 3), 1, 2, False),
    "1x1-strides": ((3, 2, 4, 6), (2, 2, 1, 1), (2, 3), (0, 1), True),
    "stride3-pad2": ((2, 2, 11, 9), (3, 2, 4, 3), 3, 2, False),
}


def _feed_and_grads(build, arrays, g, dtype, plan="step"):
    """The output and the gradients of ``sum(build(...) * g)`` of the nodes fed ``arrays``."""
    be = gn.backend()
    with gn.default_dtype(dtype):
        nodes = [gn.Input(f"a{i}", shape=a.shape) for i, a in enumerate(arrays)]
        out = build(*nodes)
        up = gn.Input("up", shape=g.shape)
        graph = gn.Graph(out, cost=gn.sum(out * up), plan=plan)
    feed = {n: be.asarray(a.astype(dtype)) for n, a in zip(nodes, arrays)}
    grads = graph.gradients({**feed, up: be.asarray(g.astype(dtype))}, wrt=nodes)
    fused = [s.node.op for s in graph.planner.forward_plan([out]).steps]
    return graph.run(feed), [grads[n] for n in nodes], fused


def _operands(rng, x_shape, w_shape):
    return rng.standard_normal(x_shape), 0.5 * rng.standard_normal(w_shape), \
        rng.standard_normal(w_shape[0])


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("chunked", [False, True])
def test_conv2d_matches_the_reference(backend, name, dtype, tol, chunked):
    x_shape, w_shape, stride, padding, bias = CASES[name]
    x, w, b = _operands(np.random.default_rng(len(name)), x_shape, w_shape)
    y = reference_conv2d(x, w, b if bias else None, stride, padding)
    g = np.random.default_rng(1).standard_normal(y.shape)
    gx, gw, gb = reference_conv2d_grads(x, w, g, stride, padding)
    arrays = [x, w, b] if bias else [x, w]
    build = lambda *n: ops.conv2d(*n, stride=stride, padding=padding)  # noqa: E731
    old = set_im2col_limit(1) if chunked else None  # 1 byte: one image per chunk
    try:
        out, grads, _ = _feed_and_grads(build, arrays, g, dtype)
    finally:
        if old is not None:
            set_im2col_limit(old)
    assert_close(out, y, rtol=tol, atol=tol, what="output", check_dtype=dtype)
    for got, want, what in zip(grads, (gx, gw, gb), ("gx", "gw", "gb")):
        assert_close(got, want, rtol=tol, atol=tol * 10, what=what, check_dtype=dtype)


@pytest.mark.parametrize("name", ["3x3", "stride2-pad1-rect", "no-bias-odd"])
def test_fused_conv_tanh_matches_the_reference(backend, name):
    x_shape, w_shape, stride, padding, bias = CASES[name]
    x, w, b = _operands(np.random.default_rng(7), x_shape, w_shape)
    xp = gn.backend().xp
    y = xp.tanh(reference_conv2d(x, w, b if bias else None, stride, padding))
    g = np.random.default_rng(2).standard_normal(y.shape)
    gz = xp.asarray(g) * (1 - y * y)
    want = reference_conv2d_grads(x, w, gz, stride, padding)
    arrays = [x, w, b] if bias else [x, w]
    build = lambda *n: gn.tanh(ops.conv2d(*n, stride=stride, padding=padding))  # noqa: E731
    out, grads, fused = _feed_and_grads(build, arrays, g, "float64")
    assert fused == ["conv2d+tanh"]
    assert_close(out, y, rtol=1e-12, atol=1e-12, what="output")
    for got, ref, what in zip(grads, want, ("gx", "gw", "gb")):
        assert_close(got, ref, rtol=1e-11, atol=1e-11, what=what)


@pytest.mark.parametrize("conv_hw,pool", [((9, 7), 2), ((8, 11), 3), ((7, 7), (2, 3))])
def test_fused_conv_max_pool_with_leftovers_matches_the_reference(backend, conv_hw, pool):
    """Conv outputs whose rows and columns the windows do not cover exactly (leftovers)."""
    rng = np.random.default_rng(11)
    x, w, b = _operands(rng, (3, 2) + tuple(s + 2 for s in conv_hw), (4, 2, 3, 3))
    z = gn.to_numpy(reference_conv2d(x, w, b))
    size = pool if isinstance(pool, tuple) else (pool, pool)
    y = ref_pool(z, size, size, "max")
    g = rng.standard_normal(y.shape)
    want = reference_conv2d_grads(x, w, ref_pool_grad(z, g, size, size, "max"))
    build = lambda *n: ops.max_pool2d(ops.conv2d(*n), pool)  # noqa: E731
    out, grads, fused = _feed_and_grads(build, [x, w, b], g, "float64")
    assert fused == ["conv2d+max_pool2d"]
    assert_close(out, y, rtol=1e-12, atol=1e-12, what="output")
    for got, ref, what in zip(grads, want, ("gx", "gw", "gb")):
        assert_close(got, ref, rtol=1e-11, atol=1e-11, what=what)


@pytest.mark.parametrize("name", list(CASES))
def test_the_reference_agrees_with_independent_loops(numpy_backend, name):
    x_shape, w_shape, stride, padding, bias = CASES[name]
    x, w, b = _operands(np.random.default_rng(3), x_shape, w_shape)
    s, p = (stride,) * 2 if isinstance(stride, int) else stride, \
        (padding,) * 2 if isinstance(padding, int) else padding
    y = reference_conv2d(x, w, b if bias else None, stride, padding)
    assert_close(y, ref_conv2d(x, w, b if bias else None, s, p), rtol=1e-12, atol=1e-12,
                 check_dtype=np.float64)
    g = np.random.default_rng(4).standard_normal(y.shape)
    for got, want in zip(reference_conv2d_grads(x, w, g, stride, padding),
                         ref_conv2d_grads(x, w, g, s, p)):
        assert_close(got, want, rtol=1e-12, atol=1e-12, check_dtype=np.float64)


X, W = np.zeros((2, 3, 5, 5)), np.zeros((4, 3, 3, 3))


@pytest.mark.parametrize("call,error,words", [
    (lambda: reference_conv2d(X[0], W), ShapeError, ["x must be 4-D", "(3, 5, 5)"]),
    (lambda: reference_conv2d(X, W[0]), ShapeError, ["w must be 4-D"]),
    (lambda: reference_conv2d(X, np.zeros((4, 2, 3, 3))), ShapeError, ["3 channels", "expects 2"]),
    (lambda: reference_conv2d(X, np.zeros((4, 3, 6, 3))), ShapeError, ["kernel (6, 3)"]),
    (lambda: reference_conv2d(X, W, np.zeros(3)), ShapeError, ["b must have shape (4,)"]),
    (lambda: reference_conv2d(X, W, stride=0), ArgumentError, ["stride", "0"]),
    (lambda: reference_conv2d(X, W, padding=-1), ArgumentError, ["padding", "-1"]),
    (lambda: reference_conv2d([[1.0]], W), ArgumentError, ["x must be an array", "list"]),
    (lambda: reference_conv2d(X, W, dtype="int32"), ArgumentError, ["floating dtype", "int32"]),
    (lambda: reference_conv2d_grads(X, W, np.zeros((2, 4, 3, 4))), ShapeError,
     ["g must have shape (2, 4, 3, 3)", "(2, 4, 3, 4)"]),
])
def test_the_reference_names_bad_input(numpy_backend, call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)
