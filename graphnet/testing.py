"""Test helpers shared by graphnet's suite and by users testing their own ops."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from .backends.host import to_numpy
from .checks import int_pair
from .errors import ArgumentError, ShapeError


def assert_close(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6,
                 what: str = "value", check_dtype: Any = None) -> None:
    """Assert ``actual`` ≈ ``expected`` elementwise, reporting the worst element on failure.

    Either side may live on any backend. Shapes must match exactly; with
    ``check_dtype`` the actual dtype must equal it.
    """
    a = np.asarray(to_numpy(actual))
    e = np.asarray(to_numpy(expected))
    if check_dtype is not None and a.dtype != np.dtype(check_dtype):
        raise AssertionError(f"{what}: dtype {a.dtype}, expected {np.dtype(check_dtype)}")
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape}, expected {e.shape}")
    if a.size == 0:
        return
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    same = (np.isnan(a64) & np.isnan(e64)) | (a64 == e64)  # NaN vs NaN, equal infinities
    with np.errstate(invalid="ignore"):
        err = np.asarray(np.abs(a64 - e64))  # 0-d stays an array (writable)
        excess = np.asarray(err - (atol + rtol * np.abs(e64)))
    err[same] = 0
    excess[np.isnan(excess)] = np.inf
    excess[same] = -np.inf
    worst = np.unravel_index(int(np.argmax(excess)), a.shape) if a.ndim else ()
    if excess[worst] > 0:
        bad = int(np.count_nonzero(excess > 0))
        raise AssertionError(
            f"{what}: {bad} of {a.size} elements differ (rtol={rtol}, atol={atol}); worst at "
            f"index {tuple(int(i) for i in worst)}: got {float(a64[worst])!r}, "
            f"expected {float(e64[worst])!r}, "
            f"|diff| = {err[worst]:.3g}")


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to the host array ``x`` (in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * eps)
    return grad


def check_gradients(build: Callable[..., Any], inputs: Sequence[np.ndarray],
                    rtol: float = 1e-5, atol: float = 1e-7, seed: int = 0,
                    nondiff: Optional[Mapping[int, Any]] = None) -> None:
    """Check an op's analytic gradients against float64 central differences.

    ``build(*nodes)`` returns the output node given one float64 Input per array in
    ``inputs``. The cost is ``sum(output * r)`` with a fixed random ``r``, so every
    element of the upstream gradient differs. ``nondiff`` maps argument positions
    to values fed but not differentiated (integer labels).
    """
    from . import Graph, Input, default_dtype, sum as gsum, backend
    nondiff = dict(nondiff or {})
    hosts = [np.array(x, dtype=np.float64) for x in inputs]
    b = backend()
    with default_dtype("float64"):
        nodes = [Input(f"x{i}", shape=h.shape) for i, h in enumerate(hosts)]
        extra = [Input(f"n{k}", shape=np.shape(v), dtype=np.asarray(v).dtype)
                 for k, v in sorted(nondiff.items())]
        args = list(nodes)
        for (k, _), node in zip(sorted(nondiff.items()), extra):
            args.insert(k, node)
        out = build(*args)
        probe = Graph(out)
        fixed = {n: b.asarray(np.asarray(v)) for n, (_, v) in zip(extra, sorted(nondiff.items()))}

        def feed() -> dict:
            d = {n: b.asarray(h) for n, h in zip(nodes, hosts)}
            d.update(fixed)
            return d

        y = to_numpy(probe.run(feed()))
        r = np.random.default_rng(seed).standard_normal(np.shape(y))
        r_node = Input("upstream", shape=np.shape(y))
        cost = gsum(out * r_node)
        graph = Graph(out, cost=cost)
        grads = graph.gradients({**feed(), r_node: b.asarray(r)}, wrt=nodes, training=False)

        def f() -> float:
            return float(np.sum(to_numpy(probe.run(feed())) * r))

        for i, (node, h) in enumerate(zip(nodes, hosts)):
            numeric = numerical_gradient(f, h)
            assert_close(grads[node], numeric, rtol=rtol, atol=atol,
                         what=f"gradient of input {i} (shape {h.shape})", check_dtype=np.float64)


# --- a plain convolution: the reference the fast, chunked conv2d is tested against ----------
class _ConvCase:
    """The checked operands of one reference convolution, padded, on the active backend."""

    def __init__(self, x: Any, w: Any, stride: Any, padding: Any, dtype: Any) -> None:
        from . import backend
        self.xp = backend().xp
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ArgumentError(f"dtype must be a floating dtype, got {dtype!r}")
        x, w = self.array(x, "x"), self.array(w, "w")
        for name, a, want in (("x", x, "(N, C, H, W)"), ("w", w, "(C_out, C_in, kh, kw)")):
            if a.ndim != 4:
                raise ShapeError(f"{name} must be 4-D {want}, got shape {tuple(a.shape)}")
        (self.sh, self.sw), (ph, pw) = int_pair(stride, "stride"), int_pair(padding, "padding", 0)
        n, c, h, wd = x.shape
        co, ci, self.kh, self.kw = w.shape
        if c != ci:
            raise ShapeError(f"x has {c} channels (shape {tuple(x.shape)}) but w expects {ci} "
                             f"(shape {tuple(w.shape)})")
        if h + 2 * ph < self.kh or wd + 2 * pw < self.kw:
            raise ShapeError(f"kernel {(self.kh, self.kw)} of w is larger than x {tuple(x.shape)} "
                             f"padded by {(ph, pw)}")
        self.x, self.w, self.crop = x, w, (slice(None), slice(None), slice(ph, ph + h),
                                          slice(pw, pw + wd))
        self.xpad = self.xp.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=self.dtype)
        self.xpad[self.crop] = x
        self.out_shape = (n, co, (h + 2 * ph - self.kh) // self.sh + 1,
                          (wd + 2 * pw - self.kw) // self.sw + 1)

    def array(self, a: Any, name: str, shape: Optional[tuple] = None) -> Any:
        """``a`` (host or backend array) as a backend array of the case's dtype."""
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise ArgumentError(f"{name} must be an array, got {type(a).__name__}")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ShapeError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
        return self.xp.asarray(to_numpy(a)).astype(self.dtype)

    def offsets(self) -> Iterator[tuple[int, int, tuple]]:
        """``(i, j, view)`` per kernel offset: the slice of the padded x it multiplies."""
        oh, ow = self.out_shape[2:]
        for i in range(self.kh):
            for j in range(self.kw):
                yield i, j, (slice(None), slice(None), slice(i, i + self.sh * (oh - 1) + 1, self.sh),
                             slice(j, j + self.sw * (ow - 1) + 1, self.sw))


