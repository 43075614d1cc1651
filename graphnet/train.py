"""The training loop: keyed shuffles, mini-batches on the device, metrics, checkpoints, resume.

Training randomness is a pure function of ``(seed, epoch, sample offset)``: the epoch's order
comes from :func:`epoch_permutation` and each step passes ``rng_key=(seed, epoch, offset)`` to
the optimizer (dropout) and the augmentation. A checkpoint therefore needs no generator state,
and a resumed run equals an uninterrupted one on every backend, whenever checkpoints were written.
The position within an epoch is counted in samples, so the batch size may change on resume.
"""
from __future__ import annotations

import inspect
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from .backends.host import to_numpy
from .distributed import ShardedSampler, World, attach
from .errors import RunError
from .graph_checks import out_of_memory
from .io import CheckpointError, atomic_write_npz, read_npz
from .nn.model import Classifier, TrainableModel, missing_members, model_from_config
from .hints import Array, Data, PathLike, RngKey
from .optim import CosineLR, Optimizer, Schedule, StepLR

CHECKPOINT = "checkpoint.npz"
# 1: position in batches, the epoch's permutation and the generators' states saved.
# 2: position in samples, keyed randomness (seed saved), run settings and their segments.
CHECKPOINT_VERSION = 2
_MAX_KEY = 2**64


class DivergenceError(FloatingPointError):
    """The training loss became NaN or inf; the last good checkpoint is kept."""


class OutOfMemory(MemoryError):
    """The device ran out of memory during training; the message says what to change."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the current batch finished and a checkpoint was saved."""

    def __init__(self, message: str, checkpoint: Optional[Path]) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order (int64 indices, a permutation of ``range(n)``) of the training samples in ``epoch``.

    A pure function of its arguments, computed on the host from the raw Philox stream keyed
    by ``(seed, epoch)``: identical on every backend and in every resumed run.
    """
    for name, v in (("seed", seed), ("epoch", epoch)):
        if not _is_int(v) or not 0 <= v < _MAX_KEY:
            raise ValueError(f"{name} must be an integer in [0, 2**64), got {v!r}")
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    bits = np.random.Philox(key=np.array([seed, epoch], dtype=np.uint64)).random_raw(int(n))
    return _stable_order(bits)


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` as int64, for a 1-d array.

    Distinct keys (64 random bits almost always are) have one sorted order, which the
    faster unstable sort finds too (about 5x faster on 60000 keys); only ties need the
    stable sort, and they get it.
    """
    order = np.argsort(keys, kind="quicksort")
    ranked = keys[order]
    if not (ranked[1:] > ranked[:-1]).all():  # a tie: its order is the stable sort's to decide
        order = np.argsort(keys, kind="stable")
    return order.astype(np.int64, copy=False)


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


