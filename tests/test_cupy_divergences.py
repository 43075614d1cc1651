"""Where CuPy alone would differ from NumPy, graphnet gives one answer on every backend.

Out-of-range index arrays (CuPy wraps them round silently), the out-of-memory errors of the
CUDA runtime and libraries (not only CuPy's pool), and boolean masks (refused, with advice).
The ``backend`` cases run on NumPy and on CuPy (its CPU emulation without a GPU, which wraps
out-of-range indices as CuPy does).
"""
from __future__ import annotations

import numpy as np
import pytest

import cupy_emulation
import graphnet as gn
from graphnet import optim
from graphnet.errors import ArgumentTypeError, ShapeError
from graphnet.graph_checks import out_of_memory
from graphnet.ops.matrix import Linear
from graphnet.testing import assert_close
from graphnet.train import OutOfMemory, Trainer
from helpers import blobs, tiny_model

X = np.arange(6.0).reshape(2, 3)


# --- index arrays ---------------------------------------------------------------------------
@pytest.mark.parametrize("index", [np.array([0, 5]), [1, -4], (slice(None), np.array([3])),
                                   (Ellipsis, np.array([0, -4])), (np.array([2]), 0)],
                         ids=["array", "list", "slice-array", "ellipsis-array", "array-int"])
def test_out_of_range_index_array_is_a_build_error_when_the_shape_is_known(index):
    x = gn.Input("x", shape=(2, 3))
    with pytest.raises(ShapeError, match=r"out of range for axis \d of size \d"):
        x[index]


@pytest.mark.parametrize("bad", [3, 7, -4])
def test_out_of_range_index_array_fails_at_run_time_on_every_backend(backend, bad):
    x = gn.Input("x", shape=(2, None))
    w = gn.Parameter(np.ones((2, 2)))
    y = x[:, np.array([0, bad])]
    graph = gn.Graph(y, cost=(y * w).sum())
    for call in (lambda: graph.run({x: X}), lambda: graph.gradients({x: X})):
        with pytest.raises(gn.RunError, match=f"position {bad}, out of range for axis 1 of size 3"):
            call()


def test_index_arrays_in_range_give_numpy_values_and_gradients(backend):
    x = gn.Input("x", shape=(None, None))
    w = gn.Parameter(X + 1.0)
    index = (np.array([1, -1, 0, 1]), np.array([-3, 2, 2, 2]))
    y = (x * w)[index]
    graph = gn.Graph(y, cost=(y * y).sum())
    value = graph.run({x: X})
    cost, grads = graph.gradients({x: X}, return_cost=True)
    ref = (X * (X + 1.0))[index]
    assert_close(value, ref, what="gathered values")
    expected = np.zeros_like(X)
    np.add.at(expected, index, 2 * ref)
    assert_close(grads[w], expected * X, what="gradient through the gather")


def test_a_device_index_array_is_taken_home_once_and_checked(backend):
    x = gn.Input("x", shape=(2, None))
    good, bad = backend.asarray(np.array([2, 0])), backend.asarray(np.array([0, 3]))
    value = gn.Graph(x[:, good]).run({x: X})
    assert_close(value, X[:, [2, 0]], what="x[:, device index]")
    with pytest.raises(gn.RunError, match="position 3, out of range"):
        gn.Graph(x[:, bad]).run({x: X})


def test_a_boolean_mask_is_refused_with_what_to_use_instead():
    x = gn.Input("x", shape=(None, 3))
    with pytest.raises(ArgumentTypeError, match=r"boolean masks.*x \* mask.*flatnonzero"):
        x[np.array([True, False, True])]
    with pytest.raises(ArgumentTypeError, match="boolean masks"):
        x[:, [True, False, True]]


def test_a_node_as_index_is_refused_at_build_time():
    x = gn.Input("x", shape=(None, 3))
    i = gn.Input("i", shape=(2,), dtype="int64")
    with pytest.raises(ArgumentTypeError, match="holds a node"):
        x[i]


