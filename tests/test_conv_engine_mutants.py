"""The conv chunk engine in the cases the mutation run of ops/conv/engine.py found untested.

(Issue 25; see docs/testing.md, "Mutation testing".) The dtypes a convolution gives and
computes in, gradients asked for one operand only, the chunk limit's door, and chunks
spread over worker threads in both passes.
"""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest

import graphnet as gn
from graphnet import ops, parallel
from graphnet.errors import ArgumentError, ArgumentTypeError
from graphnet.ops.conv import engine, set_im2col_limit, winograd
from graphnet.testing import assert_close, reference_conv2d, reference_conv2d_grads

from test_conv_reference import _feed_and_grads, _operands
from test_conv_winograd import algorithm


def _case(seed: int, x_shape: tuple, w_shape: tuple, padding: int) -> tuple:
    """Operands, the reference output, an upstream gradient and the reference gradients."""
    x, w, b = _operands(np.random.default_rng(seed), x_shape, w_shape)
    y = reference_conv2d(x, w, b, 1, padding)
    g = np.random.default_rng(seed + 1).standard_normal(y.shape)
    return x, w, b, y, g, reference_conv2d_grads(x, w, g, 1, padding)


@pytest.mark.parametrize("plan", ["step", "reference"])
@pytest.mark.parametrize("method", ["im2col", "winograd"])
def test_a_float32_conv_gives_float32_output_and_gradients(backend, plan, method):
    x, w, b, y, g, want = _case(1, (3, 2, 7, 8), (4, 2, 3, 3), 1)
    with algorithm(method):
        out, grads, _ = _feed_and_grads(lambda *n: ops.conv2d(*n, padding=1), [x, w, b], g,
                                        "float32", plan=plan)
    assert_close(out, y, rtol=1e-4, atol=1e-4, what="output", check_dtype="float32")
    for got, ref, what in zip(grads, want, ("gx", "gw", "gb")):
        assert_close(got, ref, rtol=1e-4, atol=1e-4, what=what, check_dtype="float32")


