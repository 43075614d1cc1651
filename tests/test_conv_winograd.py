"""Winograd F(2x2, 3x3) (graphnet/ops/conv/winograd.py) against the plain reference
convolution, forward and the three gradients, plain and fused, on every backend; the
choice between it and im2col; bits independent of the worker count."""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import numpy as np
import pytest

import graphnet as gn
from graphnet import ops, parallel
from graphnet.errors import ArgumentError
from graphnet.ops import conv
from graphnet.ops.conv import engine, set_algorithm, set_im2col_limit, winograd
from graphnet.testing import (assert_close, check_gradients, reference_conv2d,
                              reference_conv2d_grads)

from test_conv import ref_pool, ref_pool_grad
from test_conv_package import _cnn, _depths
from test_conv_reference import _feed_and_grads, _operands

# Float32: each output passes through the input transform (sums of 4 terms), 16 products
# of C_in terms and the output transform (sums of 9 of the products), so its rounding error
# is a few times im2col's (2e-5 in test_conv_reference.py): measured up to ~3e-6 on these
# shapes (|y| ~ 10); gradients sum over the batch and reach ~2e-5.
F32 = 1e-4
F64 = 1e-11


@contextmanager
def algorithm(name: str, limit: int = 0):
    """conv2d's method set to ``name`` (and the chunk limit to ``limit`` bytes if given)."""
    old = set_algorithm(name)
    old_limit = set_im2col_limit(limit) if limit else None
    try:
        yield
    finally:
        set_algorithm(old)
        if old_limit is not None:
            set_im2col_limit(old_limit)


def _geometry(x_shape, w_shape, padding=0, dtype="float64", stride=1):
    x, w = np.zeros(x_shape, dtype), np.zeros(w_shape, dtype)
    return engine.geometry(gn.backend(), x, w, (stride, stride), (padding, padding))


def _images_per_chunk(x_shape, w_shape, padding, dtype, images):
    """The chunk limit (bytes) that puts ``images`` images in each Winograd chunk."""
    geo = _geometry(x_shape, w_shape, padding, dtype)
    return images * winograd.chunk_bytes(geo.c, geo.co, geo.oh, geo.ow, np.dtype(dtype).itemsize)


CASES = {  # x shape, C_out, padding, images per chunk (0: one chunk)
    "even": ((3, 4, 10, 10), 5, 0, 0),
    "pad1": ((2, 3, 8, 8), 4, 1, 0),
    "odd-rect": ((2, 3, 9, 12), 2, 0, 0),
    "odd-pad1": ((3, 2, 7, 5), 3, 1, 0),
    "cin1": ((2, 1, 8, 8), 3, 0, 0),
    "one-image": ((1, 4, 6, 6), 2, 1, 0),
    "smallest": ((2, 2, 3, 3), 2, 0, 0),
    "partial-chunk": ((5, 3, 8, 8), 4, 0, 2),
    "many-chunks": ((20, 2, 6, 7), 3, 1, 1),
}


@pytest.mark.parametrize("dtype,tol", [("float64", F64), ("float32", F32)])
@pytest.mark.parametrize("name", list(CASES))
def test_winograd_matches_the_reference(backend, name, dtype, tol):
    x_shape, co, padding, per_chunk = CASES[name]
    w_shape = (co, x_shape[1], 3, 3)
    x, w, b = _operands(np.random.default_rng(len(name)), x_shape, w_shape)
    y = reference_conv2d(x, w, b, 1, padding)
    g = np.random.default_rng(1).standard_normal(y.shape)
    want = reference_conv2d_grads(x, w, g, 1, padding)
    limit = _images_per_chunk(x_shape, w_shape, padding, dtype, per_chunk) if per_chunk else 0
    build = lambda *n: ops.conv2d(*n, padding=padding)  # noqa: E731
    with algorithm("winograd", limit):
        geo = _geometry(x_shape, w_shape, padding, dtype)
        assert geo.algorithm == "winograd"
        if per_chunk:
            assert geo.step == per_chunk and len(geo.chunks) > 1
        out, grads, _ = _feed_and_grads(build, [x, w, b], g, dtype)
    assert_close(out, y, rtol=tol, atol=tol, what="output", check_dtype=dtype)
    for got, ref, what in zip(grads, want, ("gx", "gw", "gb")):
        assert_close(got, ref, rtol=tol, atol=tol, what=what, check_dtype=dtype)


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("name", ["even", "odd-pad1", "many-chunks"])
def test_fused_conv_activation_with_winograd_matches_the_reference(backend, name, act):
    x_shape, co, padding, per_chunk = CASES[name]
    x, w, b = _operands(np.random.default_rng(5), x_shape, (co, x_shape[1], 3, 3))
    xp = gn.backend().xp
    z = reference_conv2d(x, w, b, 1, padding)
    y = xp.tanh(z) if act == "tanh" else xp.maximum(z, 0)
    g = np.random.default_rng(2).standard_normal(y.shape)
    gz = xp.asarray(g) * ((1 - y * y) if act == "tanh" else (z > 0))
    want = reference_conv2d_grads(x, w, gz, 1, padding)
    limit = _images_per_chunk(x_shape, w.shape, padding, "float64", per_chunk) if per_chunk else 0
    fn = gn.tanh if act == "tanh" else gn.relu
    with algorithm("winograd", limit):
        out, grads, fused = _feed_and_grads(lambda *n: fn(ops.conv2d(*n, padding=padding)),
                                            [x, w, b], g, "float64")
    assert fused == [f"conv2d+{act}"]
    assert_close(out, y, rtol=F64, atol=F64, what="output")
    for got, ref, what in zip(grads, want, ("gx", "gw", "gb")):
        assert_close(got, ref, rtol=F64, atol=F64, what=what)


