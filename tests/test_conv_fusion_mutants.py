"""The fused conv steps in the cases the mutation run of ops/conv/fusion.py found untested.

(Issue 25; see docs/testing.md, "Mutation testing".) Rectangular pooling windows on the
Winograd path, a conv output that leaves a row but no column over, inputs and weights of
two dtypes, and errors of a fused step named by its op and node.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphnet as gn
from graphnet import ops
from graphnet.ops.conv import engine

from test_conv_fusion import _assert_bits, _compare
from test_conv_winograd import algorithm


@pytest.mark.parametrize("x_shape,pool", [
    ((3, 2, 11, 16), (2, 3)),  # conv output 9x14: 5 tile rows, 7 tile columns
    ((3, 2, 11, 16), (3, 2)),
    ((3, 2, 11, 10), 3),       # 9x8: an odd number of rows, 4 tile columns
])
def test_windows_other_than_the_tiles_on_winograd_give_the_bits_of_the_two_nodes(backend, x_shape,
                                                                                   pool):
    with algorithm("winograd"):
        fused = _compare(x_shape=x_shape, w_shape=(3, 2, 3, 3), pool=pool, flat=True)
    assert fused == ["conv2d+max_pool2d"]


@pytest.mark.parametrize("method", ["im2col", "winograd"])
def test_a_leftover_row_without_a_leftover_column_gets_no_gradient(backend, method):
    # conv output 7x6 pooled by 2: the last row is in no window, every column is
    with algorithm(method):
        fused = _compare(x_shape=(3, 2, 9, 8), w_shape=(3, 2, 3, 3), pool=2)
    assert fused == ["conv2d+max_pool2d"]


def _two_dtype_graph(then, x_dtype="float64", w_dtype=None):
    x = gn.Input("x", shape=(None, 2, 8, 8), dtype=x_dtype)
    w = (gn.Parameter(np.random.default_rng(1).standard_normal((3, 2, 3, 3)), name="w")
         if w_dtype is None else gn.Input("w", shape=(3, 2, 3, 3), dtype=w_dtype))
    b = gn.Parameter(np.zeros(3), name="b")
    y = then(ops.conv2d(x, w, b))
    return x, w, b, y, gn.sum(y * y)


@pytest.mark.parametrize("then", [gn.relu, lambda z: ops.max_pool2d(z, 2)],
                         ids=["relu", "max_pool2d"])
@pytest.mark.parametrize("x_dtype,w_dtype", [("float64", None), ("float32", "float64")],
                         ids=["float64 images", "float64 weights"])
def test_inputs_of_two_dtypes_give_float64_like_the_two_nodes(numpy_backend, then, x_dtype,
                                                               w_dtype):
    x, w, b, y, cost = _two_dtype_graph(then, x_dtype, w_dtype)
    rng = np.random.default_rng(2)
    feed = {x: rng.standard_normal((2, 2, 8, 8))}
    if w_dtype is None:
        assert w.value.dtype == np.float32  # the default dtype; the images are float64
    else:
        feed[w] = rng.standard_normal((3, 2, 3, 3))
    fast = gn.Graph(y, cost=cost)
    ref = gn.Graph(y, cost=cost, plan="reference")
    out = fast.run(feed)
    assert out.dtype == np.float64
    _assert_bits(out, ref.run(feed), "output")
    c1, g1 = fast.gradients(feed, wrt=[w, b], return_cost=True)
    c2, g2 = ref.gradients(feed, wrt=[w, b], return_cost=True)
    _assert_bits(c1, c2, "cost")
    for p in (w, b):
        _assert_bits(g1[p], g2[p], f"gradient of {p.name}")
    assert fast.planner.fused_ops(fast._targets([w, b])) == [f"conv2d+{then(x).op}"]


@pytest.mark.parametrize("window,image", [((3, 2), (4, 5)), ((2, 3), (5, 4))])
def test_a_window_larger_than_the_conv_output_is_refused_when_fused_too(numpy_backend, window,
                                                                        image):
    x = gn.Input("x")  # no shape: the sizes are known only when the step runs
    w = gn.Parameter(np.ones((1, 1, 3, 3)), name="w")
    y = ops.max_pool2d(ops.conv2d(x, w), window)
    for plan in ({"plan": "reference"}, {}):
        graph = gn.Graph(y, cost=gn.sum(y), **plan)
        with pytest.raises(gn.ShapeError, match=rf"window \({window[0]}, {window[1]}\) is larger"):
            graph.gradients({x: np.ones((2, 1) + image)}, wrt=[w])


@pytest.mark.parametrize("then,op", [(lambda z: gn.relu(z, name="act"), "conv2d+relu"),
                                     (lambda z: ops.max_pool2d(z, 2), "conv2d+max_pool2d")])
def test_running_out_of_memory_in_a_fused_step_names_its_op_and_node(numpy_backend, monkeypatch,
                                                                     then, op):
    x, w, b, y, cost = _two_dtype_graph(then)
    graph = gn.Graph(y, cost=cost)
    feed = {x: np.ones((2, 2, 8, 8))}
    graph.gradients(feed, wrt=[w])  # planned and compiled before the engine fails

    def no_room(*args, **kwargs):
        raise MemoryError("no room")
    monkeypatch.setattr(engine, "forward", no_room)
    with pytest.raises(gn.OutOfMemoryError,
                       match=re.escape(f"in the forward of op '{op}' at node '{y.name}', batch of 2")):
        graph.gradients(feed, wrt=[w])