class Trainer:
    """Trains a model (any :class:`~graphnet.nn.TrainableModel`, e.g. a Classifier) with an
    optimizer; see :func:`fit`.

    ``seed`` keys the shuffles, dropout masks and augmentation (default: the value last given
    to ``gn.seed``, else 0). ``augment(xb)`` or ``augment(xb, rng_key=...)`` transforms each batch.
    Every ``eval_every`` batches (None: never) a learning-curve point evaluates the first
    ``curve_subset`` training and test images; each epoch ends with an evaluation of the
    first ``eval_subset`` training images and the whole test set.
    """

    def __init__(self, model: TrainableModel, optimizer: Optimizer, schedule: Optional[Schedule] = None,
                 batch_size: int = 128, eval_every: Optional[int] = None,
                 checkpoint_dir: Optional[PathLike] = None, progress: bool = True,
                 eval_subset: int = 10000, curve_subset: int = 2000,
                 divergence_check_every: int = 25,
                 on_epoch_end: Optional[Callable[["Trainer"], None]] = None,
                 augment: Optional[Callable[..., Array]] = None, seed: Optional[int] = None,
                 distributed: Optional[World] = None) -> None:
        missing = missing_members(model)
        if missing:
            raise TypeError(f"model: expected a TrainableModel (a loss graph, its inputs, prepare, "
                            f"evaluate, ... like nn.Classifier), got {type(model).__name__}, "
                            f"which lacks {', '.join(missing)}")
        self.model, self.optimizer = model, optimizer
        self.batch_size = _checked_positive("batch_size", batch_size)
        self.schedule = schedule or Schedule()
        self.base_lr = optimizer.lr
        self.schedule_from = 0.0
        self.seed = _checked_seed(_default_seed() if seed is None else seed)
        self.eval_every = eval_every
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.progress = progress
        self.eval_subset = eval_subset
        self.curve_subset = _checked_positive("curve_subset", curve_subset)
        self.check_every = max(int(divergence_check_every), 1)
        self.on_epoch_end = on_epoch_end
        self.augment = augment
        self.history = History()
        self.state = TrainState()
        self._stop_requested = False
        self._buffers: Optional[tuple[Array, Array]] = None
        self._keyed_step = _accepts(optimizer.minimize, "rng_key")
        self._keyed_augment = augment is not None and _accepts(augment, "rng_key")
        # Data-parallel hook: distributed is a graphnet.distributed.World (None: one process).
        self.dist = distributed
        if distributed is not None:
            attach(self, distributed)

    # --- public -----------------------------------------------------------------------
    def fit(self, x_train: Data, y_train: Data, x_test: Optional[Data] = None,
            y_test: Optional[Data] = None,
            epochs: int = 10) -> History:
        """Train until ``epochs`` epochs are complete (counting any resumed ones)."""
        st = self.state
        if not _is_int(epochs) or epochs < 0:
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
        if st.sample and st.n != n:
            raise CheckpointError(f"the run stopped part-way through an epoch of {st.n} training "
                                  f"images, but is resumed on {n}: was the checkpoint written "
                                  "for another training set?")
        st.n = n
        self._note_segment()
        with _sigint_finishes_batch(self):
            try:
                while st.epoch < epochs:
                    self._run_epoch(X, Y, Xt, Yt)
            except Exception as exc:
                if not _is_out_of_memory(exc):
                    raise
                raise OutOfMemory(
                    f"out of memory on {self.model.backend.device_name()} with batch size "
                    f"{self.batch_size} (epoch {st.epoch + 1}, sample {st.sample}): "
                    f"{_root_cause(exc)}. Try a smaller batch size or a smaller network"
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
        notes, st = [], self.state
        where = f"epoch {st.epoch + 1}, sample {st.sample}" + (f" of {st.n}" if st.n else "")
        if batch_size is not None and batch_size != self.batch_size:
            notes.append(f"batch size {self.batch_size} -> {batch_size} from {where}")
            self.batch_size = _checked_positive("batch_size", batch_size)
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
        """Write model, optimizer, position, run settings and history atomically."""
        path = path or self._checkpoint_path()
        if self.dist is not None and not self.dist.is_root:
            return path  # only rank 0 writes (atomically)
        arrays = {f"model/{k}": v for k, v in self.model.host_arrays().items()}
        opt_arrays, opt_meta = self.optimizer.host_state()
        arrays.update({f"optim/{k}": v for k, v in opt_arrays.items()})
        st = self.state
        meta = {"kind": "checkpoint", "checkpoint_version": CHECKPOINT_VERSION,
                "model": self.model.config(), "optimizer": opt_meta,
                "run": {"seed": self.seed, "batch_size": self.batch_size, "base_lr": self.base_lr,
                        "schedule": self.schedule.config(), "schedule_from": self.schedule_from},
                "state": {"epoch": st.epoch, "sample": st.sample, "n": st.n,
                          "loss_sum": st.loss_sum, "batches_seen": st.batches_seen},
                "history": self.history.to_dict()}
        if not self._keyed_step:
            # an engine without rng_key draws dropout from the device generator: keep its state
            b = self.model.backend
            meta["rng"] = {"backend": b.name, "device": _jsonable(b.rng_state())}
        return atomic_write_npz(path, arrays, meta)

    def load_checkpoint(self, path: PathLike) -> None:
        """Restore everything :meth:`save_checkpoint` wrote (onto the active backend).

        The run's settings (seed, batch size, learning rate, schedule) are restored as they
        were; change them afterwards with :meth:`replan`.
        """
        arrays, meta = read_npz(path)
        if meta.get("kind") != "checkpoint":
            raise CheckpointError(f"{path}: is a saved model, not a training checkpoint")
        meta = _current_format(meta, path)
        if meta["model"] != self.model.config():
            raise CheckpointError(f"{path}: was written for a different architecture: "
                                  f"{meta['model'].get('network')} vs "
                                  f"{self.model.config()['network']}")
        self.model.load_host_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("model/")},
                                    str(path))
        try:
            self.optimizer.load_host_state(
                {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}, meta["optimizer"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: optimizer state does not fit: {exc}") from None
        try:
            self._restore(meta, path)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path}: malformed checkpoint metadata ({exc!r})") from None

    # --- one epoch --------------------------------------------------------------------
    def _epoch_rows(self, epoch: int) -> np.ndarray:
        """The training rows of ``epoch``, in order (host int64)."""
        return epoch_permutation(self.seed, epoch, self.state.n)

    def _run_epoch(self, X: Array, Y: Array, Xt: Optional[Array], Yt: Optional[Array]) -> None:
        b, st = self.model.backend, self.state
        n = st.n
        sampler = self._sampler()
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
            losses[i] = self._step(xb, yb, key)
            st.sample, st.batches_seen = s + counts[i], st.batches_seen + 1
            bar.update(counts[i])
            if (i + 1) % self.check_every == 0 or i + 1 == len(starts):
                self._check_finite(losses, starts, i + 1)
            if self.eval_every and st.batches_seen % self.eval_every == 0:
                self._record_curve(X, Y, Xt, Yt)
            if self._stop_requested:
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
            size = max(m, self.batch_size)
            buf = self._buffers = (b.xp.empty((size,) + X.shape[1:], X.dtype),
                                   b.xp.empty((size,) + Y.shape[1:], Y.dtype))
        xb, yb = buf[0][:m], buf[1][:m]
        b.take_rows(X, rows, xb)
        b.take_rows(Y, rows, yb)
        return xb, yb

    def _step(self, xb: Array, yb: Array, rng_key: RngKey) -> Array:
        data, targets = self.model.inputs
        graph, feed = self.model.train_graph, {data: xb, targets: yb}
        if self.dist is not None:
            self.optimizer.stop_requested = self._stop_requested  # Ctrl-C: all ranks stop together
            cost = self.optimizer.minimize(graph, feed, rng_key=rng_key if self._keyed_step else None,
                                           samples=int(xb.shape[0]))
            self._stop_requested = self.optimizer.stop_agreed
            return cost
        if self._keyed_step:
            return self.optimizer.minimize(graph, feed, rng_key=rng_key)
        return self.optimizer.minimize(graph, feed)

    def _sampler(self) -> ShardedSampler:
        """Data-parallel hook: a global batch is batch_size x ranks; this rank takes its part."""
        world = self.dist
        return ShardedSampler(self.batch_size, *((0, 1) if world is None else (world.rank, world.size)))

    def _evaluate(self, x: Array, y: Array) -> dict[str, float]:
        if self.dist is None:
            return self.model.evaluate(x, y, prepared=True)
        return self.dist.evaluate(self.model, x, y)  # each rank a part, metrics reduced

    def _set_lr(self, epoch: float) -> None:
        self.optimizer.lr = self.base_lr * self.schedule(max(epoch - self.schedule_from, 0.0))

    def _check_finite(self, losses: Array, starts: range, stop: int) -> None:
        xp, check_from = self.model.backend.xp, max(stop - self.check_every, 0)
        bad = ~xp.isfinite(losses[check_from:stop])
        if bool(bad.any()):
            first = check_from + int(bad.argmax())
            s = starts[first]
            where = (f"epoch {self.state.epoch + 1}, batch {s // self.batch_size + 1} "
                     f"(samples {s}-{min(s + self.batch_size, self.state.n) - 1})")
            kept = (f"; the last good checkpoint ({self._checkpoint_path()}) is untouched"
                    if self.checkpoint_dir else "")
            raise DivergenceError(f"training diverged: the loss became {float(losses[first])} at "
                                  f"{where} (lr={self.optimizer.lr:g}); lower the learning rate{kept}")

    def _finish_epoch(self, X: Array, Y: Array, Xt: Optional[Array], Yt: Optional[Array],
                      secs: float) -> None:
        st, h = self.state, self.history
        if self.dist is not None:  # e.g. BatchNorm statistics: the mean over the ranks
            self.dist.average_([p for p in self.model.named_arrays().values() if not p.trainable])
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

    def _restore(self, meta: dict[str, Any], path: PathLike) -> None:
        run, s = meta["run"], meta["state"]
        self.seed = _checked_seed(run.get("seed", self.seed))
        self.batch_size = _checked_positive("batch_size", run.get("batch_size", self.batch_size))
        self.base_lr = float(run["base_lr"])
        if self.schedule.config() != run["schedule"]:
            self.schedule = schedule_from_config(run["schedule"], path)
        self.schedule_from = float(run["schedule_from"])
        self.state = TrainState(int(s["epoch"]), int(s["sample"]), int(s["n"]),
                                float(s["loss_sum"]), int(s["batches_seen"]))
        if not 0 <= self.state.sample <= self.state.n or self.state.epoch < 0:
            raise ValueError(f"position epoch {self.state.epoch}, sample {self.state.sample} "
                             f"of {self.state.n}")
        rng = meta.get("rng")
        if rng and not self._keyed_step and rng["backend"] == self.model.backend.name:
            self.model.backend.set_rng_state(rng["device"])
        self.history = History.from_dict(meta["history"])


def schedule_from_config(cfg: object, source: PathLike = "checkpoint") -> Schedule:
    """The built-in Schedule that ``Schedule.config()`` described."""
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    try:
        if kind == "constant":
            return Schedule()
        if kind == "step":
            return StepLR(cfg["step_size"], cfg["gamma"])
        if kind == "cosine":
            return CosineLR(cfg["epochs"], cfg["floor"], cfg["warmup"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: bad schedule {cfg!r}: {exc}") from None
    raise CheckpointError(f"{source}: unknown schedule {cfg!r}; pass the same schedule object "
                          "to the Trainer that wrote it")


def _current_format(meta: dict[str, Any], path: PathLike) -> dict[str, Any]:
    """Checkpoint metadata in the current version's layout (or a CheckpointError saying why not)."""
    version = meta.get("checkpoint_version", 1)
    if not _is_int(version) or version < 1:
        raise CheckpointError(f"{path}: bad checkpoint_version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {version} is newer than this "
                              f"graphnet understands ({CHECKPOINT_VERSION}); upgrade graphnet")
    if version == CHECKPOINT_VERSION:
        return meta
    try:  # version 1
        s = meta["state"]
        mid_epoch = s["batch"] != 0
        run = {"base_lr": meta["base_lr"], "schedule": meta["schedule"], "schedule_from": 0.0}
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed version-1 checkpoint ({exc!r})") from None
    if mid_epoch:
        raise CheckpointError(
            f"{path}: a version-1 checkpoint written part-way through epoch {s['epoch'] + 1} "
            f"(batch {s['batch']}) cannot be continued exactly by this graphnet (version "
            f"{CHECKPOINT_VERSION}: keyed shuffles, position in samples). Resume it with the "
            "graphnet that wrote it, or start the run again; version-1 checkpoints written at "
            "the end of an epoch are converted")
    # version 1 saved neither seed nor batch size: the Trainer's own are used
    return {**meta, "run": run, "state": {"epoch": s["epoch"], "sample": 0, "n": 0,
                                          "loss_sum": 0.0, "batches_seen": s["batches_seen"]},
            "checkpoint_version": CHECKPOINT_VERSION, "rng": None}


# --- input checks --------------------------------------------------------------------
def _checked_positive(name: str, v: object) -> int:
    if not _is_int(v) or v <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {v!r}")
    return int(v)


def _checked_seed(v: object) -> int:
    if not _is_int(v) or not 0 <= v < _MAX_KEY:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {v!r}")
    return int(v)


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _default_seed() -> int:
    """The value last given to ``gn.seed`` (0 if it was never called)."""
    gn = sys.modules.get("graphnet")
    seed = getattr(gn, "_last_seed", None)
    return seed if _is_int(seed) and 0 <= seed < _MAX_KEY else 0


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _is_out_of_memory(exc: BaseException) -> bool:
    return out_of_memory(_root_cause(exc))


def _root_cause(exc: BaseException) -> BaseException:
    """``exc``, or what an engine RunError wrapped."""
    while isinstance(exc, RunError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _describe(schedule: Schedule) -> str:
    cfg = schedule.config()
    if cfg.get("type") == "cosine":
        return f"cosine to {cfg['floor']:g} over {cfg['epochs']:.4g} epochs"
    if cfg.get("type") == "step":
        return f"x{cfg['gamma']:g} every {cfg['step_size']} epochs"
    return "constant" if cfg.get("type") == "constant" else repr(cfg)


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
        self.previous: Optional[Callable[[int, Optional[FrameType]], Any] | int] = None

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.trainer._stop_requested:
            raise KeyboardInterrupt
        self.trainer._stop_requested = True
        if self.trainer.checkpoint_dir:
            print("\nCtrl-C: finishing this batch and saving a checkpoint "
                  "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "_sigint_finishes_batch":
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        self.trainer._stop_requested = False


def checkpoint_position(path: PathLike) -> tuple[int, int, int]:
    """``(complete epochs, samples into the next, training-set size)`` of a checkpoint."""
    _, meta = read_npz(path)
    if meta.get("kind") != "checkpoint":
        raise CheckpointError(f"{path}: is a saved model, not a training checkpoint")
    meta = _current_format(meta, path)
    try:
        s = meta["state"]
        return int(s["epoch"]), int(s["sample"]), int(s["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({exc!r})") from None


def resume_model(path: PathLike) -> Classifier:
    """An untrained Classifier with the architecture a checkpoint was written for."""
    _, meta = read_npz(path)
    return model_from_config(meta["model"], str(path))


def fit(model: TrainableModel, optimizer: Optimizer, x_train: Data, y_train: Data,
        x_test: Optional[Data] = None, y_test: Optional[Data] = None, epochs: int = 10,
        **kwargs: Any) -> History:
    """Train ``model`` (see :class:`Trainer` for the options) and return its History."""
    return Trainer(model, optimizer, **kwargs).fit(x_train, y_train, x_test, y_test, epochs)


__all__ = ["Trainer", "History", "TrainState", "fit", "epoch_permutation", "DivergenceError",
           "OutOfMemory", "TrainingInterrupted", "CHECKPOINT", "CHECKPOINT_VERSION",
           "checkpoint_position", "resume_model", "schedule_from_config"]
