"""The CuPy (CUDA GPU) backend. ``cupy`` is imported here and only here, lazily."""
from __future__ import annotations

from typing import Any

from .base import Backend, BackendUnavailableError


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        if exc.name != "cupy":  # installed, but a library it needs failed to load
            raise BackendUnavailableError(
                f"the 'cupy' backend found CuPy installed but it failed to import ({exc}): "
                "check that the cupy-cuda12x/cupy-cuda13x wheel matches the CUDA driver, "
                "or use GRAPHNET_BACKEND=numpy") from exc
        raise BackendUnavailableError(
            "the 'cupy' backend needs CuPy, which is not installed: "
            "install it with `pip install cupy-cuda12x` (CUDA 12) or `pip install cupy-cuda13x` "
            "(CUDA 13), or from a graphnet checkout `pip install -e \".[cuda12]\"`; "
            "or use GRAPHNET_BACKEND=numpy"
        ) from exc
    try:
        available = cupy.cuda.is_available()
    except Exception:  # the CUDA runtime itself may fail to load
        available = False
    if not available:
        raise BackendUnavailableError(
            f"the 'cupy' backend found CuPy {cupy.__version__} but no usable CUDA device "
            "(no GPU, or the NVIDIA driver is missing or too old): run on a machine "
            "with an NVIDIA GPU and driver, or use GRAPHNET_BACKEND=numpy"
        )
    return cupy


class CupyBackend(Backend):
    """Runs on the current CUDA device with CuPy; kernels compiled by :meth:`elementwise`."""

    name = "cupy"

    def __init__(self) -> None:
        self.xp = _import_cupy()
        self._seed = 0
        self._draws = 0
        self._kernels: dict[str, Any] = {}

    # --- arrays and transfers -------------------------------------------------
    def asarray(self, x: Any, dtype: Any = None) -> Any:
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> Any:
        import numpy
        if isinstance(x, self.xp.ndarray):
            return self.xp.asnumpy(x)
        return numpy.asarray(x)

    def is_array(self, x: Any) -> bool:
        return isinstance(x, self.xp.ndarray)

    # --- device ---------------------------------------------------------------
    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def device_name(self) -> str:
        dev = self.xp.cuda.Device()
        props = self.xp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        return f"cuda:{dev.id} ({name.decode() if isinstance(name, bytes) else name})"

    def memory_info(self) -> dict[str, int]:
        pool = self.xp.get_default_memory_pool()
        free, total = self.xp.cuda.Device().mem_info
        return {"pool_used_bytes": pool.used_bytes(), "pool_held_bytes": pool.total_bytes(),
                "device_free_bytes": free, "device_total_bytes": total}

    def versions(self) -> dict[str, str]:
        out = super().versions()
        out["cupy"] = self.xp.__version__
        out["cuda_runtime"] = str(self.xp.cuda.runtime.runtimeGetVersion())
        return out

    # --- random numbers -------------------------------------------------------
    # The backend's own stream is keyed too: draw k after seed s uses the key (s, k), so
    # the state is two numbers, read and restored with no side effect.
    def seed(self, seed: int) -> None:
        self._seed, self._draws = int(seed), 0

    def _next_words(self, shape: tuple) -> Any:
        from .keyed import STREAM_POSITION, philox_key
        key = philox_key((self._seed % 2**64, self._draws), STREAM_POSITION)
        self._draws += 1
        return self.keyed_bits(key, shape)

    def uniform(self, shape: tuple, dtype: Any) -> Any:
        from .keyed import uniform
        return uniform(self.xp, self._next_words(tuple(shape)), dtype)

    def permutation(self, n: int) -> Any:
        return self.xp.argsort(self._next_words((int(n),)))

    def rng_state(self) -> Any:
        return {"seed": self._seed, "draws": self._draws}

    def set_rng_state(self, state: Any) -> None:
        if not (isinstance(state, dict) and "seed" in state and "draws" in state):
            raise ValueError("this RNG state was not saved by this version of the cupy backend "
                             f"(expected {{'seed': ..., 'draws': ...}}, got {state!r})")
        self._seed, self._draws = int(state["seed"]), int(state["draws"])

    def keyed_bits(self, key: tuple[int, int], shape: tuple) -> Any:
        from numpy import uint64
        from .keyed import PHILOX_BODY
        out = self.xp.empty(tuple(shape), self.xp.uint64)
        self.elementwise("philox", "uint64 k0, uint64 k1", "uint64 out", PHILOX_BODY)(
            uint64(key[0]), uint64(key[1]), out)
        return out

    # --- scatter-add ----------------------------------------------------------
    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        import cupyx
        cupyx.scatter_add(target, index, values)

    # --- compiled elementwise kernels -------------------------------------------
    def elementwise(self, name: str, params: str, out: str, body: str) -> Any:
        kern = self._kernels.get(name)
        if kern is None:
            kern = self.xp.ElementwiseKernel(params, out, body, f"graphnet_{name}")
            self._kernels[name] = kern
        return kern
