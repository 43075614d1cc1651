"""The optimizers' update kernels: the reference, then the NumPy and CUDA versions.

Each takes ``finite``: None, or a one-element device array (the step's cost); where it is
not finite the update leaves the parameter and the slots exactly as they were, decided on
the device (no host synchronisation).
"""
from __future__ import annotations

from typing import Any, Callable

from .kernels import kernel


def _unless_not_finite(be: Any, finite: Any, arrays: list, update: Callable[[], None]) -> None:
    """Run ``update`` (in place on ``arrays``), then put them back where ``finite`` is not finite."""
    if finite is None:
        update()
        return
    xp = be.xp
    saved = [a.copy() for a in arrays if a is not None]
    update()
    keep = ~xp.isfinite(finite)
    for a, s in zip([a for a in arrays if a is not None], saved):
        xp.copyto(a, s, where=keep)


def _body(body: str, masked: bool) -> str:
    """A CUDA kernel body; ``masked``: run only where the one-element ``finite`` (the cost)
    is finite."""
    return f"if (isfinite((double)finite[0])) {{ {body}; }}" if masked else body


@kernel
def sgd_update(be: Any, p: Any, g: Any, v: Any | None, lr: float, momentum: float,
               nesterov: bool, weight_decay: float, scratch: bool = False,
               finite: Any = None) -> None:
    """One SGD step in place: decoupled weight decay, optional (Nesterov) momentum.

    With ``scratch`` the update may overwrite ``g`` (the caller's own buffer).
    """
    def update() -> None:
        nonlocal p
        if weight_decay:
            p *= 1 - lr * weight_decay
        if v is None:
            p -= lr * g
            return
        v[...] *= momentum
        v[...] += g
        if nesterov:
            p -= lr * (g + momentum * v)
        else:
            p -= lr * v
    _unless_not_finite(be, finite, [p, v], update)


@sgd_update.override("numpy")
def _sgd_update_numpy(be: Any, p: Any, g: Any, v: Any | None, lr: float, momentum: float,
                      nesterov: bool, weight_decay: float, scratch: bool = False,
                      finite: Any = None) -> None:
    if finite is not None:  # the optimizer checks a host cost itself: this is for direct calls
        _unless_not_finite(be, finite, [p, v], lambda: _sgd_update_numpy(
            be, p, g, v, lr, momentum, nesterov, weight_decay, False))
        return
    # The reference's arithmetic in the same order, with no temporaries.
    np = be.xp
    if weight_decay:
        p *= 1 - lr * weight_decay
    tmp = g if scratch and not nesterov else be.scratch(p)
    step = g
    if v is not None:
        v *= momentum
        v += g
        step = v
        if nesterov:
            np.multiply(v, momentum, out=tmp)
            tmp += g
            step = tmp
    np.multiply(step, lr, out=tmp)
    p -= tmp


@sgd_update.override("cupy")
def _sgd_update_cuda(be: Any, p: Any, g: Any, v: Any | None, lr: float, momentum: float,
                     nesterov: bool, weight_decay: float, scratch: bool = False,
                     finite: Any = None) -> None:
    decay = 1 - lr * weight_decay
    masked = finite is not None
    extra, mask = ((finite,), ", raw C finite") if masked else ((), "")
    if v is None:
        name = "sgd_masked" if masked else "sgd"
        be.elementwise(name, "T g, T lr, T decay" + mask, "T p",
                       _body("p = p * decay - lr * g", masked))(g, lr, decay, *extra, p)
        return
    body = ("v = momentum * v + g; "
            + ("p = p * decay - lr * (g + momentum * v)" if nesterov else "p = p * decay - lr * v"))
    if nesterov:
        name = "sgd_nesterov_masked" if masked else "sgd_nesterov"
    else:
        name = "sgd_momentum_masked" if masked else "sgd_momentum"
    be.elementwise(name, "T g, T lr, T momentum, T decay" + mask, "T p, T v",
                   _body(body, masked))(g, lr, momentum, decay, *extra, p, v)


@kernel
def adam_update(be: Any, p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float,
                beta2: float, eps: float, step: int, weight_decay: float,
                finite: Any = None) -> None:
    """One Adam(W) step in place, with bias correction and decoupled weight decay."""
    def update() -> None:
        xp = be.xp
        if weight_decay:
            p[...] *= 1 - lr * weight_decay
        m[...] *= beta1
        m[...] += (1 - beta1) * g
        v[...] *= beta2
        v[...] += (1 - beta2) * (g * g)
        c1 = 1 - beta1 ** step
        c2 = 1 - beta2 ** step
        denom = xp.sqrt(v / c2)
        denom += eps
        p[...] -= (lr / c1) * (m / denom)
    _unless_not_finite(be, finite, [p, m, v], update)


@adam_update.override("numpy")
def _adam_update_numpy(be: Any, p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float,
                       beta2: float, eps: float, step: int, weight_decay: float,
                       finite: Any = None) -> None:
    if finite is not None:  # the optimizer checks a host cost itself: this is for direct calls
        _unless_not_finite(be, finite, [p, m, v], lambda: _adam_update_numpy(
            be, p, g, m, v, lr, beta1, beta2, eps, step, weight_decay))
        return
    # The reference's arithmetic in the same order, through one scratch buffer.
    np = be.xp
    if weight_decay:
        p *= 1 - lr * weight_decay
    t = be.scratch(p)
    m *= beta1
    np.multiply(g, 1 - beta1, out=t)
    m += t
    v *= beta2
    np.multiply(g, g, out=t)
    t *= 1 - beta2
    v += t
    np.divide(v, 1 - beta2 ** step, out=t)
    np.sqrt(t, out=t)
    t += eps
    np.divide(m, t, out=t)
    t *= lr / (1 - beta1 ** step)
    p -= t


@adam_update.override("cupy")
def _adam_update_cuda(be: Any, p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float,
                      beta2: float, eps: float, step: int, weight_decay: float,
                      finite: Any = None) -> None:
    c1 = 1 - beta1 ** step
    c2 = 1 - beta2 ** step
    body = ("m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g * g; "
            "p = p * decay - (lr / c1) * m / (sqrt(v / c2) + eps)")
    params = "T g, T lr, T b1, T b2, T eps, T c1, T c2, T decay"
    args = (g, lr, beta1, beta2, eps, c1, c2, 1 - lr * weight_decay)
    masked = finite is not None
    extra, mask = ((finite,), ", raw C finite") if masked else ((), "")
    be.elementwise("adam_masked" if masked else "adam", params + mask, "T p, T m, T v",
                   _body(body, masked))(*args, *extra, p, m, v)
