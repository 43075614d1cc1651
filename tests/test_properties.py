"""Hypothesis properties: random (broadcastable) shapes and bounded values.

For elementwise, broadcasting, reduction and matmul ops: the forward agrees with
NumPy float64 and the gradients with float64 central differences.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the property tests need hypothesis (the test extra)")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
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


# --- hostile inputs at the public doors: a correct result or a graphnet error naming the culprit ---
import io as _io  # noqa: E402
import math  # noqa: E402
import numbers  # noqa: E402


from graphnet import nn, optim  # noqa: E402
from graphnet.errors import GraphnetError  # noqa: E402
from graphnet.io import CheckpointError, read_npz  # noqa: E402

DOORS = settings(max_examples=40, deadline=None)

# Anything a user might pass where a number is expected.
hostile_scalars = st.one_of(
    st.integers(-3, 6), st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.booleans(), st.none(), st.text(max_size=3), st.sampled_from([np.int64(2), np.float32(0.5)]),
    st.tuples(st.integers(-1, 3), st.integers(-1, 3)), st.lists(st.integers(0, 3), max_size=3))


def outcome(fn, culprit: str):
    """``fn()``'s result, or None where it raised a graphnet error whose message names ``culprit``."""
    try:
        return ("ok", fn())
    except GraphnetError as exc:
        assert culprit in str(exc), f"error does not name {culprit!r}: {exc}"
        return ("refused", exc)


def is_int(v, minimum) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum


def is_real(v, lo, hi, hi_open=True) -> bool:
    return (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            and lo <= v and (v < hi if hi_open else v <= hi))


FEED_DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool",
               "complex64", "U2", "object"]


@st.composite
def hostile_feeds(draw):
    """(value, how it was made) for a feed: arrays of many dtypes and shapes, lists, subclasses."""
    shape = draw(array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    dtype = draw(st.sampled_from(FEED_DTYPES))
    base = np.asarray(np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) % 5)
    arr = np.asarray(base, dtype=dtype)
    kind = draw(st.sampled_from(["array", "list", "ragged", "matrix", "masked", "scalar"]))
    if kind == "list":
        return arr.tolist(), kind
    if kind == "ragged":
        return [[1.0, 2.0], [3.0]] if draw(st.booleans()) else [1.0, [2.0, 3.0]], kind
    if kind == "matrix" and arr.ndim == 2:
        return np.asmatrix(arr), kind
    if kind == "masked":
        return np.ma.masked_array(arr, mask=np.zeros(arr.shape, bool)), kind
    if kind == "scalar":
        return draw(st.sampled_from([1.5, 2, True, "a", None])), kind
    return arr, "array"


@DOORS
@given(feed=hostile_feeds(), want=st.sampled_from(["float32", "float64", "int64"]),
       declared=st.sampled_from([None, (None,), (None, 3), (2, None, 3), ()]))
def test_feeds_give_the_value_or_a_feed_error_naming_the_input(feed, want, declared):
    value, kind = feed
    x = gn.Input("feed_me", shape=declared, dtype=want)
    graph = gn.Graph(x)
    status, got = outcome(lambda: graph.run({x: value}), "'feed_me'")
    if status == "refused":
        return
    host = np.asarray(value)
    assert kind in ("array", "list", "scalar") and type(value) is not np.matrix
    assert host.dtype.kind in ("f" if want != "int64" else "iu")  # no silent casts across kinds
    assert_close(gn.to_numpy(got), host.astype(want), rtol=1e-3 if want == "float32" else 0,
                 atol=0, what="fed value")
    if declared is not None:
        assert got.ndim == len(declared)
        assert all(d is None or d == s for d, s in zip(declared, got.shape))


def _naive_conv(x, w, stride, padding):
    sh, sw = stride
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out


def _pair_ok(v, minimum):
    if isinstance(v, (tuple, list)):
        return len(v) == 2 and all(is_int(a, minimum) for a in v)
    return is_int(v, minimum)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@DOORS
@given(stride=hostile_scalars, padding=hostile_scalars)
def test_conv2d_arguments_give_the_reference_or_an_error(stride, padding):
    x = np.arange(2 * 1 * 5 * 5, dtype=np.float64).reshape(2, 1, 5, 5) / 10
    w = np.linspace(-1, 1, 2 * 1 * 2 * 2).reshape(2, 1, 2, 2)
    with gn.use_backend("numpy"), gn.default_dtype("float64"):
        xi = gn.Input("img", shape=x.shape)
        status, node = outcome(lambda: gn.conv2d(xi, gn.Parameter(w, name="k"), None, stride,
                                                 padding), "conv2d")
        valid = _pair_ok(stride, 1) and _pair_ok(padding, 0)
        if status == "refused":
            assert not valid
            return
        assert valid, f"accepted stride={stride!r} padding={padding!r}"
        got = gn.Graph(node).run({xi: x})
    assert_close(got, _naive_conv(x, w, _pair(stride), _pair(padding)), rtol=1e-12, atol=1e-12)


@DOORS
@given(axis=st.one_of(hostile_scalars, st.tuples(st.integers(-4, 4), st.integers(-4, 4))),
       keepdims=st.sampled_from([True, False, 1, "no"]))
def test_sum_axis_gives_the_reference_or_an_error(axis, keepdims):
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    with gn.use_backend("numpy"), gn.default_dtype("float64"):
        x = gn.Input("x", shape=a.shape)
        status, node = outcome(lambda: x.sum(axis=axis, keepdims=keepdims), "")
        if status == "refused":
            assert "axis" in str(node) or "keepdims" in str(node), node
        axes = axis if isinstance(axis, (tuple, list)) else (axis,)
        valid = (axis is None or (all(is_int(v, -3) and v < 3 for v in axes)
                                  and len({v % 3 for v in axes}) == len(axes))) \
            and isinstance(keepdims, bool)
        if status == "refused":
            assert not valid
            return
        assert valid, f"accepted axis={axis!r} keepdims={keepdims!r}"
        got = gn.Graph(node).run({x: a})
    ax = tuple(axis) if isinstance(axis, list) else axis
    assert_close(got, np.sum(a, axis=ax, keepdims=keepdims), rtol=0, atol=0)


