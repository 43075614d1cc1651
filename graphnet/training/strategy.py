"""How the trainer spreads its work: the :class:`Strategy` interface and the one-process default.

A strategy decides which rows of each batch this process takes, how one step runs
(gradients and the optimizer's update), how metrics are evaluated, whether this process
writes files, and when every process agrees to stop. Data parallelism over MPI is one
(``graphnet.distributed.DataParallel``); the trainer knows only this interface.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol

from ..hints import Array, RngKey


class Sampler(Protocol):
    """This process's rows of each batch of an epoch's order."""

    global_batch: int

    def rows_at(self, permutation: Any, start: int) -> tuple[Any, int]:
        """(this process's rows, the epoch position of its first row) of the batch at ``start``."""


class Strategy(Protocol):
    """What the trainer is handed to run its steps (see the module docstring)."""

    writes: bool

    def attach(self, trainer: Any) -> None:
        """Prepare ``trainer``'s model and settings before training (e.g. equal parameters)."""

    def sampler(self, batch_size: int) -> Sampler:
        """The rows each step takes, for ``batch_size`` rows per process."""

    def step(self, optimizer: Any, graph: Any, feed: Mapping[Any, Any], rng_key: Optional[RngKey],
             samples: int, stop_requested: Callable[[], bool]) -> tuple[Array, bool]:
        """One training step: ``(its cost, whether every process stops after it)``.

        ``stop_requested()`` says whether this process was asked to stop (Ctrl-C); a request
        the step's agreement missed must count for the next step's."""

    def evaluate(self, model: Any, x: Array, y: Array) -> dict[str, float]:
        """``model``'s metrics over all of ``x`` (prepared)."""

    def end_epoch(self, model: Any) -> None:
        """Bring the model's statistics into agreement at the end of an epoch."""


class Batches:
    """Consecutive batches of ``batch_size`` entries of the epoch's order."""

    def __init__(self, batch_size: int) -> None:
        self.global_batch = batch_size

    def rows_at(self, permutation: Any, start: int) -> tuple[Any, int]:
        """(the batch beginning at sample ``start``, ``start``)."""
        return permutation[start:start + self.global_batch], start


class SingleProcess:
    """The default: this process trains on every batch and writes the files."""

    writes = True

    def attach(self, trainer: Any) -> None:
        """Nothing to prepare."""

    def sampler(self, batch_size: int) -> Batches:
        """Every row of every batch."""
        return Batches(batch_size)

    def step(self, optimizer: Any, graph: Any, feed: Mapping[Any, Any], rng_key: Optional[RngKey],
             samples: int, stop_requested: Callable[[], bool]) -> tuple[Array, bool]:
        """``optimizer.minimize``; a stop asked for before it returns stops after this batch."""
        cost = (optimizer.minimize(graph, feed) if rng_key is None
                else optimizer.minimize(graph, feed, rng_key=rng_key))
        return cost, stop_requested()

    def evaluate(self, model: Any, x: Array, y: Array) -> dict[str, float]:
        """``model.evaluate`` on the prepared data."""
        return model.evaluate(x, y, prepared=True)

    def end_epoch(self, model: Any) -> None:
        """Nothing to agree on."""


__all__ = ["Strategy", "Sampler", "SingleProcess", "Batches"]
