"""Kernels beside their ops: dispatch, each backend's override against the reference, and a
Backend that holds no op kernel of its own."""
from __future__ import annotations

import types

import numpy as np
import pytest

import graphnet as gn
from graphnet import optim
from graphnet.backends import array_library
from graphnet.backends.base import Backend
from graphnet.kernels import Kernel, implementations, kernel
from graphnet.ops import conv, losses, matrix, unary
from graphnet.testing import assert_close


def test_a_kernel_runs_its_backends_override_else_the_reference():
    @kernel
    def double(be, x):
        return ("reference", 2 * x)

    @double.override("numpy")
    def _(be, x):
        return ("numpy", x + x)

    assert isinstance(double, Kernel) and double.name == "double"
    assert double(gn.get_backend("numpy"), 3) == ("numpy", 6)
    assert double(types.SimpleNamespace(name="elsewhere"), 3) == ("reference", 6)
    assert double.implementation("numpy") is not double.generic
    assert double.implementation("cupy") is double.generic


def test_a_run_looks_kernels_up_in_its_backends_table_resolved_once():
    @kernel
    def triple(be, x):
        return ("reference", 3 * x)

    table = implementations("numpy")
    assert table is implementations("numpy") and table.backend_name == "numpy"
    assert table[triple] is triple.generic and table[unary.tanh_backward] is \
        unary.tanh_backward.implementation("numpy")

    @triple.override("numpy")
    def numpy_triple(be, x):
        return ("numpy", x + x + x)

    assert table[triple] is numpy_triple  # an override registered later is seen
    x = gn.Input("x", (2,))
    graph = gn.Graph(x * 2, cost=gn.sum(x * 2))
    assert graph.planner.kernels is table
    ctx = gn.graph.RunContext(graph.backend, False)
    assert ctx.kernels is table and ctx.kernels[triple](ctx.b, 2) == ("numpy", 6)


# --- every override against its reference -------------------------------------------------------
def _special(rng, shape, dtype):
    """Normal values with NaN, inf and zeros sprinkled in."""
    a = rng.normal(size=shape)
    a.ravel()[:4] = [np.nan, np.inf, -np.inf, 0.0]
    return a.astype(dtype)


def _labels(rng, n, classes, bad):
    lab = rng.integers(0, classes, n)
    if bad:
        lab[[1, -1]] = [-1, classes]  # out of range: NaN rows, never another class
    return lab


def _pool_input(rng, shape, dtype, ties):
    x = rng.integers(0, 3, size=shape).astype(dtype) if ties else rng.normal(size=shape).astype(dtype)
    return x


def _pooled(x, size):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // size, size, w // size, size).max(axis=(3, 5))


# name -> (kernel, make(rng, dtype) -> args as host arrays/scalars, indices of in-place args)
CASES = {
    "tanh_backward": (unary.tanh_backward,
                      lambda r, d: (np.tanh(_special(r, (6, 5), d)), _special(r, (6, 5), d)), ()),
    "sigmoid_backward": (unary.sigmoid_backward,
                         lambda r, d: (r.random((6, 5)).astype(d), _special(r, (6, 5), d)), ()),
    "relu_backward": (unary.relu_backward,
                      lambda r, d: (_special(r, (6, 5), d), _special(r, (6, 5), d)), ()),
    "sum_rows": (matrix.sum_rows, lambda r, d: (r.normal(size=(9, 4)).astype(d),), ()),
    "softmax_ce_forward": (losses.softmax_ce_forward,
                           lambda r, d: (r.normal(size=(7, 4)).astype(d), _labels(r, 7, 4, False)), ()),
    "softmax_ce_forward_bad_labels": (
        losses.softmax_ce_forward,
        lambda r, d: (r.normal(size=(7, 4)).astype(d), _labels(r, 7, 4, True)), ()),
    "softmax_ce_backward": (
        losses.softmax_ce_backward,
        lambda r, d: (r.random((7, 4)).astype(d), _labels(r, 7, 4, True), np.array(1.5, d)), ()),
    "sgd_update": (optim.sgd_update,
                   lambda r, d: (r.normal(size=(40, 30)).astype(d), r.normal(size=(40, 30)).astype(d),
                                 None, 0.1, 0.0, False, 0.01), (0,)),
    "sgd_update_momentum": (
        optim.sgd_update,
        lambda r, d: (r.normal(size=(40, 30)).astype(d), r.normal(size=(40, 30)).astype(d),
                      r.normal(size=(40, 30)).astype(d), 0.1, 0.9, False, 0.0), (0, 2)),
    "sgd_update_nesterov": (
        optim.sgd_update,
        lambda r, d: (r.normal(size=(40, 30)).astype(d), r.normal(size=(40, 30)).astype(d),
                      r.normal(size=(40, 30)).astype(d), 0.1, 0.9, True, 0.01), (0, 2)),
    "adam_update": (optim.adam_update,
                    lambda r, d: (r.normal(size=(40, 30)).astype(d), r.normal(size=(40, 30)).astype(d),
                                  r.normal(size=(40, 30)).astype(d), r.random((40, 30)).astype(d),
                                  1e-3, 0.9, 0.999, 1e-8, 3, 0.01), (0, 2, 3)),
    "max_pool_backward_tiles": (
        conv.max_pool_backward,
        lambda r, d: (lambda x: (x, _pooled(x, 2), r.normal(size=(2, 3, 3, 4)).astype(d),
                                 (2, 2), (2, 2)))(_pool_input(r, (2, 3, 6, 8), d, False)), ()),
    "max_pool_backward_ties": (
        conv.max_pool_backward,
        lambda r, d: (lambda x: (x, _pooled(x, 2), r.normal(size=(2, 3, 3, 4)).astype(d),
                                 (2, 2), (2, 2)))(_pool_input(r, (2, 3, 6, 8), d, True)), ()),
}


