"""Test helpers shared by graphnet's suite and by users testing their own ops."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .backends.host import to_numpy


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