@pytest.mark.parametrize("x_shape,padding,pool,per_chunk", [
    ((3, 3, 10, 10), 0, 2, 0),   # windows = Winograd's tiles
    ((3, 3, 9, 11), 0, 2, 0),    # odd output: a leftover row and column
    ((4, 2, 7, 7), 1, 2, 1),     # one image per chunk
    ((20, 2, 6, 6), 0, 2, 1),    # 20 chunks in blocks of 2
    ((2, 3, 10, 9), 1, 3, 0),    # 3x3 windows: the rows path
])
def test_fused_conv_max_pool_with_winograd_matches_the_reference(backend, x_shape, padding,
                                                                   pool, per_chunk):
    rng = np.random.default_rng(11)
    x, w, b = _operands(rng, x_shape, (4, x_shape[1], 3, 3))
    z = gn.to_numpy(reference_conv2d(x, w, b, 1, padding))
    size = (pool, pool)
    y = ref_pool(z, size, size, "max")
    g = rng.standard_normal(y.shape)
    want = reference_conv2d_grads(x, w, ref_pool_grad(z, g, size, size, "max"), 1, padding)
    limit = _images_per_chunk(x_shape, w.shape, padding, "float64", per_chunk) if per_chunk else 0
    build = lambda *n: ops.max_pool2d(ops.conv2d(*n, padding=padding), pool)  # noqa: E731
    with algorithm("winograd", limit):
        out, grads, fused = _feed_and_grads(build, [x, w, b], g, "float64")
    assert fused == ["conv2d+max_pool2d"]
    assert_close(out, y, rtol=F64, atol=F64, what="output")
    for got, ref, what in zip(grads, want, ("gx", "gw", "gb")):
        assert_close(got, ref, rtol=F64, atol=F64, what=what)


@pytest.mark.parametrize("padding", [0, 1])
def test_winograd_gradients_match_central_differences(numpy_backend, padding):
    rng = np.random.default_rng(4)
    x, w, b = _operands(rng, (2, 2, 5, 6), (3, 2, 3, 3))
    with algorithm("winograd"):
        check_gradients(lambda *n: ops.conv2d(*n, padding=padding), [x, w, b],
                        rtol=1e-6, atol=1e-8)


def _digest(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(gn.to_numpy(a)).tobytes()).hexdigest()


@pytest.mark.parametrize("pool", [False, True])
def test_winograd_bits_do_not_depend_on_the_worker_count(numpy_backend, pool):
    if parallel._blas_controller() is None:
        pytest.skip("threadpoolctl cannot drive this BLAS: chunks always run on one thread")
    x_shape, w_shape = (18, 8, 12, 12), (16, 8, 3, 3)
    x, w, b = (a.astype(np.float32) for a in _operands(np.random.default_rng(9), x_shape, w_shape))
    build = lambda *n: ops.max_pool2d(ops.conv2d(*n), 2) if pool else ops.conv2d(*n)  # noqa: E731
    shape = (18, 16, 5, 5) if pool else (18, 16, 10, 10)
    g = np.random.default_rng(8).standard_normal(shape)
    digests = []
    with algorithm("winograd", _images_per_chunk(x_shape, w_shape, 0, "float32", 1)):
        assert len(_geometry(x_shape, w_shape, dtype="float32").chunks) == 18
        for n in (1, 2):
            parallel.set_workers(n)
            try:
                out, grads, _ = _feed_and_grads(build, [x, w, b], g, "float32")
            finally:
                parallel.set_workers(None)
            digests.append([_digest(a) for a in [out] + grads])
    assert digests[0] == digests[1]


def test_auto_picks_winograd_for_the_cnn_conv2_on_numpy(numpy_backend):
    assert _geometry((128, 32, 26, 26), (64, 32, 3, 3), dtype="float32").algorithm == "winograd"
    assert _geometry((128, 1, 28, 28), (32, 1, 3, 3), dtype="float32").algorithm == "im2col"
    few = winograd.MIN_AUTO_CHANNELS
    assert _geometry((8, few - 1, 26, 26), (64, few - 1, 3, 3)).algorithm == "im2col"
    assert _geometry((8, few, 26, 26), (64, few, 3, 3)).algorithm == "winograd"