def _on(backend, args):
    """Fresh backend copies of the host arrays in ``args`` (the kernels update some in place)."""
    return [backend.asarray(a.copy()) if isinstance(a, np.ndarray) else a for a in args]


def _host(result):
    if isinstance(result, tuple):
        return [gn.to_numpy(r) for r in result if r is not None]
    return [] if result is None else [gn.to_numpy(result)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_override_matches_the_reference(backend, case, dtype):
    """What ``backend`` runs equals the reference: bit for bit on NumPy (the overrides do the
    reference's operations in its order), within rounding for CUDA kernels (one fused body)."""
    kern, make, inplace = CASES[case]
    args = make(np.random.default_rng(7), dtype)
    mine, ref = _on(backend, args), _on(backend, args)
    with np.errstate(invalid="ignore", over="ignore"):
        got = _host(kern(backend, *mine)) + [gn.to_numpy(mine[i]) for i in inplace]
        want = _host(kern.generic(backend, *ref)) + [gn.to_numpy(ref[i]) for i in inplace]
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        if backend.name == "numpy":
            np.testing.assert_array_equal(a, b, err_msg=f"{case} output {k}: not bit-identical")
        else:
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{case}: NaN positions")
            tol = 1e-5 if dtype == "float32" else 1e-12  # atol: updates that cancel to ~0
            assert_close(a, b, rtol=tol, atol=tol, what=f"{case} output {k}")


# --- the Backend interface ---------------------------------------------------------------------
INTERFACE = {"name", "xp", "im2col_chunk_bytes", "host_parallel", "asarray", "to_numpy", "is_array", "synchronize",
             "device_name", "memory_info", "versions", "seed", "uniform", "permutation",
             "keyed_bits", "rng_state", "set_rng_state", "scatter_add", "take_rows",
             "sliding_window_view", "scratch", "elementwise"}


def _backend_classes():
    from graphnet.backends.numpy_backend import NumpyBackend
    classes = [Backend, NumpyBackend]
    try:
        from graphnet.backends.cupy_backend import CupyBackend
    except ImportError:  # the module imports cupy lazily: this does not happen today
        return classes
    return classes + [CupyBackend]


@pytest.mark.parametrize("cls", _backend_classes(), ids=lambda c: c.__name__)
def test_backends_define_no_op_kernel(cls):
    """A backend class holds arrays, transfers, random numbers, device, memory and the
    elementwise helper; op kernels live beside their ops."""
    own = {n for n in vars(cls) if not n.startswith("_") and "ǁ" not in n}  # ǁ: mutmut's copies
    assert own <= INTERFACE, f"{cls.__name__} defines {sorted(own - INTERFACE)} beyond the interface"


def test_the_numpy_backend_compiles_no_elementwise_kernels(numpy_backend):
    with pytest.raises(NotImplementedError, match="'numpy' backend.*'relu_bw'"):
        numpy_backend.elementwise("relu_bw", "T y, T g", "T out", "out = y")


def test_array_library_names_whose_array_a_value_is(backend):
    assert array_library(np.zeros(2)) == "numpy"
    assert array_library([1, 2]) == "builtins"
    assert array_library(backend.asarray(np.zeros(2))) == backend.xp.__name__.split(".")[0]
