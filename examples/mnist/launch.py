"""Command-line glue for data-parallel runs of the example: ``--distributed``, one failing
rank ending them all, and the line saying how training is spread."""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

from graphnet.distributed import World, init, launched_by_mpi


def from_flag(flag: Optional[bool]) -> Optional[World]:
    """The world for a command line's ``--distributed`` (None: on when started by mpiexec).

    Ranks other than 0 get their standard output silenced (errors still reach stderr).
    """
    if flag is not None and not isinstance(flag, bool):
        raise TypeError(f"flag must be True, False or None, got {type(flag).__name__} {flag!r}")
    if flag is False or (flag is None and not launched_by_mpi()):
        return None
    world = init()
    if not world.is_root:
        sys.stdout = open(os.devnull, "w")
    return world


class failure_ends_all:
    """A block that, if it raises or returns an exit code other than 0 or 130 (Ctrl-C, which
    all ranks agree on), ends every rank at once instead of leaving them to time out."""

    def __init__(self, world: World) -> None:
        if not isinstance(world, World):
            raise TypeError(f"world must be a graphnet.distributed.World, got "
                            f"{type(world).__name__} {world!r}")
        self.world = world

    def __enter__(self) -> "failure_ends_all":
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None or self.world.size == 1 or issubclass(kind, (KeyboardInterrupt, SystemExit)):
            return
        import traceback
        traceback.print_exception(kind, exc, tb)
        self.world.abort(f"{kind.__name__} on this rank")

    def check(self, code: int) -> int:
        """``code``, after ending every rank if it says this rank failed on its own."""
        if code not in (0, 130) and self.world.size > 1:
            self.world.abort(f"this rank stopped with exit code {code}")
        return code


def describe_training(trainer: Any) -> str:
    """One line saying how a Trainer runs across the ranks (its world, global batch, transport)."""
    return trainer.strategy.describe(trainer.batch_size)
