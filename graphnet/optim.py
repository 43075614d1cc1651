"""Optimizers (SGD with momentum/Nesterov, Adam) with decoupled weight decay, and LR schedules."""
from __future__ import annotations

import math
import weakref
from typing import Any, Mapping, Optional, Sequence

from .backends import backend
from .backends.host import to_numpy
from .node import Parameter


class Optimizer:
    """Updates parameters in place from ``{parameter: gradient}``.

    ``weight_decay`` is decoupled (``p *= 1 - lr * weight_decay`` each step) and
    applies to weight matrices and kernels (rank >= 2), not to biases or statistics.
    """

    slots: tuple[str, ...] = ()

    def __init__(self, params: Sequence[Parameter], lr: float, weight_decay: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params = [p for p in params if p.trainable]
        if not self.params:
            raise ValueError("the optimizer got no trainable parameters")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self.state: dict[str, list[Any]] = {s: [None] * len(self.params) for s in self.slots}
        self._decays = [self.weight_decay if p.ndim and p.ndim >= 2 else 0.0 for p in self.params]
        self._grad_bufs: dict[Parameter, Any] = {}
        self._wrt: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()

    def step(self, grads: Mapping[Parameter, Any]) -> None:
        """Apply one update from ``{parameter: gradient}`` (the gradients are left as they are)."""
        self._apply(grads, False)

    def minimize(self, graph: Any, feed: Mapping[Any, Any],
                 rng_key: Optional[tuple[int, ...]] = None) -> Any:
        """One training step on ``graph``'s cost: gradients, then the update. Returns the cost.

        ``rng_key`` keys the step's random ops (see :meth:`Graph.run`).

        The gradients go into arrays this optimizer keeps from step to step (no
        allocation per step) and never leave it; use ``graph.gradients`` + ``step``
        to see them.
        """
        wrt = self._wrt.get(graph)  # by the graph itself: an id could be reused after it dies
        if wrt is None:
            wrt = self._wrt[graph] = tuple(p for p in self.params if p in graph)
            for p in wrt:
                if p not in self._grad_bufs:
                    self._grad_bufs[p] = p.backend.xp.empty_like(p.value)
        cost, grads = graph.gradients(feed, wrt=wrt, return_cost=True, into=self._grad_bufs,
                                     rng_key=rng_key)
        self._apply(grads, True)
        return cost

    def _apply(self, grads: Mapping[Parameter, Any], scratch: bool) -> None:
        # scratch: the gradient arrays are ours to overwrite (minimize's own buffers)
        self.steps += 1
        decays = self._decays
        for i, p in enumerate(self.params):
            g = grads.get(p)
            if g is not None:
                self._update(i, p, g, decays[i], scratch)

    def _update(self, i: int, p: Parameter, g: Any, wd: float, scratch: bool) -> None:
        raise NotImplementedError

    def _slot(self, name: str, i: int, p: Parameter) -> Any:
        s = self.state[name][i]
        if s is None:
            s = self.state[name][i] = p.backend.xp.zeros_like(p.value)
        return s

    # --- checkpoints --------------------------------------------------------------------
    def host_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(host arrays, JSON-able scalars) that restore this optimizer exactly."""
        arrays = {f"{s}.{i}": to_numpy(v) for s, vs in self.state.items()
                  for i, v in enumerate(vs) if v is not None}
        return arrays, {"type": type(self).__name__, "lr": self.lr, "steps": self.steps,
                        "weight_decay": self.weight_decay}

    def load_host_state(self, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`host_state` returned."""
        if meta.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {meta.get('type')}, not {type(self).__name__}")
        self.lr, self.steps = float(meta["lr"]), int(meta["steps"])
        b = backend()
        for s in self.slots:
            for i, p in enumerate(self.params):
                v = arrays.get(f"{s}.{i}")
                if v is not None and tuple(v.shape) != p.shape:
                    raise ValueError(f"optimizer slot {s}.{i} has shape {tuple(v.shape)}, "
                                     f"parameter {p.name!r} has {p.shape}")
                self.state[s][i] = None if v is None else b.asarray(v).astype(p.dtype)


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""

    def __init__(self, params: Sequence[Parameter], lr: float = 0.1, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and not momentum:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.slots = ("velocity",) if momentum else ()
        super().__init__(params, lr, weight_decay)
        self.momentum, self.nesterov = float(momentum), nesterov

    def _update(self, i: int, p: Parameter, g: Any, wd: float, scratch: bool) -> None:
        v = self._slot("velocity", i, p) if self.momentum else None
        p.backend.sgd_update(p._value, g, v, self.lr, self.momentum, self.nesterov, wd, scratch)


class Adam(Optimizer):
    """Adam with bias correction; with ``weight_decay`` it is AdamW."""

    slots = ("m", "v")

    def __init__(self, params: Sequence[Parameter], lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)

    def _update(self, i: int, p: Parameter, g: Any, wd: float, scratch: bool) -> None:
        p.backend.adam_update(p._value, g, self._slot("m", i, p), self._slot("v", i, p), self.lr,
                              self.beta1, self.beta2, self.eps, self.steps, wd)


class Schedule:
    """Learning-rate multiplier as a function of progress in epochs (a float)."""

    def __call__(self, epoch: float) -> float:
        return 1.0

    def config(self) -> dict[str, Any]:
        return {"type": "constant"}


class StepLR(Schedule):
    """Multiply by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, epoch: float) -> float:
        return self.gamma ** int(epoch // self.step_size)

    def config(self) -> dict[str, Any]:
        return {"type": "step", "step_size": self.step_size, "gamma": self.gamma}


class CosineLR(Schedule):
    """Half a cosine from 1 down to ``floor`` over ``epochs``, after ``warmup`` linear epochs."""

    def __init__(self, epochs: float, floor: float = 0.0, warmup: float = 0.0) -> None:
        if epochs <= 0:
            raise ValueError(f"CosineLR needs epochs > 0, got {epochs}")
        self.epochs, self.floor, self.warmup = float(epochs), float(floor), float(warmup)

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
    raise ValueError(f"unknown schedule {name!r}; choose constant, step or cosine")