@DOORS
@given(p=hostile_scalars)
def test_power_and_dropout_arguments(p):
    a = np.array([[0.5, 1.0, 2.0]])
    with gn.use_backend("numpy"), gn.default_dtype("float64"):
        x = gn.Input("x", shape=a.shape)
        status, node = outcome(lambda: x ** p, "exponent")
        if status == "ok":
            assert is_real(p, -math.inf, math.inf)
            assert_close(gn.Graph(node).run({x: a}), a ** float(p), rtol=1e-12, atol=0)
        else:
            assert not is_real(p, -math.inf, math.inf)
        status, node = outcome(lambda: gn.dropout(x, p), "dropout rate")
        assert (status == "ok") == is_real(p, 0, 1)
        if status == "ok":
            assert_close(gn.Graph(node).run({x: a}), a, rtol=0, atol=0)  # identity in evaluation


@DOORS
@given(lr=hostile_scalars, momentum=hostile_scalars, wd=hostile_scalars)
def test_sgd_hyper_parameters_give_the_reference_step_or_an_error(lr, momentum, wd):
    with gn.use_backend("numpy"), gn.default_dtype("float64"):
        w = gn.Parameter(np.ones((2, 3)), name="W")
        status, opt = outcome(lambda: optim.SGD([w], lr=lr, momentum=momentum, weight_decay=wd),
                              "SGD")
        valid = (is_real(lr, 0, math.inf) and lr > 0 and is_real(momentum, 0, 1)
                 and is_real(wd, 0, math.inf))
        assert (status == "ok") == valid, (lr, momentum, wd)
        if status == "refused":
            return
        g = np.full((2, 3), 0.5)
        opt.step({w: g})
        want = np.ones((2, 3)) * (1 - float(lr) * float(wd)) - float(lr) * g
    assert_close(w.value, want, rtol=1e-12, atol=1e-12)


@DOORS
@given(b1=hostile_scalars, b2=hostile_scalars, eps=hostile_scalars)
def test_adam_hyper_parameters_or_an_error(b1, b2, eps):
    with gn.use_backend("numpy"), gn.default_dtype("float64"):
        w = gn.Parameter(np.ones(3), name="W")
        status, opt = outcome(lambda: optim.Adam([w], lr=0.1, betas=(b1, b2), eps=eps), "Adam")
        valid = is_real(b1, 0, 1) and is_real(b2, 0, 1) and is_real(eps, 0, math.inf) and eps > 0
        assert (status == "ok") == valid, (b1, b2, eps)
        if status == "ok":
            opt.step({w: np.full(3, 0.5)})
            # first Adam step: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
            assert_close(w.value, np.full(3, 1 - 0.1 * 0.5 / (0.5 + float(eps))), rtol=1e-9,
                         atol=1e-12)


@DOORS
@given(shape=array_shapes(min_dims=0, max_dims=3, max_side=4))
def test_step_gradients_of_any_other_shape_are_refused_naming_the_parameter(shape):
    with gn.use_backend("numpy"):
        w = gn.Parameter(np.ones((4, 3)), name="W")
        opt = optim.SGD([w], lr=0.1)
        status, _ = outcome(lambda: opt.step({w: np.ones(shape, np.float32)}), "'W'")
        assert (status == "ok") == (shape == (4, 3))


@pytest.fixture(scope="module")
def saved_model_bytes(tmp_path_factory):
    from helpers import tiny_model
    path = tmp_path_factory.mktemp("doors") / "m.npz"
    with gn.use_backend("numpy"):
        tiny_model(layers=(4, 10)).save(path)
    return path.read_bytes()


def _load_bytes(tmp_path, data: bytes):
    path = tmp_path / "hostile.npz"
    path.write_bytes(data)
    with gn.use_backend("numpy"):
        return outcome(lambda: nn.load(path), "hostile.npz")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mangled_checkpoint_bytes_load_or_give_a_checkpoint_error(data, saved_model_bytes,
                                                                  tmp_path_factory):
    raw = bytearray(saved_model_bytes)
    how = data.draw(st.sampled_from(["truncate", "flip", "garbage", "random"]))
    if how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    elif how == "garbage":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        raw = bytearray(data.draw(st.binary(max_size=512)))
    status, result = _load_bytes(tmp_path_factory.mktemp("mangled"), bytes(raw))
    if status == "refused":
        assert isinstance(result, CheckpointError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 10**12) | st.floats(allow_nan=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=12)


@DOORS
@given(model=json_values, version=json_values | st.just(1), kind=json_values)
def test_arbitrary_metadata_loads_or_gives_a_checkpoint_error(model, version, kind, tmp_path_factory):
    import json
    meta = {"format": "graphnet-checkpoint", "version": version, "kind": kind, "model": model}
    path = tmp_path_factory.mktemp("meta") / "meta.npz"
    buf = _io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    path.write_bytes(buf.getvalue())
    with gn.use_backend("numpy"):
        status, result = outcome(lambda: nn.load(path), "meta.npz")
        if status == "ok":  # only possible for a structurally valid model config
            assert isinstance(result, nn.Classifier)
        else:
            assert isinstance(result, CheckpointError)
        assert outcome(lambda: read_npz(path), "meta.npz")[0] in ("ok", "refused")
