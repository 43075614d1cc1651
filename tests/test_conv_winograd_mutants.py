"""Winograd F(2x2, 3x3) in the cases the mutation run of ops/conv/winograd.py found untested.

(Issue 25; see docs/testing.md, "Mutation testing".) Padding that differs between height and
width, and float32 convolutions computing in float32.
"""
from __future__ import annotations

import numpy as np
import pytest

from graphnet import ops
from graphnet.ops.conv import winograd
from graphnet.testing import assert_close, reference_conv2d, reference_conv2d_grads

from test_conv_reference import _feed_and_grads, _operands
from test_conv_winograd import F64, _geometry, algorithm


@pytest.mark.parametrize("padding", [(1, 0), (0, 1), (2, 1)])
def test_padding_of_its_own_per_axis_matches_the_reference(backend, padding):
    x, w, b = _operands(np.random.default_rng(3), (2, 3, 7, 9), (4, 3, 3, 3))
    y = reference_conv2d(x, w, b, 1, padding)
    g = np.random.default_rng(4).standard_normal(y.shape)
    want = reference_conv2d_grads(x, w, g, 1, padding)
    with algorithm("winograd"):
        assert _geometry((2, 3, 7, 9), (4, 3, 3, 3)).algorithm == "winograd"
        out, grads, _ = _feed_and_grads(lambda *n: ops.conv2d(*n, padding=padding),
                                        [x, w, b], g, "float64")
    assert_close(out, y, rtol=F64, atol=F64, what="output")
    for got, ref, what in zip(grads, want, ("gx", "gw", "gb")):
        assert_close(got, ref, rtol=F64, atol=F64, what=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_work_array_has_the_data_dtype(backend, dtype):
    """A float32 convolution computes in float32 (half the memory traffic of float64)."""
    b = winograd.Buffers(backend.xp, (3, 4, 5, 6), 2, 2, dtype, backward=True, need_x=True)
    arrays = {k: v for k, v in vars(b).items() if hasattr(v, "dtype")}
    assert set(arrays) >= {"images", "rows", "v", "m", "t", "planes", "du", "vt", "dimages"}
    assert {k: v.dtype for k, v in arrays.items()} == {k: np.dtype(dtype) for k in arrays}
