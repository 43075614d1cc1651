"""Training: the loop (:class:`Trainer`, :func:`fit`), the checkpoint format, the history, the
trainable-model protocol and the strategy that spreads steps over processes."""
from __future__ import annotations

from .checkpoint import (CHECKPOINT, CHECKPOINT_VERSION, checkpoint_position, resume_model,
                         schedule_from_config)
from .errors import DivergenceError, OutOfMemory, TrainingInterrupted
from .history import History, TrainState
from .order import epoch_permutation
from .protocol import TRAINABLE_MEMBERS, TrainableModel, missing_members
from .strategy import Batches, Sampler, SingleProcess, Strategy
from .trainer import Trainer, fit

__all__ = ["Trainer", "History", "TrainState", "fit", "epoch_permutation", "DivergenceError",
           "OutOfMemory", "TrainingInterrupted", "CHECKPOINT", "CHECKPOINT_VERSION",
           "checkpoint_position", "resume_model", "schedule_from_config", "TrainableModel",
           "TRAINABLE_MEMBERS", "missing_members", "Strategy", "Sampler", "SingleProcess",
           "Batches"]
