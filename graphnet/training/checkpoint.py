"""The training checkpoint: what it holds, its format versions, and reading it back.

A checkpoint is one ``.npz`` (written atomically): ``model/*`` and ``optim/*`` arrays and
JSON metadata (architecture, optimizer scalars, run settings, position, history).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..checks import integer, positive_int, real
from ..io import CheckpointError, atomic_write_npz, read_npz
from ..hints import PathLike
from ..optim import CosineLR, Schedule, StepLR
from .history import History, TrainState
from .order import checked_seed, is_int

if TYPE_CHECKING:
    from ..nn.model import Classifier
    from .trainer import Trainer

CHECKPOINT = "checkpoint.npz"
# 1: position in batches, the epoch's permutation and the generators' states saved.
# 2: position in samples, keyed randomness (seed saved), run settings and their segments.
CHECKPOINT_VERSION = 2


def write(trainer: "Trainer", path: Path) -> Path:
    """Write the trainer's model, optimizer, position, run settings and history to ``path``."""
    arrays = {f"model/{k}": v for k, v in trainer.model.host_arrays().items()}
    opt_arrays, opt_meta = trainer.optimizer.host_state()
    arrays.update({f"optim/{k}": v for k, v in opt_arrays.items()})
    st = trainer.state
    meta = {"kind": "checkpoint", "checkpoint_version": CHECKPOINT_VERSION,
            "model": trainer.model.config(), "optimizer": opt_meta,
            "run": {"seed": trainer.seed, "batch_size": trainer.batch_size,
                    "base_lr": trainer.base_lr, "schedule": trainer.schedule.config(),
                    "schedule_from": trainer.schedule_from},
            "state": {"epoch": st.epoch, "sample": st.sample, "n": st.n,
                      "loss_sum": st.loss_sum, "batches_seen": st.batches_seen},
            "history": trainer.history.to_dict()}
    if not trainer.keyed_step:
        # an engine without rng_key draws dropout from the device generator: keep its state
        b = trainer.model.backend
        meta["rng"] = {"backend": b.name, "device": _jsonable(b.rng_state())}
    return atomic_write_npz(path, arrays, meta)


def read(trainer: "Trainer", path: PathLike) -> None:
    """Restore into ``trainer`` everything :func:`write` saved (onto the active backend)."""
    arrays, meta = read_npz(path)
    if meta.get("kind") != "checkpoint":
        raise CheckpointError(f"{path}: is a saved model, not a training checkpoint")
    meta = _current_format(meta, path)
    model = trainer.model
    if meta["model"] != model.config():
        raise CheckpointError(f"{path}: was written for a different architecture: "
                              f"{meta['model'].get('network')} vs {model.config()['network']}")
    model.load_host_arrays({k[6:]: v for k, v in arrays.items() if k.startswith("model/")},
                           str(path))
    try:
        trainer.optimizer.load_host_state(
            {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}, meta["optimizer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: optimizer state does not fit: {exc}") from None
    try:
        _restore(trainer, meta, path)
    except CheckpointError:  # already says what is wrong with the file, in its own words
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({exc!r})") from None


def _restore(trainer: "Trainer", meta: dict[str, Any], path: PathLike) -> None:
    run, s = meta["run"], meta["state"]
    trainer.seed = checked_seed(run.get("seed", trainer.seed))
    trainer.batch_size = positive_int(run.get("batch_size", trainer.batch_size), "batch_size")
    trainer.base_lr = real(run["base_lr"], "base_lr", 0.0, low_open=True)
    if trainer.schedule.config() != run["schedule"]:
        trainer.schedule = schedule_from_config(run["schedule"], path)
    trainer.schedule_from = real(run["schedule_from"], "schedule_from", 0.0)
    trainer.state = _state(s)
    rng = meta.get("rng")
    backend = trainer.model.backend
    if rng and not trainer.keyed_step and rng["backend"] == backend.name:
        backend.set_rng_state(rng["device"])
    trainer.history = History.from_dict(meta["history"])


def _state(s: dict[str, Any]) -> TrainState:
    """The saved position, checked: whole numbers in range, a finite loss sum (ValueError)."""
    state = TrainState(integer(s["epoch"], "epoch", 0), integer(s["sample"], "sample", 0),
                       integer(s["n"], "n", 0), real(s["loss_sum"], "loss_sum"),
                       integer(s["batches_seen"], "batches_seen", 0))
    if state.sample > state.n:
        raise ValueError(f"position epoch {state.epoch}, sample {state.sample} of {state.n}")
    return state


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
    if not is_int(version) or version < 1:
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


def checkpoint_position(path: PathLike) -> tuple[int, int, int]:
    """``(complete epochs, samples into the next, training-set size)`` of a checkpoint."""
    _, meta = read_npz(path)
    if meta.get("kind") != "checkpoint":
        raise CheckpointError(f"{path}: is a saved model, not a training checkpoint")
    meta = _current_format(meta, path)
    try:
        st = _state(meta["state"])
        return st.epoch, st.sample, st.n
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint metadata ({exc!r})") from None


def resume_model(path: PathLike) -> "Classifier":
    """An untrained Classifier with the architecture a checkpoint was written for."""
    from ..nn.model import model_from_config  # the model layer imports the trainer's protocol
    _, meta = read_npz(path)
    return model_from_config(meta["model"], str(path))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


__all__ = ["CHECKPOINT", "CHECKPOINT_VERSION", "write", "read", "checkpoint_position",
           "resume_model", "schedule_from_config"]
