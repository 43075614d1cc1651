"""The training loop: shuffled mini-batches on the device, metrics, checkpoints, resume."""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from tqdm.auto import tqdm

from .backends.host import host_rng_state, set_host_rng_state, to_numpy
from .distributed import ShardedSampler, attach, resume_batch
from .io import CheckpointError, atomic_write_npz, read_npz
from .nn.model import Classifier, model_from_config
from .optim import Optimizer, Schedule

CHECKPOINT = "checkpoint.npz"


class DivergenceError(FloatingPointError):
    """The training loss became NaN or inf; the last good checkpoint is kept."""


class OutOfMemory(MemoryError):
    """The device ran out of memory during training; the message says what to change."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the current batch finished and a checkpoint was saved."""

    def __init__(self, message: str, checkpoint: Optional[Path]) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class History:
    """Per-epoch metrics and the learning curve (every ``eval_every`` batches), as floats."""

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
    """Where training stands: the next epoch, the batch within it, and its running sums."""

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    batches_seen: int = 0
    permutation: Any = None  # host copy, only while an epoch is in progress


class Trainer:
    """Trains a Classifier with an optimizer; see :func:`fit`."""

    def __init__(self, model: Classifier, optimizer: Optimizer, schedule: Optional[Schedule] = None,
                 batch_size: int = 128, eval_every: Optional[int] = None,
                 checkpoint_dir: Optional[str | os.PathLike] = None, progress: bool = True,
                 eval_subset: int = 10000, divergence_check_every: int = 25,
                 on_epoch_end: Optional[Callable[["Trainer"], None]] = None,
                 augment: Optional[Callable[[Any], Any]] = None, distributed: Any = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.model, self.optimizer = model, optimizer
        self.schedule = schedule or Schedule()
        self.base_lr = optimizer.lr
        self.batch_size = int(batch_size)
        self.eval_every = eval_every
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.progress = progress
        self.eval_subset = eval_subset
        self.check_every = max(int(divergence_check_every), 1)
        self.on_epoch_end = on_epoch_end
        self.augment = augment
        self.history = History()
        self.state = TrainState()
        self._stop_requested = False
        self._buffers: Optional[tuple[Any, Any]] = None
        # Data-parallel hook: distributed is a graphnet.distributed.World (None: one process).
        self.dist = distributed
        if distributed is not None:
            attach(self, distributed)

    # --- public -----------------------------------------------------------------------
    def fit(self, x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None,
            epochs: int = 10) -> History:
        """Train until ``epochs`` epochs are complete (counting any resumed ones)."""
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        b = self.model.backend
        X, Y = self.model.prepare(x_train), _labels(b, y_train)
        Xt = None if x_test is None else self.model.prepare(x_test)
        Yt = None if y_test is None else _labels(b, y_test)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"{X.shape[0]} training images but {Y.shape[0]} labels")
        with _sigint_finishes_batch(self):
            try:
                while self.state.epoch < epochs:
                    self._run_epoch(X, Y, Xt, Yt)
            except Exception as exc:
                if type(exc).__name__ != "OutOfMemoryError" and not isinstance(exc, MemoryError):
                    raise
                raise OutOfMemory(
                    f"out of memory on {self.model.backend.device_name()} with batch size "
                    f"{self.batch_size} (epoch {self.state.epoch + 1}, batch {self.state.batch + 1}): "
                    f"{exc}. Try a smaller batch size or a smaller network"
                    + ("; the last complete epoch is in the checkpoint" if self.checkpoint_dir else "")
                ) from exc
        return self.history

    def save_checkpoint(self, path: Optional[Path] = None) -> Path:
        """Write model, optimizer, RNG state, position and history atomically."""
        path = path or self._checkpoint_path()
        if self.dist is not None and not self.dist.is_root:
            return path  # only rank 0 writes (atomically)
        arrays = {f"model/{k}": v for k, v in self.model.host_arrays().items()}
        opt_arrays, opt_meta = self.optimizer.host_state()
        arrays.update({f"optim/{k}": v for k, v in opt_arrays.items()})
        st = self.state
        if st.permutation is not None:
            arrays["train/permutation"] = st.permutation
        meta = {"kind": "checkpoint", "model": self.model.config(), "optimizer": opt_meta,
                "base_lr": self.base_lr, "schedule": self.schedule.config(),
                "state": {"epoch": st.epoch, "batch": st.batch, "loss_sum": st.loss_sum,
                          "batches_seen": st.batches_seen,
                          "global_batch": self._sampler().global_batch},
                "rng": {"backend": self.model.backend.name,
                        "device": _jsonable(self.model.backend.rng_state()),
                        "host": _jsonable(host_rng_state())},
                "history": self.history.to_dict()}
        return atomic_write_npz(path, arrays, meta)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore everything :meth:`save_checkpoint` wrote (onto the active backend)."""
        arrays, meta = read_npz(path)
        if meta.get("kind") != "checkpoint":
            raise CheckpointError(f"{path}: is a saved model, not a training checkpoint")
        if meta["model"] != self.model.config():
            raise CheckpointError(f"{path}: was written for a different architecture: "
                                  f"{meta['model']['network']} vs {self.model.config()['network']}")
        self.model.load_host_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("model/")},
                                    str(path))
        self.optimizer.load_host_state(
            {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}, meta["optimizer"])
        self.base_lr = meta["base_lr"]
        s = meta["state"]
        perm = arrays.get("train/permutation")
        try:  # a different number of ranks (or batch size): the same sample position
            global_batch = self._sampler().global_batch
            batch = resume_batch(s["batch"], s.get("global_batch", global_batch), global_batch,
                                 str(path))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        self.state = TrainState(s["epoch"], batch, s["loss_sum"], s["batches_seen"], perm)
        set_host_rng_state(meta["rng"]["host"])
        if meta["rng"]["backend"] == self.model.backend.name:
            self.model.backend.set_rng_state(meta["rng"]["device"])
        self.history = History.from_dict(meta["history"])

    # --- one epoch --------------------------------------------------------------------
    def _run_epoch(self, X: Any, Y: Any, Xt: Any, Yt: Any) -> None:
        b, st = self.model.backend, self.state
        n = X.shape[0]
        sampler = self._sampler()
        n_batches = sampler.batches(n)
        if st.permutation is None:
            st.permutation = to_numpy(b.permutation(n))
            if self.dist is not None:  # every rank shuffles the same way
                st.permutation = self.dist.broadcast_array(st.permutation, "the epoch's permutation")
            st.batch, st.loss_sum = 0, 0.0
        perm = self._checked_permutation(b.asarray(st.permutation), X.shape[0])
        losses = b.xp.zeros(n_batches, dtype=X.dtype)
        start, t0 = st.batch, time.perf_counter()
        bar = tqdm(total=n_batches, initial=start, desc=f"epoch {st.epoch + 1}",
                   disable=not self.progress, leave=False, unit="batch")
        for i in range(start, n_batches):
            self._set_lr(st.epoch + i / n_batches)
            rows, _ = sampler.rows_at(perm, i * sampler.global_batch)
            xb, yb = self._batch(X, Y, rows)
            if self.augment is not None and rows.shape[0]:
                xb = self.augment(xb)
            losses[i] = self._step(xb, yb)
            st.batch, st.batches_seen = i + 1, st.batches_seen + 1
            bar.update(1)
            if (i + 1) % self.check_every == 0 or i + 1 == n_batches:
                self._check_finite(losses, start, i + 1)
            if self.eval_every and st.batches_seen % self.eval_every == 0:
                self._record_curve(X, Y, Xt, Yt, float(losses[i]))
            if self._stop_requested:
                st.loss_sum += float(losses[start:i + 1].sum())
                bar.close()
                self._interrupt()
        bar.close()
        st.loss_sum += float(losses[start:].sum())
        self._finish_epoch(X, Y, Xt, Yt, n_batches, time.perf_counter() - t0)

    @staticmethod
    def _checked_permutation(perm: Any, n: int) -> Any:
        if perm.shape != (n,) or perm.dtype.kind not in "iu" or (n and not (
                int(perm.min()) >= 0 and int(perm.max()) < n)):
            raise CheckpointError(f"the epoch's permutation (shape {tuple(perm.shape)}, dtype "
                                  f"{perm.dtype}) does not index {n} training images: was the "
                                  "checkpoint written for another training set?")
        return perm

    def _batch(self, X: Any, Y: Any, rows: Any) -> tuple[Any, Any]:
        """The batch ``X[rows], Y[rows]``, gathered into two arrays reused every step.

        No shuffled copy of the training set: the data is held once.
        """
        b, m = self.model.backend, rows.shape[0]
        buf = self._buffers
        if buf is None or buf[0].shape[1:] != X.shape[1:] or buf[0].shape[0] < m \
                or buf[0].dtype != X.dtype or buf[1].dtype != Y.dtype:
            size = max(m, self.batch_size)
            buf = self._buffers = (b.xp.empty((size,) + X.shape[1:], X.dtype),
                                   b.xp.empty((size,) + Y.shape[1:], Y.dtype))
        xb, yb = buf[0][:m], buf[1][:m]
        b.take_rows(X, rows, xb)
        b.take_rows(Y, rows, yb)
        return xb, yb

    def _step(self, xb: Any, yb: Any) -> Any:
        graph = self.model.train_graph
        feed = {self.model.images: xb, self.model.labels: yb}
        if self.dist is None:
            return self.optimizer.minimize(graph, feed)
        self.optimizer.stop_requested = self._stop_requested  # Ctrl-C: all ranks stop together
        cost = self.optimizer.minimize(graph, feed, samples=int(xb.shape[0]))
        self._stop_requested = self.optimizer.stop_agreed
        return cost

    def _sampler(self) -> ShardedSampler:
        """Data-parallel hook: a global batch is batch_size x ranks; this rank takes its part."""
        world = self.dist
        return ShardedSampler(self.batch_size, *((0, 1) if world is None else (world.rank, world.size)))

    def _evaluate(self, x: Any, y: Any) -> dict:
        if self.dist is None:
            return self.model.evaluate(x, y, prepared=True)
        return self.dist.evaluate(self.model, x, y)  # each rank a part, metrics reduced

    def _set_lr(self, epoch: float) -> None:
        self.optimizer.lr = self.base_lr * self.schedule(epoch)

    def _check_finite(self, losses: Any, start: int, stop: int) -> None:
        xp = self.model.backend.xp
        bad = ~xp.isfinite(losses[start:stop])
        if bool(bad.any()):
            first = start + int(bad.argmax())
            where = f"epoch {self.state.epoch + 1}, batch {first + 1}"
            kept = (f"; the last good checkpoint ({self._checkpoint_path()}) is untouched"
                    if self.checkpoint_dir else "")
            raise DivergenceError(f"training diverged: the loss became {float(losses[first])} at "
                                  f"{where} (lr={self.optimizer.lr:g}); lower the learning rate{kept}")

    def _finish_epoch(self, X: Any, Y: Any, Xt: Any, Yt: Any, n_batches: int, secs: float) -> None:
        st, h = self.state, self.history
        if self.dist is not None:  # e.g. BatchNorm statistics: the mean over the ranks
            self.dist.average_([p for p in self.model.named_arrays().values() if not p.trainable])
        train = self._evaluate(X[:self.eval_subset], Y[:self.eval_subset])
        h.epoch.append(st.epoch + 1)
        h.train_loss.append(st.loss_sum / n_batches)
        h.train_accuracy.append(train["accuracy"])
        if Xt is not None:
            test = self._evaluate(Xt, Yt)
            h.test_accuracy.append(test["accuracy"])
            h.test_loss.append(test["loss"])
        h.seconds.append(secs)
        h.lr.append(self.optimizer.lr)
        st.epoch, st.batch, st.loss_sum, st.permutation = st.epoch + 1, 0, 0.0, None
        if self.progress:
            tail = f", test accuracy {h.test_accuracy[-1]:.4f}" if Xt is not None else ""
            tqdm.write(f"epoch {st.epoch}: train loss {h.train_loss[-1]:.4f}{tail} ({secs:.1f} s)")
        if self.checkpoint_dir:
            self.save_checkpoint()
        if self.on_epoch_end:
            self.on_epoch_end(self)

    def _record_curve(self, X: Any, Y: Any, Xt: Any, Yt: Any, batch_loss: float) -> None:
        h = self.history
        train = self._evaluate(X[:2000], Y[:2000])
        h.curve_batches.append(self.state.batches_seen)
        h.curve_train_accuracy.append(train["accuracy"])
        h.curve_train_loss.append(train["loss"])
        if Xt is not None:
            test = self._evaluate(Xt[:2000], Yt[:2000])
            h.curve_test_accuracy.append(test["accuracy"])
            h.curve_test_loss.append(test["loss"])

    def _interrupt(self) -> None:
        path = self.save_checkpoint() if self.checkpoint_dir else None
        st = self.state
        where = f"epoch {st.epoch + 1}, batch {st.batch}"
        msg = (f"interrupted after {where}; saved {path}: resume with --resume {path.parent}"
               if path else f"interrupted after {where} (no checkpoint directory, nothing saved)")
        raise TrainingInterrupted(msg, path)

    def _checkpoint_path(self) -> Path:
        return (self.checkpoint_dir or Path(".")) / CHECKPOINT


def _labels(b: Any, y: Any) -> Any:
    y = y if b.is_array(y) else b.asarray(to_numpy(y))
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return y.astype(b.xp.int64)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


class _sigint_finishes_batch:
    """While active, Ctrl-C asks the trainer to stop after the current batch (twice: at once)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.trainer._stop_requested:
            raise KeyboardInterrupt
        self.trainer._stop_requested = True

    def __enter__(self) -> "_sigint_finishes_batch":
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        self.trainer._stop_requested = False


def resume_model(path: str | os.PathLike) -> Classifier:
    """An untrained Classifier with the architecture a checkpoint was written for."""
    _, meta = read_npz(path)
    return model_from_config(meta["model"], str(path))


def fit(model: Classifier, optimizer: Optimizer, x_train: Any, y_train: Any, x_test: Any = None,
        y_test: Any = None, epochs: int = 10, **kwargs: Any) -> History:
    """Train ``model`` (see :class:`Trainer` for the options) and return its History."""
    return Trainer(model, optimizer, **kwargs).fit(x_train, y_train, x_test, y_test, epochs)


__all__ = ["Trainer", "History", "fit", "DivergenceError", "OutOfMemory", "TrainingInterrupted", "CHECKPOINT",
           "resume_model"]
