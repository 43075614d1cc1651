"""The CPU emulation of CuPy keeps the CuPy semantics graphnet's tests rely on (EMULATED, not a GPU)."""
from __future__ import annotations

import numpy as np
import pytest

import cupy_emulation
from cupy_emulation import _array, _kernels

from graphnet.testing import assert_close

needs_cxx = pytest.mark.skipif(_kernels.compiler() is None, reason="no C++ compiler for kernels")


@pytest.fixture
def cp():
    with cupy_emulation.emulated() as mod:
        yield mod


def test_device_arrays_are_not_numpy_arrays(cp):
    d = cp.asarray(np.arange(3.0))
    assert not isinstance(d, np.ndarray) and type(d).__module__ == "cupy"
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(d)
    np.testing.assert_array_equal(d.get(), [0, 1, 2])
    np.testing.assert_array_equal(cp.asnumpy(d), [0, 1, 2])


@pytest.mark.parametrize("combine", [lambda d, h: d + h, lambda d, h: h * d, lambda d, h: np.maximum(d, h),
                                     lambda d, h: d[0:2].__iadd__(h[0:2])])
def test_host_arrays_are_refused_as_operands(cp, combine):
    with pytest.raises(TypeError, match="Unsupported type"):
        combine(cp.ones(3), np.ones(3))


def test_python_and_numpy_scalars_are_fine(cp):
    d = cp.ones(2, dtype=np.float32)
    assert (d * 2.0 + np.float32(1)).dtype == np.float32


def test_reductions_give_0d_device_arrays_not_scalars(cp):
    d = cp.asarray(np.arange(6.0).reshape(2, 3))
    for value in (d.sum(), d.max(), cp.mean(d), d[1, 2], cp.count_nonzero(d)):
        assert isinstance(value, cp.ndarray) and value.shape == ()
    assert float(d.sum()) == 15.0


def test_integer_indices_wrap_instead_of_raising(cp):
    d = cp.asarray(np.arange(4.0))
    idx = cp.asarray(np.array([5, -1]))
    np.testing.assert_array_equal(d[idx].get(), [1.0, 3.0])  # NumPy would raise IndexError
    labels = cp.asarray(np.array([[7], [1]]))
    rows = cp.asarray(np.arange(8.0).reshape(2, 4))
    np.testing.assert_array_equal(cp.take_along_axis(rows, labels, axis=1).get(), [[3.0], [5.0]])
    target = cp.zeros(3)
    cupy_emulation.modules()["cupyx"].scatter_add(target, cp.asarray(np.array([0, 3, 3])), 1.0)
    np.testing.assert_array_equal(target.get(), [3.0, 0.0, 0.0])


def test_allocation_limit_raises_out_of_memory(cp):
    cupy_emulation.set_allocation_limit(1000)
    try:
        with pytest.raises(cp.cuda.memory.OutOfMemoryError):
            cp.zeros(1000)
        cp.zeros(10)
    finally:
        cupy_emulation.set_allocation_limit(None)


@pytest.mark.parametrize("kind, where, name", [
    ("pool", "cupy.cuda.memory", "OutOfMemoryError"),
    ("runtime", "cupy_backends.cuda.api.runtime", "CUDARuntimeError"),
    ("cublas", "cupy_backends.cuda.libs.cublas", "CUBLASError")])
def test_allocation_limit_raises_each_cuda_out_of_memory_class(cp, kind, where, name):
    cupy_emulation.set_allocation_limit(1000, error=kind)
    try:
        with pytest.raises(Exception) as info:
            cp.ones(1000) @ cp.ones(1000)
    finally:
        cupy_emulation.set_allocation_limit(None)
    assert (type(info.value).__module__, type(info.value).__name__) == (where, name)
    with pytest.raises(ValueError, match="error must be one of"):
        cupy_emulation.set_allocation_limit(1000, error="cuda")


