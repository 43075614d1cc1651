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


# The body of the col2im gather kernel: ``i`` runs over ``out`` (C, N, H, W); plain C, so
# tests/test_conv.py compiles it on the host and checks it against the NumPy col2im.
COL2IM_BODY = """
const ptrdiff_t wi = i % width;
ptrdiff_t t = i / width;
const ptrdiff_t hi = t % height;
t /= height;
const ptrdiff_t ni = t % n_img;
const ptrdiff_t ci = t / n_img;
T acc = 0;
for (int ki = 0; ki < k_h; ++ki) {
    const ptrdiff_t hh = hi - ki;
    if (hh < 0 || hh % s_h != 0) continue;
    const ptrdiff_t oy = hh / s_h;
    if (oy >= o_h) continue;
    for (int kj = 0; kj < k_w; ++kj) {
        const ptrdiff_t ww = wi - kj;
        if (ww < 0 || ww % s_w != 0) continue;
        const ptrdiff_t ox = ww / s_w;
        if (ox >= o_w) continue;
        acc += cols[(((ci * k_h + ki) * k_w + kj) * n_img + ni) * ((ptrdiff_t)o_h * q_w)
                    + oy * q_w + ox];
    }
}
out = out + acc;
"""


# The body of the max-pool backward kernel: ``i`` runs over the gradient of x (N, C, H, W);
# each element adds, in window order, the gradient of every window whose first maximum
# (row-major) it is: Backend.max_pool_backward's sums, in one pass with no host sync.
MAX_POOL_BW_BODY = """
const ptrdiff_t wi = i % width;
const ptrdiff_t t = i / width;
const ptrdiff_t hi = t % height;
const ptrdiff_t plane = t / height;
T acc = 0;
for (int ki = 0; ki < k_h; ++ki) {
    const ptrdiff_t hh = hi - ki;
    if (hh < 0 || hh % s_h != 0 || hh / s_h >= o_h) continue;
    const ptrdiff_t oy = hh / s_h;
    for (int kj = 0; kj < k_w; ++kj) {
        const ptrdiff_t ww = wi - kj;
        if (ww < 0 || ww % s_w != 0 || ww / s_w >= o_w) continue;
        const ptrdiff_t o = (plane * o_h + oy) * o_w + ww / s_w;
        const X m = ys[o];
        int hit = xs[i] == m;
        const ptrdiff_t corner = (plane * height + oy * s_h) * width + ww;
        for (int a = 0; a <= ki && hit; ++a) {
            const int stop = a == ki ? kj : k_w;
            for (int b = 0; b < stop && hit; ++b) {
                if (xs[corner + (ptrdiff_t)a * width + b] == m) hit = 0;
            }
        }
        if (hit) acc += gs[o];
    }
}
out = acc;
"""


class CupyBackend(Backend):
    """Runs on the current CUDA device with CuPy, with fused elementwise kernels."""

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
        self._elementwise("philox", "uint64 k0, uint64 k1", "uint64 out", PHILOX_BODY)(
            uint64(key[0]), uint64(key[1]), out)
        return out

    # --- scatter-add ----------------------------------------------------------
    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        import cupyx
        cupyx.scatter_add(target, index, values)

    # --- convolution ------------------------------------------------------------
    def col2im(self, cols: Any, out: Any, kernel: tuple, stride: tuple, out_hw: tuple) -> None:
        """The adjoint of im2col as one gather kernel: each element of ``out`` sums its columns.

        No atomics and one launch, instead of kh*kw slice-adds; columns past OW (the junk
        of full-width rows) are skipped.
        """
        kh, kw = kernel
        sh, sw = stride
        c, n, h, w = out.shape
        oh, ow = out_hw
        q = self.conv_row_width(stride, w, ow)
        cols = self.xp.ascontiguousarray(cols)
        self._elementwise(
            "col2im",
            "raw T cols, int32 n_img, int32 height, int32 width, int32 k_h, int32 k_w, "
            "int32 s_h, int32 s_w, int32 o_h, int32 o_w, int32 q_w",
            "T out", COL2IM_BODY)(cols, n, h, w, kh, kw, sh, sw, oh, ow, q, out)

    def max_pool_backward(self, x: Any, y: Any, g: Any, size: tuple, stride: tuple,
                          out: Any = None) -> Any:
        """One gather kernel (:data:`MAX_POOL_BW_BODY`), one launch, no host synchronisation."""
        xp = self.xp
        (kh, kw), (sh, sw) = size, stride
        if out is None or out.shape != x.shape or not out.flags.c_contiguous:
            out = xp.empty(x.shape, dtype=g.dtype)
        self._elementwise(
            "max_pool_bw",
            "raw X xs, raw X ys, raw T gs, int32 height, int32 width, int32 k_h, int32 k_w, "
            "int32 s_h, int32 s_w, int32 o_h, int32 o_w",
            "T out", MAX_POOL_BW_BODY)(xp.ascontiguousarray(x), xp.ascontiguousarray(y),
                                       xp.ascontiguousarray(g), x.shape[2], x.shape[3],
                                       kh, kw, sh, sw, y.shape[2], y.shape[3], out)
        return out

    # --- fused kernels ----------------------------------------------------------
    def _elementwise(self, name: str, params: str, out: str, body: str) -> Any:
        kern = self._kernels.get(name)
        if kern is None:
            kern = self.xp.ElementwiseKernel(params, out, body, f"graphnet_{name}")
            self._kernels[name] = kern
        return kern

    def _map(self, name: str, body: str, y: Any, g: Any, out: Any) -> Any:
        kern = self._elementwise(name, "T y, T g", "T out", body)
        return kern(y, g) if out is None else kern(y, g, out)

    def tanh_backward(self, y: Any, g: Any, out: Any = None) -> Any:
        return self._map("tanh_bw", "out = g * (1 - y * y)", y, g, out)

    def sigmoid_backward(self, y: Any, g: Any, out: Any = None) -> Any:
        return self._map("sigmoid_bw", "out = g * y * (1 - y)", y, g, out)

    def relu_backward(self, y: Any, g: Any, out: Any = None) -> Any:
        return self._map("relu_bw", "out = y > 0 ? g : (T)0", y, g, out)

    def sgd_update(self, p: Any, g: Any, v: Any | None, lr: float, momentum: float,
                   nesterov: bool, weight_decay: float, scratch: bool = False) -> None:
        decay = 1 - lr * weight_decay
        if v is None:
            self._elementwise("sgd", "T g, T lr, T decay", "T p",
                              "p = p * decay - lr * g")(g, lr, decay, p)
            return
        body = ("v = momentum * v + g; "
                + ("p = p * decay - lr * (g + momentum * v)" if nesterov else "p = p * decay - lr * v"))
        name = "sgd_nesterov" if nesterov else "sgd_momentum"
        self._elementwise(name, "T g, T lr, T momentum, T decay", "T p, T v", body)(
            g, lr, momentum, decay, p, v)

    def adam_update(self, p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float,
                    beta2: float, eps: float, step: int, weight_decay: float) -> None:
        c1 = 1 - beta1 ** step
        c2 = 1 - beta2 ** step
        body = ("m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g * g; "
                "p = p * decay - (lr / c1) * m / (sqrt(v / c2) + eps)")
        self._elementwise("adam", "T g, T lr, T b1, T b2, T eps, T c1, T c2, T decay",
                          "T p, T m, T v", body)(
            g, lr, beta1, beta2, eps, c1, c2, 1 - lr * weight_decay, p, m, v)