@pytest.mark.parametrize("x_dtype,w_dtype", [("float32", "float64"), ("float64", "float32")])
def test_operands_of_two_dtypes_compute_in_float64(numpy_backend, x_dtype, w_dtype):
    """The output is float64, as exact as a float64 conv (im2col: Winograd takes one dtype);
    each operand's gradient has the operand's dtype, computed in float64 and rounded once."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 7, 8)).astype(x_dtype)
    w, b = rng.standard_normal((4, 2, 3, 3)).astype(w_dtype), rng.standard_normal(4)
    xi = gn.Input("x", shape=x.shape, dtype=x_dtype)
    wi, bi = gn.Input("w", shape=w.shape, dtype=w_dtype), gn.Input("b", shape=(4,), dtype="float64")
    y = ops.conv2d(xi, wi, bi, padding=1)
    up = gn.Input("up", shape=y.shape, dtype="float64")
    g = rng.standard_normal(y.shape)
    feed = {xi: x, wi: w, bi: b, up: g}
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want_y = reference_conv2d(x64, w64, b, 1, 1)
    want = reference_conv2d_grads(x64, w64, g, 1, 1)
    for plan in ("step", "reference"):
        graph = gn.Graph(y, cost=gn.sum(y * up), plan=plan)
        assert_close(graph.run(feed), want_y, rtol=1e-12, atol=1e-12, what="output",
                     check_dtype="float64")
        grads = graph.gradients(feed, wrt=[xi, wi, bi])
        for node, ref, dtype, what in zip((xi, wi, bi), want, (x_dtype, w_dtype, "float64"),
                                          ("gx", "gw", "gb")):
            tol = 1e-12 if dtype == "float64" else 1.2e-7
            assert_close(grads[node], ref, rtol=tol, atol=1e-12, what=f"{plan} {what}",
                         check_dtype=dtype)


@pytest.mark.parametrize("method", ["im2col", "winograd"])
@pytest.mark.parametrize("wanted", ["x", "w"])
def test_the_gradient_of_one_operand_alone(backend, method, wanted):
    x, w, b, y, g, (gx, gw, _) = _case(4, (2, 3, 6, 7), (2, 3, 3, 3), 0)
    be = gn.backend()
    with gn.default_dtype("float64"), algorithm(method):
        xi, wi = gn.Input("x", shape=x.shape), gn.Input("w", shape=w.shape)
        out = ops.conv2d(xi, wi, gn.Constant(b))
        up = gn.Input("up", shape=y.shape)
        for plan in ("step", "reference"):
            graph = gn.Graph(out, cost=gn.sum(out * up), plan=plan)
            node = xi if wanted == "x" else wi
            got = graph.gradients({xi: be.asarray(x), wi: be.asarray(w), up: be.asarray(g)},
                                  wrt=[node])
            assert_close(got[node], gx if wanted == "x" else gw, rtol=1e-12, atol=1e-12,
                         what=f"{plan} d/d{wanted}")


@pytest.mark.parametrize("bad,error", [(0, ArgumentError), (-4096, ArgumentError),
                                       (1.5, ArgumentTypeError), ("1MiB", ArgumentTypeError)])
def test_the_im2col_limit_must_be_a_whole_number_of_bytes(bad, error):
    before = set_im2col_limit(1 << 20)
    try:
        with pytest.raises(error, match=r"^the im2col limit \(bytes\) must be "):
            set_im2col_limit(bad)
        if error is ArgumentError:
            with pytest.raises(error, match=rf"must be >= 1, got {bad}$"):
                set_im2col_limit(bad)
        assert set_im2col_limit(before) == 1 << 20  # a refused value changed nothing
    finally:
        set_im2col_limit(before)


def test_chunks_of_both_passes_run_on_two_worker_threads(numpy_backend, monkeypatch):
    if parallel._blas_controller() is None:
        pytest.skip("threadpoolctl cannot drive this BLAS: chunks always run on one thread")
    seen = {"forward": set(), "backward": set()}
    # each worker's first chunk waits for the other worker's: run serially, the barrier breaks
    meet = {"forward": threading.Barrier(2, timeout=5), "backward": threading.Barrier(2, timeout=5)}
    transform, adjoint = winograd.input_transform, winograd.output_adjoint

    def arrive(phase: str) -> None:
        if threading.get_ident() not in seen[phase]:
            seen[phase].add(threading.get_ident())
            meet[phase].wait()

    def forward_spy(*args):
        arrive("forward")
        return transform(*args)

    def backward_spy(*args):
        arrive("backward")
        return adjoint(*args)
    monkeypatch.setattr(winograd, "input_transform", forward_spy)
    monkeypatch.setattr(winograd, "output_adjoint", backward_spy)
    x, w, b = _operands(np.random.default_rng(6), (8, 2, 6, 6), (3, 2, 3, 3))
    g = np.ones((8, 3, 4, 4))
    per_image = winograd.chunk_bytes(2, 3, 4, 4, 8)
    parallel.set_workers(2)
    try:
        with algorithm("winograd", per_image):  # one image a chunk: 8 chunks, 8 blocks
            _feed_and_grads(ops.conv2d, [x, w, b], g, "float64")
    finally:
        parallel.set_workers(None)
    assert len(seen["forward"]) == 2 and len(seen["backward"]) == 2, seen


@pytest.mark.parametrize("x_shape,w_shape,padding", [
    ((1, 3, 6, 6), (2, 2, 3, 3), (0, 0)),  # channels differ
    ((1, 1, 6, 2), (1, 1, 3, 3), (0, 0)),  # too narrow, tall enough
    ((1, 1, 2, 6), (1, 1, 3, 3), (0, 0)),  # too short, wide enough
    ((1, 1, 1, 6), (1, 1, 4, 3), (1, 0)),  # 1 + 2 * 1 rows < 4
    ((1, 1, 6, 1), (1, 1, 3, 4), (0, 1)),  # 1 + 2 * 1 columns < 4
])
def test_images_that_do_not_fit_the_kernel_are_refused_when_the_step_runs(numpy_backend, x_shape,
                                                                          w_shape, padding):
    x = gn.Input("x")  # no shape: only the run can tell
    y = ops.conv2d(x, gn.Constant(np.ones(w_shape)), padding=padding)
    message = (f"conv2d: input {x_shape} does not fit weight {w_shape} (stride (1, 1), "
               f"padding {padding})")
    for plan in ("step", "reference"):
        with pytest.raises(gn.ShapeError, match=re.escape(message)):
            gn.Graph(y, plan=plan).run({x: np.ones(x_shape)})


@pytest.mark.parametrize("n", range(1, 41))
def test_chunks_are_grouped_into_blocks_only_from_16_on_and_then_into_at_least_8(n):
    chunks = [(i, i + 1) for i in range(n)]
    blocks = engine.blocks_of(chunks)
    assert [c for b0, b1 in blocks for c in range(b0, b1)] == list(range(n))  # in order, once
    sizes = [b1 - b0 for b0, b1 in blocks]
    if n < 16:
        assert sizes == [1] * n
    else:
        assert len(blocks) >= 8 and max(sizes) >= 2 and max(sizes) <= engine.BLOCK_CHUNKS


def test_chunks_without_a_backend_take_the_default_size():
    before = set_im2col_limit(1000)
    try:
        assert engine.chunks_of(10, 300) == [(0, 3), (3, 6), (6, 9), (9, 10)]  # 3 fit in 1000
        set_im2col_limit(engine.DEFAULT_CHUNK_BYTES * 2)  # then the default is the smaller
        assert engine.chunks_of(3, engine.DEFAULT_CHUNK_BYTES // 2) == [(0, 2), (2, 3)]
        assert engine.chunks_of(0, 300) == [(0, 0)]
    finally:
        set_im2col_limit(before)


def test_unknown_image_sizes_give_unknown_output_sizes(numpy_backend):
    x = gn.Input("x", shape=(None, 2, None, 9))
    y = ops.conv2d(x, gn.Constant(np.ones((3, 2, 3, 3))), stride=2, padding=1)
    assert y.shape == (None, 3, None, 5)
    assert gn.Graph(y).run({x: np.ones((1, 2, 7, 9))}).shape == (1, 3, 4, 5)
