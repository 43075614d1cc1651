"""The training loop: keyed shuffles, mini-batches on the device, metrics, checkpoints, resume.

Training randomness is a pure function of ``(seed, epoch, sample offset)``: the epoch's order
comes from :func:`~graphnet.training.order.epoch_permutation` and each step passes
``rng_key=(seed, epoch, offset)`` to the optimizer (dropout) and the augmentation. A
checkpoint therefore needs no generator state, and a resumed run equals an uninterrupted one
on every backend, whenever checkpoints were written. The position within an epoch is counted
in samples, so the batch size may change on resume. How the steps are spread over processes
is the :class:`~graphnet.training.strategy.Strategy`'s business, not the loop's.
"""
from __future__ import annotations

import inspect
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from ..backends.host import to_numpy
from ..checks import flag, positive_int
from ..errors import ArgumentError, ArgumentTypeError
from ..hints import Array, Data, PathLike, RngKey
from ..io import CheckpointError, check_path
from ..optim import NonFiniteCostError, Optimizer, Schedule
from . import checkpoint
from .checkpoint import CHECKPOINT
from .errors import DivergenceError, OutOfMemory, TrainingInterrupted, is_out_of_memory, root_cause
from .history import History, TrainState
from .order import checked_seed, default_seed, epoch_permutation, is_int
from .protocol import TrainableModel, missing_members
from .signals import sigint_finishes_batch
from .strategy import SingleProcess, Strategy


