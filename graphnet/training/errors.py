"""Why training stopped: divergence, the device's memory, Ctrl-C."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import RunError
from ..graph_checks import out_of_memory


class DivergenceError(FloatingPointError):
    """The training loss became NaN or inf; the last good checkpoint is kept."""


class OutOfMemory(MemoryError):
    """The device ran out of memory during training; the message says what to change."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the current batch finished and a checkpoint was saved."""

    def __init__(self, message: str, checkpoint: Optional[Path]) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or what an engine RunError wrapped) is a device or host out-of-memory."""
    return out_of_memory(root_cause(exc))


def root_cause(exc: BaseException) -> BaseException:
    """``exc``, or what an engine RunError wrapped."""
    while isinstance(exc, RunError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


__all__ = ["DivergenceError", "OutOfMemory", "TrainingInterrupted", "is_out_of_memory", "root_cause"]
