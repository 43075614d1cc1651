"""What the trainer trains: the :class:`TrainableModel` protocol and the check naming what a model lacks."""
from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from ..backends.base import Backend
from ..graph import Graph
from ..hints import Array, Data
from ..node import Input, Parameter


@runtime_checkable
class TrainableModel(Protocol):
    """What :class:`graphnet.training.Trainer` trains: a loss graph, its two inputs, and the
    preparation, evaluation and saving of the model's arrays. :class:`Classifier` is one."""

    # Defaults are written "...", as in stubs: the implementations hold them (and mutation
    # testing would otherwise add copies of these methods that isinstance() then requires).
    backend: Backend
    train_graph: Graph

    @property
    def inputs(self) -> tuple[Input, Input]:
        """The ``(data, targets)`` inputs of ``train_graph`` that each batch feeds."""

    def prepare(self, x: Data) -> Array:
        """Raw data -> what the ``data`` input takes, on the model's backend."""

    def prepare_targets(self, y: Data, n: int, argument: str = ...) -> Array:
        """``n`` raw targets -> what the ``targets`` input takes (ValueError naming
        ``argument``, by default "targets", if they do not fit)."""

    def evaluate(self, x: Data, y: Data, batch_size: int = ...,
                 prepared: bool = ...) -> dict[str, float]:
        """At least ``{"loss": ..., "accuracy": ...}`` over the whole of ``x`` (in batches of
        ``batch_size``, by default 2000; ``prepared``: ``x`` already went through ``prepare``)."""

    def parameters(self) -> list[Parameter]:
        """The trainable parameters."""

    def named_arrays(self) -> dict[str, Parameter]:
        """Every array the model holds, by name (saved in checkpoints)."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description of the architecture (checked on resume)."""

    def host_arrays(self) -> dict[str, np.ndarray]:
        """Host copies of :meth:`named_arrays`."""

    def load_host_arrays(self, arrays: Mapping[str, np.ndarray], source: str = ...) -> None:
        """Set every array from host copies (errors name ``source``, by default "checkpoint")."""


#: The members a TrainableModel has (checked by name: ``Trainer`` says which are missing).
TRAINABLE_MEMBERS = ("backend", "train_graph", "inputs", "prepare", "prepare_targets", "evaluate",
                     "parameters", "named_arrays", "config", "host_arrays", "load_host_arrays")
_MISSING = object()


def missing_members(model: Any) -> list[str]:
    """The members of :class:`TrainableModel` that ``model`` lacks (callable where a method)."""
    missing = []
    for name in TRAINABLE_MEMBERS:
        value = getattr(model, name, _MISSING)
        if value is _MISSING or (name not in ("backend", "train_graph", "inputs")
                                 and not callable(value)):
            missing.append(name)
    return missing


__all__ = ["TrainableModel", "TRAINABLE_MEMBERS", "missing_members"]