class Trainer:
    """Trains a model (any :class:`~graphnet.nn.TrainableModel`, e.g. a Classifier) with an
    optimizer; see :func:`fit`.

    ``seed`` keys the shuffles, dropout masks and augmentation (default: the value last given
    to ``gn.seed``, else 0). ``augment(xb)`` or ``augment(xb, rng_key=...)`` transforms each batch.
    Every ``eval_every`` batches (None: never) a learning-curve point evaluates the first
    ``curve_subset`` training and test images; each epoch ends with an evaluation of the
    first ``eval_subset`` training images and the whole test set.

    ``strategy`` spreads the steps over processes (default: :class:`SingleProcess`), e.g.
    ``graphnet.distributed.DataParallel(world)``; ``distributed=world`` (deprecated) means
    ``world.data_parallel()``.
    """

    def __init__(self, model: TrainableModel, optimizer: Optimizer, schedule: Optional[Schedule] = None,
                 batch_size: int = 128, eval_every: Optional[int] = None,
                 checkpoint_dir: Optional[PathLike] = None, progress: bool = True,
                 eval_subset: int = 10000, curve_subset: int = 2000,
                 divergence_check_every: int = 25,
                 on_epoch_end: Optional[Callable[["Trainer"], None]] = None,
                 augment: Optional[Callable[..., Array]] = None, seed: Optional[int] = None,
                 strategy: Optional[Strategy] = None, distributed: Any = None) -> None:
        missing = missing_members(model)
        if missing:
            raise TypeError(f"model: expected a TrainableModel (a loss graph, its inputs, prepare, "
                            f"evaluate, ... like nn.Classifier), got {type(model).__name__}, "
                            f"which lacks {', '.join(missing)}")
        _check_parts(optimizer, schedule, on_epoch_end=on_epoch_end, augment=augment)
        self.model, self.optimizer = model, optimizer
        self.batch_size = positive_int(batch_size, "batch_size")
        self.schedule = schedule or Schedule()
        self.base_lr = optimizer.lr
        self.schedule_from = 0.0
        self.seed = checked_seed(default_seed() if seed is None else seed)
        self.eval_every = None if eval_every is None else positive_int(eval_every, "eval_every")
        self.checkpoint_dir = (None if checkpoint_dir is None
                               else check_path(checkpoint_dir, "checkpoint_dir"))
        self.progress = flag(progress, "progress")
        self.eval_subset = positive_int(eval_subset, "eval_subset")
        self.curve_subset = positive_int(curve_subset, "curve_subset")
        self.check_every = positive_int(divergence_check_every, "divergence_check_every")
        self.on_epoch_end = on_epoch_end
        self.augment = augment
        self.history = History()
        self.state = TrainState()
        self.stop_requested = False  # set by Ctrl-C (see signals), read by the strategy
        self._buffers: Optional[tuple[Array, Array]] = None
        self.keyed_step = _accepts(optimizer.minimize, "rng_key")
        self._keyed_augment = augment is not None and _accepts(augment, "rng_key")
        if distributed is not None:
            warnings.warn("Trainer(distributed=world) is deprecated: pass "
                          "strategy=graphnet.distributed.DataParallel(world)",
                          DeprecationWarning, stacklevel=2)
            if not callable(getattr(distributed, "data_parallel", None)):
                raise ArgumentTypeError(f"distributed: expected a graphnet.distributed.World, "
                                        f"got {type(distributed).__name__}")
            strategy = strategy or distributed.data_parallel()
        self.strategy: Strategy = _checked_strategy(strategy or SingleProcess())
        self.strategy.attach(self)

    # --- public -----------------------------------------------------------------------
    def fit(self, x_train: Data, y_train: Data, x_test: Optional[Data] = None,
            y_test: Optional[Data] = None,
            epochs: int = 10) -> History:
        """Train until ``epochs`` epochs are complete (counting any resumed ones)."""
        st = self.state
        if not is_int(epochs) or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
        if st.sample and epochs <= st.epoch:
            raise ValueError(f"epochs={epochs}, but the run is already part-way through epoch "
                             f"{st.epoch + 1}: give epochs >= {st.epoch + 1}")
        if (x_test is None) != (y_test is None):
            raise ValueError("give both x_test and y_test, or neither")
        m = self.model
        X = m.prepare(x_train)
        Y = m.prepare_targets(y_train, X.shape[0], "y_train")
        Xt = None if x_test is None else m.prepare(x_test)
        Yt = None if y_test is None else m.prepare_targets(y_test, Xt.shape[0], "y_test")
        n = X.shape[0]
        for name, data in (("x_train", X), ("x_test", Xt)):
            if data is not None and data.shape[0] == 0:
                raise ArgumentError(f"{name}: no images (shape {tuple(data.shape)}): there is "
                                    "nothing to train on or evaluate")
        if st.sample and st.n != n:
            raise CheckpointError(f"the run stopped part-way through an epoch of {st.n} training "
                                  f"images, but is resumed on {n}: was the checkpoint written "
                                  "for another training set?")
        st.n = n
        self._note_segment()
        with sigint_finishes_batch(self):
            try:
                while st.epoch < epochs:
                    self._run_epoch(X, Y, Xt, Yt)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                raise OutOfMemory(
                    f"out of memory on {self.model.backend.device_name()} with batch size "
                    f"{self.batch_size} (epoch {st.epoch + 1}, sample {st.sample}): "
                    f"{root_cause(exc)}. Try a smaller batch size or a smaller network"
                    + ("; the last complete epoch is in the checkpoint" if self.checkpoint_dir else "")
                ) from exc
        return self.history

    def replan(self, *, batch_size: Optional[int] = None, lr: Optional[float] = None,
               schedule: Optional[Schedule] = None) -> list[str]:
        """Change settings from the current position on; return what changed, in words.

        ``batch_size`` applies from the next sample of the epoch in progress. ``lr`` or
        ``schedule`` start a new schedule segment here: the rate becomes
        ``lr * schedule(epochs since here)``; a missing one keeps its current value.
        Every change is recorded in ``history.segments``.
        """
        _check_parts(self.optimizer, schedule)
        notes, st = [], self.state
        where = f"epoch {st.epoch + 1}, sample {st.sample}" + (f" of {st.n}" if st.n else "")
        if batch_size is not None and batch_size != self.batch_size:
            notes.append(f"batch size {self.batch_size} -> {batch_size} from {where}")
            self.batch_size = positive_int(batch_size, "batch_size")
        if lr is not None or schedule is not None:
            if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
                raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
            was = self.current_lr()
            self.base_lr = float(lr) if lr is not None else self.base_lr
            self.schedule = schedule or self.schedule
            self.schedule_from = st.position
            notes.append(f"learning rate re-planned from {where} (after {st.position:.4g} "
                         f"epochs): {self.base_lr:g} x {_describe(self.schedule)} from here "
                         f"(the rate there was {was:.4g})")
        self._note_segment()
        return notes

    def current_lr(self) -> float:
        """The learning rate of the next step."""
        return self.base_lr * self.schedule(max(self.state.position - self.schedule_from, 0.0))

    def save_checkpoint(self, path: Optional[Path] = None) -> Path:
        """Write model, optimizer, position, run settings and history atomically (when this
        process is the strategy's writer; the path either way)."""
        path = path or self._checkpoint_path()
        return checkpoint.write(self, path) if self.strategy.writes else path

    def load_checkpoint(self, path: PathLike) -> None:
        """Restore everything :meth:`save_checkpoint` wrote (onto the active backend).

        The run's settings (seed, batch size, learning rate, schedule) are restored as they
        were; change them afterwards with :meth:`replan`.
        """
        checkpoint.read(self, path)

    # --- one epoch --------------------------------------------------------------------
    def _epoch_rows(self, epoch: int) -> np.ndarray:
        """The training rows of ``epoch``, in order (host int64)."""
        return epoch_permutation(self.seed, epoch, self.state.n)

    def _run_epoch(self, X: Array, Y: Array, Xt: Optional[Array], Yt: Optional[Array]) -> None:
        b, st = self.model.backend, self.state
        n = st.n
        sampler = self.strategy.sampler(self.batch_size)
        bs = sampler.global_batch
        rows = b.asarray(self._epoch_rows(st.epoch))
        starts = range(st.sample, n, bs)
        losses = b.xp.zeros(len(starts), dtype=X.dtype)
        counts = [min(bs, n - s) for s in starts]
        sizes = np.array(counts, dtype=np.float64)
        t0 = time.perf_counter()
        bar = tqdm(total=n, initial=st.sample, desc=f"epoch {st.epoch + 1}", leave=False,
                   unit="img", disable=None if self.progress else True)
        for i, s in enumerate(starts):
            self._set_lr(st.epoch + s / n)
            part, first = sampler.rows_at(rows, s)
            key = (self.seed, st.epoch, first)
            xb, yb = self._batch(X, Y, part)
            if self.augment is not None and part.shape[0]:
                xb = self.augment(xb, rng_key=key) if self._keyed_augment else self.augment(xb)
            try:
                losses[i], stop = self._step(xb, yb, key)
            except NonFiniteCostError as exc:  # refused on the host before any update
                raise self._diverged(s, exc.cost) from exc
            st.sample, st.batches_seen = s + counts[i], st.batches_seen + 1
            bar.update(counts[i])
            if (i + 1) % self.check_every == 0 or i + 1 == len(starts):
                self._check_finite(losses, starts, i + 1)
            if self.eval_every and st.batches_seen % self.eval_every == 0:
                self._record_curve(X, Y, Xt, Yt)
            if stop:
                st.loss_sum += self._weighted_sum(losses, sizes, i + 1)
                bar.close()
                self._interrupt()
        bar.close()
        st.loss_sum += self._weighted_sum(losses, sizes, len(starts))
        self._finish_epoch(X, Y, Xt, Yt, time.perf_counter() - t0)

    def _weighted_sum(self, losses: Array, sizes: np.ndarray, stop: int) -> float:
        """Sum of the first ``stop`` batch losses times their batch sizes (one host read)."""
        if stop == 0:
            return 0.0
        return float(to_numpy(losses[:stop]).astype(np.float64) @ sizes[:stop])

    def _batch(self, X: Array, Y: Array, rows: Array) -> tuple[Array, Array]:
        """The batch ``X[rows], Y[rows]``, gathered into two arrays reused every step.

        No shuffled copy of the training set: the data is held once.
        """
        b, m = self.model.backend, rows.shape[0]
        buf = self._buffers
        if buf is None or buf[0].shape[1:] != X.shape[1:] or buf[0].shape[0] < m \
                or buf[0].dtype != X.dtype or buf[1].dtype != Y.dtype:
            size = max(m, min(self.batch_size, self.state.n or m))  # never above the data
            buf = self._buffers = (b.xp.empty((size,) + X.shape[1:], X.dtype),
                                   b.xp.empty((size,) + Y.shape[1:], Y.dtype))
        xb, yb = buf[0][:m], buf[1][:m]
        b.take_rows(X, rows, xb)
        b.take_rows(Y, rows, yb)
        return xb, yb

    def _step(self, xb: Array, yb: Array, rng_key: RngKey) -> tuple[Array, bool]:
        data, targets = self.model.inputs
        return self.strategy.step(self.optimizer, self.model.train_graph, {data: xb, targets: yb},
                                  rng_key if self.keyed_step else None, int(xb.shape[0]),
                                  lambda: self.stop_requested)

    def _evaluate(self, x: Array, y: Array) -> dict[str, float]:
        return self.strategy.evaluate(self.model, x, y)

    def _set_lr(self, epoch: float) -> None:
        self.optimizer.lr = self.base_lr * self.schedule(max(epoch - self.schedule_from, 0.0))

    def _check_finite(self, losses: Array, starts: range, stop: int) -> None:
        xp, check_from = self.model.backend.xp, max(stop - self.check_every, 0)
        bad = ~xp.isfinite(losses[check_from:stop])
        if bool(bad.any()):
            first = check_from + int(bad.argmax())
            raise self._diverged(starts[first], float(losses[first]))

    def _diverged(self, s: int, loss: float) -> DivergenceError:
        """The error for a loss of ``loss`` at the batch starting at sample ``s``."""
        where = (f"epoch {self.state.epoch + 1}, batch {s // self.batch_size + 1} "
                 f"(samples {s}-{min(s + self.batch_size, self.state.n) - 1})")
        kept = (f"; the last good checkpoint ({self._checkpoint_path()}) is untouched"
                if self.checkpoint_dir else "")
        return DivergenceError(f"training diverged: the loss became {loss} at {where} "
                               f"(lr={self.optimizer.lr:g}); lower the learning rate{kept}")

    def _finish_epoch(self, X: Array, Y: Array, Xt: Optional[Array], Yt: Optional[Array],
                      secs: float) -> None:
        st, h = self.state, self.history
        self.strategy.end_epoch(self.model)  # e.g. BatchNorm statistics agreed between processes
        train = self._evaluate(X[:self.eval_subset], Y[:self.eval_subset])
        h.epoch.append(st.epoch + 1)
        h.train_loss.append(st.loss_sum / st.n)
        h.train_accuracy.append(train.get("accuracy", math.nan))
        if Xt is not None:
            test = self._evaluate(Xt, Yt)
            h.test_accuracy.append(test.get("accuracy", math.nan))
            h.test_loss.append(test["loss"])
        h.seconds.append(secs)
        h.lr.append(self.optimizer.lr)
        st.epoch, st.sample, st.loss_sum = st.epoch + 1, 0, 0.0
        if self.progress:
            tail = f", test accuracy {h.test_accuracy[-1]:.4f}" if Xt is not None else ""
            tqdm.write(f"epoch {st.epoch}: train loss {h.train_loss[-1]:.4f}{tail} ({secs:.1f} s)")
        if self.checkpoint_dir:
            self.save_checkpoint()
        if self.on_epoch_end:
            self.on_epoch_end(self)

    def _record_curve(self, X: Array, Y: Array, Xt: Optional[Array], Yt: Optional[Array]) -> None:
        h = self.history
        k = self.curve_subset
        train = self._evaluate(X[:k], Y[:k])
        h.curve_batches.append(self.state.batches_seen)
        h.curve_train_accuracy.append(train["accuracy"])
        h.curve_train_loss.append(train["loss"])
        if Xt is not None:
            test = self._evaluate(Xt[:k], Yt[:k])
            h.curve_test_accuracy.append(test["accuracy"])
            h.curve_test_loss.append(test["loss"])

    def _interrupt(self) -> None:
        path = self.save_checkpoint() if self.checkpoint_dir else None
        st = self.state
        where = f"epoch {st.epoch + 1}, sample {st.sample} of {st.n}"
        msg = (f"interrupted at {where}; saved {path}: resume with --resume {path.parent}"
               if path else f"interrupted at {where} (no checkpoint directory, nothing saved)")
        raise TrainingInterrupted(msg, path)

    def _checkpoint_path(self) -> Path:
        return (self.checkpoint_dir or Path(".")) / CHECKPOINT

    # --- settings and their history ---------------------------------------------------
    def _segment(self) -> dict[str, Any]:
        return {"from_epoch": self.state.position, "batch_size": self.batch_size,
                "lr": self.base_lr, "schedule": self.schedule.config(),
                "schedule_from": self.schedule_from}

    def _note_segment(self) -> None:
        """Record the current settings in ``history.segments`` if they changed."""
        seg, segs = self._segment(), self.history.segments
        if segs and {k: v for k, v in segs[-1].items() if k != "from_epoch"} == \
                {k: v for k, v in seg.items() if k != "from_epoch"}:
            return
        if segs and segs[-1]["from_epoch"] == seg["from_epoch"]:
            segs.pop()  # replaced before any step was taken with it
        segs.append(seg)