# --- out of memory from the CUDA runtime and libraries ------------------------------------
def _cupy_error(module: str, name: str, message: str, base: type = RuntimeError) -> Exception:
    """An error shaped like one of CuPy's wrappers of a CUDA status (without importing cupy)."""
    return type(name, (base,), {"__module__": module})(message)


CUDA_OOM = {
    "pool": cupy_emulation.OutOfMemoryError("Out of memory allocating 512 bytes"),
    "runtime": cupy_emulation.CUDARuntimeError(2),
    "cublas": cupy_emulation.CUBLASError(3),
    "driver": _cupy_error("cupy_backends.cuda.api.driver", "CUDADriverError",
                          "CUDA_ERROR_OUT_OF_MEMORY: out of memory"),
    "curand": _cupy_error("cupy_backends.cuda.libs.curand", "CURANDError",
                          "CURAND_STATUS_ALLOCATION_FAILED"),
    "cufft": _cupy_error("cupy.cuda.cufft", "CuFFTError", "CUFFT_ALLOC_FAILED"),
    "cusolver": _cupy_error("cupy_backends.cuda.libs.cusolver", "CUSOLVERError",
                            "CUSOLVER_STATUS_ALLOC_FAILED"),
    "cusparse": _cupy_error("cupy_backends.cuda.libs.cusparse", "CuSparseError",
                            "CUSPARSE_STATUS_ALLOC_FAILED"),
    "cudnn": _cupy_error("cupy_backends.cuda.libs.cudnn", "CuDNNError",
                         "CUDNN_STATUS_ALLOC_FAILED: workspace"),
    "nvrtc": _cupy_error("cupy_backends.cuda.libs.nvrtc", "NVRTCError",
                         "NVRTC_ERROR_OUT_OF_MEMORY (1)"),
}
NOT_OOM = {
    "runtime-illegal-address": cupy_emulation.CUDARuntimeError(700),
    "cublas-invalid-value": cupy_emulation.CUBLASError(7),
    "not-cupy": RuntimeError("cudaErrorMemoryAllocation: out of memory"),
}


@pytest.mark.parametrize("exc", CUDA_OOM.values(), ids=CUDA_OOM.keys())
def test_every_cuda_allocation_failure_is_out_of_memory(exc):
    assert out_of_memory(exc)


@pytest.mark.parametrize("exc", NOT_OOM.values(), ids=NOT_OOM.keys())
def test_other_cuda_errors_are_not_out_of_memory(exc):
    assert not out_of_memory(exc)


def _raise(exc):
    def forward(self, ctx, *xs):
        raise exc
    return forward


@pytest.mark.parametrize("kind", ["runtime", "cublas", "curand"])
def test_cuda_out_of_memory_reaches_the_trainer_advice(backend, monkeypatch, kind):
    x, y = blobs(64, pixels=16)
    model = tiny_model((8, 10), pixels=16)
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), batch_size=32, progress=False)
    monkeypatch.setattr(Linear, "forward", _raise(CUDA_OOM[kind]))
    with pytest.raises(OutOfMemory, match="batch size 32.*Try a smaller batch size"):
        trainer.fit(x.reshape(64, 16), y, epochs=1)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["pool", "runtime", "cublas"])
def test_an_emulated_allocation_failure_of_each_kind_names_the_batch_size(kind):
    b = gn.get_backend("cupy")
    if not cupy_emulation.is_emulated(b):
        pytest.skip("the allocation limit is a feature of the CuPy emulation")
    x, y = blobs(64, pixels=16)
    with gn.use_backend(b):
        model = tiny_model((512, 10), pixels=16)
        trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), batch_size=32,
                          progress=False)
        # the data (4 KB) and the gradients (33 KB) fit, a batch's hidden layer (64 KB) not
        cupy_emulation.set_allocation_limit(40_000, error=kind)
        try:
            with pytest.raises(OutOfMemory, match="batch size 32") as info:
                trainer.fit(x.reshape(64, 16), y, epochs=1)
        finally:
            cupy_emulation.set_allocation_limit(None)
    assert out_of_memory(info.value.__cause__)


