"""Learning-rate schedules: a multiplier of the base rate as a function of progress in epochs."""
from __future__ import annotations

import math
from typing import Any, Optional

from .checks import integer, real
from .errors import ArgumentError


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
    real(epochs, "make_schedule epochs", 0.0, low_open=True)
    if name in (None, "constant", "none"):
        return Schedule()
    if name == "step":
        return StepLR(kw.get("step_size", max(int(epochs // 3), 1)), kw.get("gamma", 0.1))
    if name == "cosine":
        return CosineLR(epochs, kw.get("floor", 0.0), kw.get("warmup", 0.0))
    raise ArgumentError(f"unknown schedule {name!r}; choose constant, step or cosine")
