"""Optimizers (SGD with momentum/Nesterov, Adam) with decoupled weight decay, and LR schedules."""
from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

from .backends.host import to_numpy
from .checks import flag, integer, real
from .errors import ArgumentError, ArgumentTypeError, ShapeError
from .hints import Array, Data
from .io import CheckpointError
from .kernels import Kernel, KernelTable, implementations, kernel
from .node import Input, Node, Parameter
from .optim_checks import NonFiniteCostError, non_finite_message
from .schedules import CosineLR, Schedule, StepLR, make_schedule  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import numpy as np

    from .graph import Graph

#: ``gradients(graph, feed, wrt, rng_key) -> (cost, {parameter: gradient})`` for ``minimize``.
Gradients = Callable[[Any, Mapping[Any, Any], Sequence[Parameter], Any], tuple[Any, Mapping[Parameter, Any]]]


def _param_list(params: Any, who: str) -> list[Parameter]:
    """``params`` as a list of distinct Parameters, or an error naming the first misfit."""
    if isinstance(params, (Node, str, bytes, Mapping)) or not isinstance(params, Iterable):
        hint = " (wrap a single one in a list: [W])" if isinstance(params, Parameter) else ""
        raise ArgumentTypeError(f"{who} takes a list of Parameters, got "
                                f"{type(params).__name__}{hint}")
    out, seen = [], set()
    for k, p in enumerate(params):
        if not isinstance(p, Parameter):
            what = f"{type(p).__name__} {p.name!r}" if isinstance(p, Node) else repr(p)
            raise ArgumentTypeError(f"{who} params[{k}] is not a Parameter: {what}"
                                    + (" (an Input is fed, not trained)" if isinstance(p, Input)
                                       else ""))
        if id(p) in seen:
            raise ArgumentError(f"{who} got parameter {p.name!r} twice (it would be updated twice "
                                "per step)")
        seen.add(id(p))
        out.append(p)
    return out


_TABLES: dict[str, KernelTable] = {}  # backend name: its kernel table (graphnet.kernels)