# --- objects that keep arrays compute on their arrays' backend, not the active one ---------
def test_a_projection_computes_on_its_own_backend_whichever_is_active(backend):
    from graphnet import viz
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5)) * np.array([3.0, 2.0, 1.0, 0.5, 0.1])
    proj = viz.pca(backend.asarray(x), 2)
    assert proj.backend is backend
    with gn.use_backend("numpy"):
        points = proj.transform(backend.asarray(x[:7]))
        back = proj.inverse(proj.points[:7])
        from_host = proj.transform(x[:7])
    assert isinstance(points, np.ndarray) and backend.is_array(back)
    assert_close(points, proj.points[:7], rtol=1e-9, atol=1e-9, what="transform")
    assert_close(from_host, proj.points[:7], rtol=1e-9, atol=1e-9, what="transform of host rows")
    assert_close(proj.transform(back), proj.points[:7], rtol=1e-9, atol=1e-9, what="inverse")


def test_a_projection_built_by_hand_finds_its_backend_from_its_arrays(backend):
    from graphnet.viz.pca import Projection
    mean, comps = backend.asarray(np.zeros(3)), backend.asarray(np.eye(3)[:2])
    with gn.use_backend("numpy"):
        proj = Projection(np.zeros((0, 2)), np.ones(2), mean, comps)
        assert proj.backend.name == backend.name
        assert_close(proj.transform(np.array([[1.0, 2.0, 3.0]])), [[1.0, 2.0]], what="transform")


def test_augmentation_runs_on_its_images_backend_whichever_is_active(backend):
    from graphnet.augment import random_shift
    x = np.random.default_rng(2).random((3, 1, 6, 6)).astype(np.float32)
    expected = gn.to_numpy(random_shift(backend.asarray(x), 1, rotate=10, rng_key=(4, 5)))
    with gn.use_backend("numpy"):
        moved = random_shift(backend.asarray(x), 1, rotate=10, rng_key=(4, 5))
    assert backend.is_array(moved)
    assert_close(moved, expected, rtol=0, atol=0, what="shifted images")


def test_the_overhead_benchmark_compares_device_gradients_with_host_ones(backend):
    from benchmarks.bench_overhead import BLOCKS, SIZE, build_graphnet, gradient_agreement
    rng = np.random.default_rng(0)
    params = [(rng.standard_normal((SIZE, SIZE)).astype(np.float32),
               rng.standard_normal((SIZE, SIZE)).astype(np.float32)) for _ in range(BLOCKS)]
    graph, x, _ = build_graphnet(params)
    feed = {x: rng.standard_normal((SIZE, SIZE)).astype(np.float32)}
    host_grads = [np.asarray(gn.backends.host.to_numpy(g))
                  for g in (graph.gradients(feed)[p] for p in graph.parameters())]
    assert gradient_agreement(graph, feed, host_grads) == 0.0
    host_grads[0] = host_grads[0] + 0.25
    assert gradient_agreement(graph, feed, host_grads) == pytest.approx(0.25, abs=1e-6)


def test_optimizer_state_loads_onto_its_parameters_backend_whichever_is_active(backend):
    from graphnet import optim
    p = gn.Parameter(backend.asarray(np.ones((2, 3), np.float32)), name="w")
    opt = optim.Adam([p], lr=0.1)
    opt.step({p: backend.asarray(np.full((2, 3), 0.5, np.float32))})
    arrays, meta = opt.host_state()
    fresh = optim.Adam([p], lr=0.1)
    with gn.use_backend("numpy"):
        fresh.load_host_state(arrays, meta)
    assert all(backend.is_array(v) for vs in fresh.state.values() for v in vs if v is not None)
    assert_close(fresh.state["m"][0], opt.state["m"][0], rtol=0, atol=0, what="Adam m")