def reference_conv2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0,
                     dtype: Any = "float64") -> Any:
    """``conv2d``'s output computed plainly: NCHW cross-correlation of ``x`` with ``w``
    (C_out, C_in, kh, kw) plus ``b`` (C_out,), one product per kernel offset, in ``dtype``
    on the active backend (no chunks, no im2col). For tests of the fast one."""
    case = _ConvCase(x, w, stride, padding, dtype)
    xp = case.xp
    y = xp.zeros(case.out_shape, dtype=case.dtype)
    for i, j, view in case.offsets():
        y += xp.einsum("nchw,oc->nohw", case.xpad[view], case.w[:, :, i, j])
    if b is not None:
        y += case.array(b, "b", (case.out_shape[1],)).reshape(1, -1, 1, 1)
    return y


def reference_conv2d_grads(x: Any, w: Any, g: Any, stride: Any = 1, padding: Any = 0,
                           dtype: Any = "float64") -> tuple:
    """``(gx, gw, gb)``: the gradients of ``sum(reference_conv2d(x, w, b, ...) * g)`` (the
    bias's does not depend on ``b``), computed plainly per kernel offset like
    :func:`reference_conv2d`."""
    case = _ConvCase(x, w, stride, padding, dtype)
    xp = case.xp
    g = case.array(g, "g", case.out_shape)
    gxpad = xp.zeros(case.xpad.shape, dtype=case.dtype)
    gw = xp.zeros(case.w.shape, dtype=case.dtype)
    for i, j, view in case.offsets():
        gw[:, :, i, j] = xp.einsum("nohw,nchw->oc", g, case.xpad[view])
        gxpad[view] += xp.einsum("nohw,oc->nchw", g, case.w[:, :, i, j])
    return gxpad[case.crop], gw, g.sum(axis=(0, 2, 3))