@pytest.mark.parametrize("x_shape,w_shape,stride,why", [
    ((2, 32, 12, 12), (8, 32, 3, 3), 2, "stride 2"),
    ((2, 32, 12, 12), (8, 32, 5, 5), 1, "5x5 kernel"),
    ((2, 32, 12, 12), (8, 32, 3, 1), 1, "3x1 kernel"),
])
def test_winograd_applies_only_to_3x3_stride_1(numpy_backend, x_shape, w_shape, stride, why):
    with algorithm("winograd"):
        assert _geometry(x_shape, w_shape, stride=stride).algorithm == "im2col", why


@pytest.mark.parametrize("x_dtype,w_dtype", [("float16", "float16"), ("float32", "float64"),
                                             ("int64", "int64")])
def test_winograd_applies_only_to_float32_or_float64_of_one_dtype(numpy_backend, x_dtype, w_dtype):
    x, w = np.zeros((2, 32, 8, 8), x_dtype), np.zeros((8, 32, 3, 3), w_dtype)
    with algorithm("winograd"):
        assert engine.geometry(gn.backend(), x, w, (1, 1), (0, 0)).algorithm == "im2col"


@pytest.mark.gpu
def test_auto_keeps_im2col_on_cupy_where_forced_winograd_applies(cupy_backend):
    assert _geometry((128, 32, 26, 26), (64, 32, 3, 3), dtype="float32").algorithm == "im2col"
    with algorithm("winograd"):
        assert _geometry((128, 32, 26, 26), (64, 32, 3, 3)).algorithm == "winograd"


def test_im2col_forced_is_used(numpy_backend):
    with algorithm("im2col"):
        assert _geometry((128, 32, 26, 26), (64, 32, 3, 3)).algorithm == "im2col"


def test_set_algorithm_returns_the_old_choice():
    old = set_algorithm("im2col")
    try:
        assert set_algorithm("winograd") == "im2col"
        assert set_algorithm("auto") == "winograd"
    finally:
        set_algorithm(old)
    assert conv.set_algorithm is set_algorithm


@pytest.mark.parametrize("bad", ["fast", "", "Winograd", None, 3])
def test_set_algorithm_refuses_unknown_names(bad):
    before = set_algorithm("auto")
    try:
        with pytest.raises(ArgumentError, match=r"algorithm must be one of 'auto', 'im2col', "
                                                r"'winograd', got") as info:
            set_algorithm(bad)
        assert repr(bad) in str(info.value)
        assert isinstance(info.value, ValueError)
        assert set_algorithm("auto") == "auto"  # unchanged by the refusal
    finally:
        set_algorithm(before)


WRONG_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (0.0, 0.0, 1.0))


def _wrong_bt_pass(xp, src, out):
    xp.subtract(src[0], src[2], out=out[0])
    xp.add(src[1], src[2], out=out[1])
    xp.subtract(src[1], src[2], out=out[2])  # sign flipped
    xp.subtract(src[1], src[3], out=out[3])


@pytest.mark.parametrize("mutant", ["G", "B"])
def test_a_wrong_transform_constant_is_caught(numpy_backend, monkeypatch, mutant):
    """The checks above would notice a wrong transform: here one mutated at a time."""
    if mutant == "G":
        monkeypatch.setattr(winograd, "G", WRONG_G)
    else:
        monkeypatch.setattr(winograd, "_bt_pass", _wrong_bt_pass)
    x, w, b = _operands(np.random.default_rng(3), (2, 3, 8, 8), (2, 3, 3, 3))
    with algorithm("winograd"):
        out, _, _ = _feed_and_grads(ops.conv2d, [x, w, b], np.ones((2, 2, 6, 6)), "float64")
    with pytest.raises(AssertionError, match="output"):
        assert_close(out, reference_conv2d(x, w, b), rtol=F32, atol=F32, what="output")


@pytest.mark.parametrize("order,fused", [(("relu", "pool"), "ConvActivation"),
                                         (("pool", "relu"), "ConvMaxPool")])
def test_a_winograd_conv_op_calls_at_most_five_frames_deep(numpy_backend, order, fused):
    graph, x, y, opt = _cnn(order)
    rng = np.random.default_rng(1)
    feed = {x: rng.standard_normal((32, 1, 28, 28)).astype(np.float32),
            y: rng.integers(0, 10, 32)}
    old_workers = parallel.set_workers(1)
    try:
        with algorithm("winograd", 1):  # one image per chunk: 32 chunks in 8 blocks
            depths = _depths(graph, opt, feed)
    finally:
        parallel.set_workers(old_workers)
    assert set(depths) == {(fused, "forward"), (fused, "backward")}
    assert max(depths.values()) <= 5, depths
