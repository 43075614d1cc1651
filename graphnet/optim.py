"""Optimizers (SGD with momentum/Nesterov, Adam) with decoupled weight decay, and LR schedules."""
from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

from .backends import backend
from .backends.host import to_numpy
from .checks import flag, integer, real
from .errors import ArgumentError, ArgumentTypeError, ShapeError
from .hints import Array, Data
from .io import CheckpointError
from .kernels import Kernel, KernelTable, implementations, kernel
from .node import Input, Node, Parameter

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
        self.lr = real(lr, f"{name} lr", 0.0, low_open=True)
        self.weight_decay = real(weight_decay, f"{name} weight_decay", 0.0)
        self.params = [p for p in _param_list(params, name) if p.trainable]
        if not self.params:
            raise ArgumentError(f"{name} got no trainable parameters")
        self.steps = 0
        self.state: dict[str, list[Any]] = {s: [None] * len(self.params) for s in self.slots}
        self._decays = [self.weight_decay if p.ndim and p.ndim >= 2 else 0.0 for p in self.params]
        self._grad_bufs: dict[Parameter, Any] = {}
        self._wrt: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()

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

        The gradients go into arrays this optimizer keeps from step to step (no
        allocation per step) and never leave it; use ``graph.gradients`` + ``step``
        to see them. ``gradients(graph, feed, wrt, rng_key) -> (cost, {parameter: gradient})``
        computes them instead (e.g. averaged over processes); the update may then overwrite
        the arrays it returns.
        """
        wrt = self._wrt.get(graph)  # by the graph itself: an id could be reused after it dies
        if wrt is None:
            wrt = self._wrt[graph] = tuple(p for p in self.params if p in graph)
        if gradients is not None:
            cost, grads = gradients(graph, feed, wrt, rng_key)
        else:
            cost, grads = graph.gradients(feed, wrt=wrt, return_cost=True,
                                          into=self._buffers_for(wrt), rng_key=rng_key)
        self.apply(grads, scratch=True)
        return cost

    def _buffers_for(self, wrt: Sequence[Parameter]) -> dict[Parameter, Any]:
        for p in wrt:
            if p not in self._grad_bufs:
                self._grad_bufs[p] = p.backend.xp.empty_like(p.value)
        return self._grad_bufs

    def apply(self, grads: Mapping[Parameter, Array], scratch: bool = False) -> None:
        """Apply one update from ``{parameter: gradient}`` without :meth:`step`'s checks.

        For callers that computed the gradients themselves in the parameters' shapes and
        backend; with ``scratch`` the update may overwrite the gradient arrays.
        """
        self.steps += 1
        decays = self._decays
        for i, p in enumerate(self.params):
            g = grads.get(p)
            if g is not None:
                self._update(i, p, g, decays[i], scratch)

    def _update(self, i: int, p: Parameter, g: Any, wd: float, scratch: bool) -> None:
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
        b = backend()
        for s in self.slots:
            for i, p in enumerate(self.params):
                v = arrays.get(f"{s}.{i}")
                if v is not None and tuple(v.shape) != p.shape:
                    raise CheckpointError(f"optimizer slot {s}.{i} has shape {tuple(v.shape)}, "
                                     f"parameter {p.name!r} has {p.shape}")
                self.state[s][i] = None if v is None else b.asarray(v).astype(p.dtype)


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

    def _update(self, i: int, p: Parameter, g: Any, wd: float, scratch: bool) -> None:
        v = self._slot("velocity", i, p) if self.momentum else None
        self._kernel(sgd_update, p)(p.backend, p._value, g, v, self.lr, self.momentum,
                                    self.nesterov, wd, scratch)


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

    def _update(self, i: int, p: Parameter, g: Any, wd: float, scratch: bool) -> None:
        self._kernel(adam_update, p)(p.backend, p._value, g, self._slot("m", i, p),
                                     self._slot("v", i, p), self.lr, self.beta1, self.beta2,
                                     self.eps, self.steps, wd)


# --- update kernels: the reference, then the NumPy and CUDA versions ------------------------
@kernel
def sgd_update(be: Any, p: Any, g: Any, v: Any | None, lr: float, momentum: float,
               nesterov: bool, weight_decay: float, scratch: bool = False) -> None:
    """One SGD step in place: decoupled weight decay, optional (Nesterov) momentum.

    With ``scratch`` the update may overwrite ``g`` (the caller's own buffer).
    """
    if weight_decay:
        p *= 1 - lr * weight_decay
    if v is None:
        p -= lr * g
        return
    v *= momentum
    v += g
    if nesterov:
        p -= lr * (g + momentum * v)
    else:
        p -= lr * v


@sgd_update.override("numpy")
def _sgd_update_numpy(be: Any, p: Any, g: Any, v: Any | None, lr: float, momentum: float,
                      nesterov: bool, weight_decay: float, scratch: bool = False) -> None:
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
                     nesterov: bool, weight_decay: float, scratch: bool = False) -> None:
    decay = 1 - lr * weight_decay
    if v is None:
        be.elementwise("sgd", "T g, T lr, T decay", "T p",
                       "p = p * decay - lr * g")(g, lr, decay, p)
        return
    body = ("v = momentum * v + g; "
            + ("p = p * decay - lr * (g + momentum * v)" if nesterov else "p = p * decay - lr * v"))
    name = "sgd_nesterov" if nesterov else "sgd_momentum"
    be.elementwise(name, "T g, T lr, T momentum, T decay", "T p, T v", body)(
        g, lr, momentum, decay, p, v)


@kernel
def adam_update(be: Any, p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float,
                beta2: float, eps: float, step: int, weight_decay: float) -> None:
    """One Adam(W) step in place, with bias correction and decoupled weight decay."""
    xp = be.xp
    if weight_decay:
        p *= 1 - lr * weight_decay
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    c1 = 1 - beta1 ** step
    c2 = 1 - beta2 ** step
    denom = xp.sqrt(v / c2)
    denom += eps
    p -= (lr / c1) * (m / denom)


@adam_update.override("numpy")
def _adam_update_numpy(be: Any, p: Any, g: Any, m: Any, v: Any, lr: float, beta1: float,
                       beta2: float, eps: float, step: int, weight_decay: float) -> None:
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
                      beta2: float, eps: float, step: int, weight_decay: float) -> None:
    c1 = 1 - beta1 ** step
    c2 = 1 - beta2 ** step
    body = ("m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g * g; "
            "p = p * decay - (lr / c1) * m / (sqrt(v / c2) + eps)")
    be.elementwise("adam", "T g, T lr, T b1, T b2, T eps, T c1, T c2, T decay",
                   "T p, T m, T v", body)(
        g, lr, beta1, beta2, eps, c1, c2, 1 - lr * weight_decay, p, m, v)


class Schedule:
    """Learning-rate multiplier as a function of progress in epochs (a float)."""

    def __call__(self, epoch: float) -> float:
        return 1.0

    def config(self) -> dict[str, Any]:
        return {"type": "constant"}


class StepLR(Schedule):
    """Multiply by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = integer(step_size, "StepLR step_size", 1)
        self.gamma = real(gamma, "StepLR gamma", 0.0, low_open=True)

    def __call__(self, epoch: float) -> float:
        return self.gamma ** int(epoch // self.step_size)

    def config(self) -> dict[str, Any]:
        return {"type": "step", "step_size": self.step_size, "gamma": self.gamma}


class CosineLR(Schedule):
    """Half a cosine from 1 down to ``floor`` over ``epochs``, after ``warmup`` linear epochs."""

    def __init__(self, epochs: float, floor: float = 0.0, warmup: float = 0.0) -> None:
        self.epochs = real(epochs, "CosineLR epochs", 0.0, low_open=True)
        self.floor = real(floor, "CosineLR floor", 0.0, 1.0)
        self.warmup = real(warmup, "CosineLR warmup", 0.0, self.epochs)

    def __call__(self, epoch: float) -> float:
        if epoch < self.warmup:
            return (epoch + 1e-3) / self.warmup
        t = min(max(epoch - self.warmup, 0.0) / max(self.epochs - self.warmup, 1e-9), 1.0)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))

    def config(self) -> dict[str, Any]:
        return {"type": "cosine", "epochs": self.epochs, "floor": self.floor, "warmup": self.warmup}


def make_schedule(name: Optional[str], epochs: int, **kw: Any) -> Schedule:
    """``None``/``"constant"``, ``"step"`` or ``"cosine"``."""
    if name in (None, "constant", "none"):
        return Schedule()
    if name == "step":
        return StepLR(kw.get("step_size", max(epochs // 3, 1)), kw.get("gamma", 0.1))
    if name == "cosine":
        return CosineLR(epochs, kw.get("floor", 0.0), kw.get("warmup", 0.0))
    raise ArgumentError(f"unknown schedule {name!r}; choose constant, step or cosine")