class Optimizer:
    """Updates parameters in place from ``{parameter: gradient}``.

    ``weight_decay`` is decoupled (``p *= 1 - lr * weight_decay`` each step) and
    applies to weight matrices and kernels (rank >= 2), not to biases or statistics.
    """

    slots: tuple[str, ...] = ()

    def __init__(self, params: Sequence[Parameter], lr: float, weight_decay: float = 0.0) -> None:
        name = type(self).__name__
        self.lr = lr
        self.weight_decay = real(weight_decay, f"{name} weight_decay", 0.0)
        self.params = [p for p in _param_list(params, name) if p.trainable]
        if not self.params:
            raise ArgumentError(f"{name} got no trainable parameters")
        self.steps = 0
        self.state: dict[str, list[Any]] = {s: [None] * len(self.params) for s in self.slots}
        self._decays = [self.weight_decay if p.ndim and p.ndim >= 2 else 0.0 for p in self.params]
        self._grad_bufs: dict[Parameter, Any] = {}
        self._wrt: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()

    @property
    def lr(self) -> float:
        """The learning rate of the next update (a finite number > 0; checked when set)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = real(value, f"{type(self).__name__} lr", 0.0, low_open=True)

    def step(self, grads: Mapping[Parameter, Array]) -> None:
        """Apply one update from ``{parameter: gradient}`` (the gradients are left as they are).

        Each gradient must be an array of the parameter's backend with exactly its shape
        (no broadcasting); parameters missing from ``grads`` are left as they are.
        """
        self._check_grads(grads)
        self.apply(grads, scratch=False)

    def _check_grads(self, grads: Mapping[Parameter, Any]) -> None:
        if not isinstance(grads, Mapping):
            raise ArgumentTypeError(f"{type(self).__name__}.step takes a dict {{parameter: "
                                    f"gradient}}, got {type(grads).__name__}")
        for p in self.params:
            g = grads.get(p)
            if g is None:
                continue
            if not p.backend.is_array(g):
                raise ArgumentTypeError(f"the gradient for parameter {p.name!r} must be a "
                                        f"{p.backend.name} array, got {type(g).__name__}")
            if tuple(g.shape) != p.shape:
                raise ShapeError(f"the gradient for parameter {p.name!r} has shape "
                                 f"{tuple(g.shape)}, the parameter has shape {p.shape}")
            if g.dtype.kind != "f":
                raise ArgumentTypeError(f"the gradient for parameter {p.name!r} must be floating, "
                                        f"got dtype {g.dtype}")

    def minimize(self, graph: Graph, feed: Mapping[Input, Data],
                 rng_key: Optional[tuple[int, ...]] = None,
                 gradients: Optional[Gradients] = None) -> Array:
        """One training step on ``graph``'s cost: gradients, then the update. Returns the cost.

        ``rng_key`` keys the step's random ops (see :meth:`Graph.run`).

        A step whose cost is not finite (NaN or inf) never changes the weights or the
        optimizer's slots: on the host (NumPy) it raises :class:`NonFiniteCostError`
        (a ``gn.NumericsError``) before the update; on a device there is no host sync, the
        update kernels skip every element on a device-side "cost is finite" flag, and the
        returned cost reads as NaN or inf (only the host-side ``steps`` count still counts
        it). Class indices fed as host arrays are checked against the loss's class count
        when fed (``gn.FeedError`` naming the input, the value and its position).

        The gradients go into arrays this optimizer keeps from step to step (no
        allocation per step) and never leave it; use ``graph.gradients`` + ``step``
        to see them. ``gradients(graph, feed, wrt, rng_key) -> (cost, {parameter: gradient})``
        computes them instead (e.g. averaged over processes); the update may then overwrite
        the arrays it returns.
        """
        try:
            wrt = self._wrt.get(graph)  # by the graph itself: an id could be reused after it dies
        except TypeError:  # not weak-referenceable: not a Graph
            wrt = None
        if wrt is None:
            wrt = self._wrt[graph] = self._params_in(graph)
        if gradients is not None:
            cost, grads = gradients(graph, feed, wrt, rng_key)
        else:
            cost, grads = graph.gradients(feed, wrt=wrt, return_cost=True,
                                          into=self._buffers_for(wrt), rng_key=rng_key)
        self.apply(grads, scratch=True, finite=self._finite_flag(graph, feed, cost))
        return cost

    def _params_in(self, graph: Graph) -> tuple[Parameter, ...]:
        """This optimizer's parameters that ``graph`` reads; ArgumentError if there are none."""
        if not callable(getattr(graph, "gradients", None)):
            raise ArgumentTypeError(f"{type(self).__name__}.minimize takes a gn.Graph, got "
                                    f"{type(graph).__name__}")
        wrt = tuple(p for p in self.params if p in graph)
        if not wrt:
            mine = ", ".join(repr(p.name) for p in self.params[:8])
            theirs = ", ".join(repr(p.name) for p in graph.parameters()[:8]) or "none"
            raise ArgumentError(f"{type(self).__name__}.minimize: none of the optimizer's "
                                f"{len(self.params)} parameters ({mine}) is in the graph of cost "
                                f"{getattr(graph.cost, 'name', None)!r} (its parameters: "
                                f"{theirs}); build the optimizer from graph.parameters()")
        return wrt

    def _finite_flag(self, graph: Graph, feed: Mapping[Input, Data], cost: Any) -> Any:
        """None after checking a host cost (NonFiniteCostError if it is not finite), else the
        device cost as a one-element view: the update kernels read whether it is finite."""
        if cost is None:
            return None
        b = self.params[0].backend
        if b.name != "numpy" and b.is_array(cost):
            return cost.reshape(1)
        value = float(cost)
        if not math.isfinite(value):
            raise NonFiniteCostError(non_finite_message(self, graph, feed, value), value)
        return None

    def _buffers_for(self, wrt: Sequence[Parameter]) -> dict[Parameter, Any]:
        for p in wrt:
            if p not in self._grad_bufs:
                self._grad_bufs[p] = p.backend.xp.empty_like(p.value)
        return self._grad_bufs

    def apply(self, grads: Mapping[Parameter, Array], scratch: bool = False,
              finite: Any = None) -> None:
        """Apply one update from ``{parameter: gradient}`` without :meth:`step`'s checks.

        For callers that computed the gradients themselves in the parameters' shapes and
        backend; with ``scratch`` the update may overwrite the gradient arrays. ``finite``:
        a one-element device array; where it is not finite nothing is updated (device only).
        """
        self.steps += 1
        decays = self._decays
        for i, p in enumerate(self.params):
            g = grads.get(p)
            if g is not None:
                self._update(i, p, g, decays[i], scratch, finite)

    def _update(self, i: int, p: Parameter, g: Any, wd: float, scratch: bool,
                finite: Any = None) -> None:
        raise NotImplementedError

    def _kernel(self, k: Kernel, p: Parameter) -> Callable[..., Any]:
        """Kernel ``k``'s version on ``p``'s backend, resolved once (not on every update)."""
        table = _TABLES.get(p.backend.name)
        if table is None:
            table = _TABLES[p.backend.name] = implementations(p.backend.name)
        return table[k]

    def _slot(self, name: str, i: int, p: Parameter) -> Any:
        s = self.state[name][i]
        if s is None:
            s = self.state[name][i] = p.backend.xp.zeros_like(p.value)
        return s

    # --- checkpoints --------------------------------------------------------------------
    def host_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(host arrays, JSON-able scalars) that restore this optimizer exactly."""
        arrays = {f"{s}.{i}": to_numpy(v) for s, vs in self.state.items()
                  for i, v in enumerate(vs) if v is not None}
        return arrays, {"type": type(self).__name__, "lr": self.lr, "steps": self.steps,
                        "weight_decay": self.weight_decay}

    def load_host_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`host_state` returned."""
        if not isinstance(meta, Mapping) or meta.get("type") != type(self).__name__:
            got = meta.get("type") if isinstance(meta, Mapping) else type(meta).__name__
            raise CheckpointError(f"optimizer state is for {got}, not {type(self).__name__}")
        try:
            lr = real(meta["lr"], "saved optimizer lr", 0.0, low_open=True)
            steps = integer(meta["steps"], "saved optimizer steps", 0)
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"optimizer state is malformed: {exc}") from None
        self.lr, self.steps = lr, steps
        for s in self.slots:
            for i, p in enumerate(self.params):
                v = arrays.get(f"{s}.{i}")
                if v is not None and tuple(v.shape) != p.shape:
                    raise CheckpointError(f"optimizer slot {s}.{i} has shape {tuple(v.shape)}, "
                                     f"parameter {p.name!r} has {p.shape}")
                self.state[s][i] = None if v is None else p.backend.asarray(v).astype(p.dtype)


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""

    def __init__(self, params: Sequence[Parameter], lr: float = 0.1, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        momentum = real(momentum, "SGD momentum", 0.0, 1.0, high_open=True)
        nesterov = flag(nesterov, "SGD nesterov")
        if nesterov and not momentum:
            raise ArgumentError("SGD nesterov=True needs momentum > 0")
        self.slots = ("velocity",) if momentum else ()
        super().__init__(params, lr, weight_decay)
        self.momentum, self.nesterov = momentum, nesterov

    def _update(self, i: int, p: Parameter, g: Any, wd: float, scratch: bool,
                finite: Any = None) -> None:
        v = self._slot("velocity", i, p) if self.momentum else None
        self._kernel(sgd_update, p)(p.backend, p._value, g, v, self.lr, self.momentum,
                                    self.nesterov, wd, scratch, finite)


class Adam(Optimizer):
    """Adam with bias correction; with ``weight_decay`` it is AdamW."""

    slots = ("m", "v")

    def __init__(self, params: Sequence[Parameter], lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise ArgumentTypeError(f"Adam betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1 = real(betas[0], "Adam betas[0]", 0.0, 1.0, high_open=True)
        self.beta2 = real(betas[1], "Adam betas[1]", 0.0, 1.0, high_open=True)
        self.eps = real(eps, "Adam eps", 0.0, low_open=True)
        super().__init__(params, lr, weight_decay)

    def _update(self, i: int, p: Parameter, g: Any, wd: float, scratch: bool,
                finite: Any = None) -> None:
        self._kernel(adam_update, p)(p.backend, p._value, g, self._slot("m", i, p),
                                     self._slot("v", i, p), self.lr, self.beta1, self.beta2,
                                     self.eps, self.steps, wd, finite)


# --- update kernels: the reference, then the NumPy and CUDA versions ------------------------
# Each takes ``finite``: None, or a one-element device array (the step's cost); where it is not
# finite the update leaves the parameter and the slots as they were, decided on the device.
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
