"""What a run records: per-epoch metrics, the learning curve and settings (:class:`History`),
and where it stands (:class:`TrainState`)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class History:
    """Per-epoch metrics, the learning curve (every ``eval_every`` batches) and the settings used.

    ``segments``: one entry per stretch of training with the same settings, from the position
    (in epochs) where it began: ``{"from_epoch", "batch_size", "lr", "schedule", "schedule_from"}``;
    the learning rate there is ``lr * schedule(position - schedule_from)``.
    """

    epoch: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    train_accuracy: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    curve_batches: list = field(default_factory=list)
    curve_train_accuracy: list = field(default_factory=list)
    curve_test_accuracy: list = field(default_factory=list)
    curve_train_loss: list = field(default_factory=list)
    curve_test_loss: list = field(default_factory=list)
    segments: list = field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "History":
        h = cls()
        for k, v in d.items():
            if hasattr(h, k):
                setattr(h, k, list(v))
        return h


@dataclass
class TrainState:
    """Where training stands: the epoch in progress, how many of its samples are done, running sums.

    ``epoch`` counts complete epochs (0-based index of the one in progress); ``sample`` is the
    number of samples of that epoch already trained on; ``n`` the size of the training set
    it was trained on; ``loss_sum`` the sum of the batch losses weighted by batch rows.
    """

    epoch: int = 0
    sample: int = 0
    n: int = 0
    loss_sum: float = 0.0
    batches_seen: int = 0

    @property
    def position(self) -> float:
        """Progress in epochs (e.g. 2.25: a quarter into the third epoch)."""
        return self.epoch + (self.sample / self.n if self.n else 0.0)


__all__ = ["History", "TrainState"]