def test_emulated_runtime_error_matches_real_cupy():
    """Same class name, module and message as CuPy's CUDARuntimeError (importable without a GPU)."""
    runtime = pytest.importorskip("cupy_backends.cuda.api.runtime")
    for status in (2, 700):
        real, fake = runtime.CUDARuntimeError(status), cupy_emulation.CUDARuntimeError(status)
        assert (type(fake).__module__, type(fake).__name__, str(fake), fake.status) == \
            (type(real).__module__, type(real).__name__, str(real), real.status)
    assert isinstance(fake, RuntimeError) and isinstance(real, RuntimeError)


@needs_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_kernel_body_is_compiled_and_executed(cp, dtype):
    kern = cp.ElementwiseKernel("T y, T g, float64 s", "T out", "out = y > 0 ? g * (T)s : (T)0", "t")
    rng = np.random.default_rng(0)
    y, g = rng.normal(size=(3, 4)).astype(dtype), rng.normal(size=(4,)).astype(dtype)  # g broadcasts
    got = kern(cp.asarray(y), cp.asarray(g), 2.0)
    assert isinstance(got, cp.ndarray) and got.dtype == dtype
    assert_close(got.get(), np.where(y > 0, g * 2, 0).astype(dtype), rtol=0, atol=0)
    out = cp.zeros((3, 4), dtype=dtype)[:, ::1]
    kern(cp.asarray(y), cp.asarray(g), 2.0, out)  # into a given output
    assert_close(out.get(), got.get(), rtol=0, atol=0)


@needs_cxx
def test_elementwise_kernel_refuses_host_arrays_and_mixed_types(cp):
    kern = cp.ElementwiseKernel("T x", "T y", "y = x + 1", "inc")
    with pytest.raises(TypeError, match="Unsupported type"):
        kern(np.ones(3))
    two = cp.ElementwiseKernel("T x, T z", "T y", "y = x + z", "add2")
    with pytest.raises(TypeError, match="dtype"):
        two(cp.ones(3, dtype=np.float32), cp.ones(3, dtype=np.float64))


@needs_cxx
def test_a_broken_kernel_body_fails_on_the_host_compiler_too(cp):
    kern = cp.ElementwiseKernel("T x", "T y", "y = x + undefined_name", "broken")
    with pytest.raises(RuntimeError, match="undefined_name"):
        kern(cp.ones(2))


def test_every_emulated_function_exists_in_real_cupy():
    """The emulation offers no function CuPy lacks (so code passing here can run on CuPy)."""
    cupy = pytest.importorskip("cupy")
    if cupy_emulation.is_emulated(cupy):
        pytest.skip("`cupy` is the emulation here")
    missing = sorted(n for n in list(_array.FUNCTIONS) + _array.PASSTHROUGH if not hasattr(cupy, n))
    assert not missing, f"emulated but not in CuPy {cupy.__version__}: {missing}"
    methods = sorted(n for n in _array._METHODS if not hasattr(cupy.ndarray, n))
    assert not methods, f"ndarray methods emulated but not in CuPy: {methods}"


def test_results_that_are_arguments_keep_their_identity(cp):
    """``out=`` and no-op conversions return the very array given, as CuPy does."""
    a, buf = cp.ones(3), cp.empty(3)
    assert cp.multiply(a, 2.0, out=buf) is buf
    assert np.multiply(a, 2.0, out=buf) is buf
    assert cp.asarray(a) is a and a.astype(a.dtype, copy=False) is a
    assert a.base is None and a[1:].base is not None


# --- the "done when": the README tour and the example run unchanged on the emulation --------
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _run_emulated(args: list, tmp_path, timeout: float = 300):
    import subprocess
    import sys
    from cupy_emulation.run import emulation_env
    env = emulation_env()
    env["GRAPHNET_BACKEND"] = "cupy"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=timeout)


@needs_cxx
@pytest.mark.emulated
def test_readme_tour_runs_unchanged_on_the_emulated_cupy_backend(tmp_path):
    import re
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    tour = next(b for b in blocks if "gn.Graph(" in b and "minimize" in b)
    (tmp_path / "tour.py").write_text(tour)
    res = _run_emulated([str(tmp_path / "tour.py")], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[0 1 1 0]"
    assert "CPU EMULATION" in res.stderr  # it really ran on the emulation