def fit(model: TrainableModel, optimizer: Optimizer, x_train: Data, y_train: Data,
        x_test: Optional[Data] = None, y_test: Optional[Data] = None, epochs: int = 10,
        **kwargs: Any) -> History:
    """Train ``model`` (see :class:`Trainer` for the options) and return its History."""
    return Trainer(model, optimizer, **kwargs).fit(x_train, y_train, x_test, y_test, epochs)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _check_parts(optimizer: Any, schedule: Any, **hooks: Any) -> None:
    """TypeError naming the first of the Trainer's parts that is not what it must be."""
    if not isinstance(optimizer, Optimizer):
        raise ArgumentTypeError(f"optimizer: expected a graphnet.optim.Optimizer (e.g. "
                                f"optim.SGD(model.parameters(), lr=0.1)), got "
                                f"{type(optimizer).__name__} {optimizer!r:.60}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise ArgumentTypeError(f"schedule: expected a graphnet.optim.Schedule (e.g. "
                                f"optim.make_schedule('cosine', epochs)) or None, got "
                                f"{type(schedule).__name__} {schedule!r:.60}")
    for name, hook in hooks.items():
        if hook is not None and not callable(hook):
            raise ArgumentTypeError(f"{name}: expected a function or None, got "
                                    f"{type(hook).__name__} {hook!r:.60}")


def _checked_strategy(strategy: Any) -> Strategy:
    """``strategy`` if it has every member of :class:`Strategy` (ArgumentTypeError naming the rest)."""
    members = ("writes", "attach", "sampler", "step", "evaluate", "end_epoch")
    missing = [m for m in members if not hasattr(strategy, m)
               or (m != "writes" and not callable(getattr(strategy, m)))]
    if missing:
        raise ArgumentTypeError(f"strategy: expected a Strategy (e.g. SingleProcess() or "
                                f"graphnet.distributed.DataParallel(world)), got "
                                f"{type(strategy).__name__}, which lacks {', '.join(missing)}")
    return strategy


def _describe(schedule: Schedule) -> str:
    cfg = schedule.config()
    if cfg.get("type") == "cosine":
        return f"cosine to {cfg['floor']:g} over {cfg['epochs']:.4g} epochs"
    if cfg.get("type") == "step":
        return f"x{cfg['gamma']:g} every {cfg['step_size']} epochs"
    return "constant" if cfg.get("type") == "constant" else repr(cfg)


__all__ = ["Trainer", "fit"]
