"""Deprecated: the training loop moved to :mod:`graphnet.training`; every name imported from
here still works (with a DeprecationWarning)."""
from __future__ import annotations

import warnings
from typing import Any

from . import training as _training

_NAMES = ("Trainer", "History", "TrainState", "fit", "epoch_permutation", "DivergenceError",
          "OutOfMemory", "TrainingInterrupted", "CHECKPOINT", "CHECKPOINT_VERSION",
          "checkpoint_position", "resume_model", "schedule_from_config")


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"graphnet.train.{name} is deprecated: import it from graphnet.training",
                  DeprecationWarning, stacklevel=2)
    return getattr(_training, name)


def __dir__() -> list[str]:
    return sorted(_NAMES)


__all__ = list(_NAMES)
