"""Ctrl-C during training: finish the batch, then stop (a second Ctrl-C stops at once)."""
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any, Callable, Optional, Protocol


class Stoppable(Protocol):
    """What the handler flags: a trainer's stop request and where it saves."""

    stop_requested: bool
    checkpoint_dir: Any


class sigint_finishes_batch:
    """While active, Ctrl-C sets ``trainer.stop_requested`` (twice: KeyboardInterrupt at once).

    The flag is only ever set here and cleared on exit: the strategy reads it, so a signal
    that lands in the middle of a step is never lost (it counts for the next agreement).
    """

    def __init__(self, trainer: Stoppable) -> None:
        self.trainer = trainer
        self.previous: Optional[Callable[[int, Optional[FrameType]], Any] | int] = None

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.trainer.stop_requested:
            raise KeyboardInterrupt
        self.trainer.stop_requested = True
        if self.trainer.checkpoint_dir:
            print("\nCtrl-C: finishing this batch and saving a checkpoint "
                  "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "sigint_finishes_batch":
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        self.trainer.stop_requested = False


__all__ = ["sigint_finishes_batch"]
