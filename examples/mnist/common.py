"""The MNIST example's work: build the model from a config, train, save, report."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

import graphnet as gn
from graphnet import nn, optim
from graphnet.datasets import mnist
from graphnet.io import CheckpointError, atomic_write, read_json_file
from graphnet.training import (CHECKPOINT, DivergenceError, OutOfMemory, Trainer,
                               TrainingInterrupted, checkpoint_position)

if __package__:  # part of the package (imported as examples.mnist.common)
    from .config import (CNN_SIZES, CURVE_IMAGES, IMAGE_SHAPE, NUM_CLASSES, N_IMAGES, N_PIXELS,
                         PIXEL_SCALE, build_network, describe_network)
else:  # imported by a script of this folder run by path: this folder is on the path
    from config import (CNN_SIZES, CURVE_IMAGES, IMAGE_SHAPE, NUM_CLASSES, N_IMAGES, N_PIXELS,
                        PIXEL_SCALE, build_network, describe_network)

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_BAD_SETUP, EXIT_DIVERGED, EXIT_BELOW_TARGET = EXIT_USAGE, EXIT_FAILED, EXIT_FAILED
RUN_FILES = (CHECKPOINT, "model.npz", "metrics.json", "config.json")
LOCK = ".lock"


class LockHeld(RuntimeError):
    """Another live run holds the output folder."""


def build_optimizer(cfg: dict[str, Any], params: list) -> optim.Optimizer:
    if cfg["optimizer"] == "adam":
        return optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                     nesterov=bool(cfg["nesterov"] and cfg["momentum"]),
                     weight_decay=cfg["weight_decay"])


def augmenter(cfg: dict[str, Any]) -> Any:
    """The batch augmentation for a config (keyed by the trainer's rng_key), or None."""
    if not cfg.get("augment"):
        return None
    from graphnet.augment import random_shift
    return lambda xb, rng_key=None: random_shift(xb, max_shift=2, image_shape=IMAGE_SHAPE,
                                                 rotate=cfg.get("rotate", 0.0), rng_key=rng_key,
                                                 zoom=cfg.get("zoom", 0.0))


def build_trainer(cfg: dict[str, Any], x_train: Any, out: Optional[Path], *, eval_every: int,
                  progress: bool = True, check_numerics: bool = False,
                  world: Any = None) -> tuple[nn.Classifier, Trainer]:
    """The model (seeded, preprocessing fitted on ``x_train``) and the Trainer the CLI runs."""
    gn.seed(cfg["seed"])
    network, input_shape = build_network(cfg)
    model = nn.Classifier(network, input_shape, NUM_CLASSES, PIXEL_SCALE,
                          check_numerics=check_numerics)
    model.fit_preprocessing(x_train)
    trainer = Trainer(model, build_optimizer(cfg, model.parameters()),
                      optim.make_schedule(cfg["schedule"], cfg["epochs"]),
                      batch_size=cfg["batch_size"], eval_every=eval_every or None,
                      curve_subset=CURVE_IMAGES,
                      checkpoint_dir=out, progress=progress, augment=augmenter(cfg),
                      seed=cfg["seed"], strategy=None if world is None else world.data_parallel())
    return model, trainer


# --- before any work --------------------------------------------------------------------
def training_bytes(cfg: dict[str, Any]) -> int:
    """About how much memory training needs: data, parameters with gradients and optimizer
    state, and one batch of activations."""
    item = gn.get_default_dtype().itemsize
    if cfg.get("model", "mlp") == "mlp":
        widths = [N_PIXELS] + list(cfg["layers"])
        params = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
        acts = 3 * sum(widths)
    else:
        params, acts = CNN_SIZES.get(cfg["model"], (0, 0))
    slots = 2 if cfg["optimizer"] == "adam" else (1 if cfg["momentum"] else 0)
    data = N_IMAGES * N_PIXELS * (item + 1)
    return item * (params * (2 + slots) + cfg["batch_size"] * acts) + data


def available_bytes(b: Any) -> Optional[int]:
    """Free memory where the backend allocates (None if unknown)."""
    info = b.memory_info()
    if "device_free_bytes" in info:
        return int(info["device_free_bytes"]) + int(info.get("pool_held_bytes", 0))
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_problem(cfg: dict[str, Any], b: Any) -> Optional[str]:
    need, have = training_bytes(cfg), available_bytes(b)
    if have is None or need <= have:
        return None
    what = f"--layers {','.join(map(str, cfg['layers']))}" if cfg["model"] == "mlp" else cfg["model"]
    return (f"{what} with --batch-size {cfg['batch_size']} needs about {_gb(need)} to train "
            f"(parameters, gradients, optimizer state, data, one batch), but only {_gb(have)} "
            f"is free on {b.device_name()}: use smaller layers or a smaller batch")


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


class RunLock:
    """One run at a time per output folder: ``DIR/.lock`` holds the owner's PID under flock,
    so the kernel releases it when that process dies, however it dies."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.path = folder, folder / LOCK
        self.fd: Optional[int] = None
        self.stale_pid: Optional[int] = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        if fcntl is None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                raise LockHeld(f"{self.folder} is in use by another training run (PID "
                               f"{owner or 'unknown'}, see {self.path}); wait for it to finish "
                               "or choose another --out") from None
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # its owner removed the file as we opened it: lock the new one
        previous = _read_pid(fd)
        if previous and previous != os.getpid():
            self.stale_pid = previous  # it exited without removing the file (killed?)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


# --- the run ----------------------------------------------------------------------------
def run_training(args: argparse.Namespace) -> int:
    """Train as ``args`` say; the exit code (see train.py's docstring)."""
    t_start = time.perf_counter()
    cfg, out = args.config, Path(args.out or args.resume or f"runs/{args.config['preset'] or 'custom'}")
    world = getattr(args, "world", None)  # graphnet.distributed.World under mpiexec, else None
    root = world is None or world.is_root  # rank 0 alone locks, checks and writes the folder
    try:
        b = gn.backend()
    except (gn.BackendUnavailableError, ValueError) as exc:
        return _usage(exc)
    problem = memory_problem(cfg, b)
    if problem:
        return _usage(problem)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out)
        if root:
            lock.acquire()
    except LockHeld as exc:
        return _usage(exc)
    except OSError as exc:
        return _usage(f"--out {out}: cannot write there ({exc.strerror or exc})")
    try:
        if lock.stale_pid:
            print(f"note: {lock.path} was left by PID {lock.stale_pid}, which is no longer "
                  "running; taking it over")
        return _run_locked(args, cfg, out, b, t_start)
    except (CheckpointError, mnist.MNISTError) as exc:
        return _usage(exc)
    except (DivergenceError, OutOfMemory, gn.NumericsError, gn.RunError) as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace, cfg: dict, out: Path, b: Any, t_start: float) -> int:
    world = getattr(args, "world", None)
    root = world is None or world.is_root  # rank 0 alone checks and clears the folder
    if root and args.resume:
        done = _resume_position_problem(cfg, out)
        if done is not None:
            return done
    elif root:
        existing = [name for name in RUN_FILES if (out / name).exists()]
        if existing and not args.overwrite:
            return _usage(f"{out} already holds a run ({', '.join(existing)}): continue it with "
                          f"--resume {out}, or replace it with --overwrite")
        for name in existing:
            (out / name).unlink()
    x_train, y_train, x_test, y_test = mnist.load(args.data)
    model, trainer = build_trainer(cfg, x_train, out, eval_every=args.eval_every,
                                   progress=not args.no_progress,
                                   check_numerics=args.check_numerics, world=world)
    if world is not None:
        if __package__:  # part of the package (imported as examples.mnist.common)
            from .launch import describe_training
        else:  # imported by a script of this folder run by path: this folder is on the path
            from launch import describe_training
        print(describe_training(trainer))
    if args.resume:
        trainer.load_checkpoint(out / CHECKPOINT)
        st = trainer.state
        print(f"resuming {out} at epoch {st.epoch + 1}, sample {st.sample} of {st.n}")
        for note in resume_changes(trainer, cfg, args.changes):
            print(f"  on resume: {note}")
    if root:
        write_json(out / "config.json", cfg)
    print(f"graphnet {gn.__version__} on {b.name} ({b.device_name()}); "
          f"network {describe_network(cfg)}, {cfg['epochs']} epochs, seed {cfg['seed']} -> {out}")
    try:
        history = trainer.fit(x_train, y_train, x_test, y_test, epochs=cfg["epochs"])
    except TrainingInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not root:
        return 0  # rank 0 evaluates and writes the model, metrics and figures
    metrics = final_metrics(model, trainer, cfg, b, (x_train, y_train, x_test, y_test))
    model.save(out / "model.npz")
    write_json(out / "metrics.json", metrics)
    figures = ""
    if args.plots:
        if __package__:  # part of the package (imported as examples.mnist.common)
            from .visualize import write_all
        else:  # imported by a script of this folder run by path: this folder is on the path
            from visualize import write_all
        figures = f", figures {write_all(out / 'model.npz', out, data=args.data)}"
    print(f"done in {time.perf_counter() - t_start:.1f} s: test accuracy "
          f"{metrics['test_accuracy']:.4f} (train {metrics['train_accuracy']:.4f}) after "
          f"{metrics['epochs']} epochs; model {out / 'model.npz'}, metrics "
          f"{out / 'metrics.json'}{figures}")
    if args.min_accuracy is not None and metrics["test_accuracy"] < args.min_accuracy:
        print(f"FAIL: test accuracy {metrics['test_accuracy']:.4f} < --min-accuracy "
              f"{args.min_accuracy:g}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _resume_position_problem(cfg: dict, out: Path) -> Optional[int]:
    """An exit code if the run in ``out`` is finished or past --epochs (None: train on)."""
    epoch, sample, _ = checkpoint_position(out / CHECKPOINT)
    if epoch < cfg["epochs"]:
        return None
    if sample or epoch > cfg["epochs"]:
        return _usage(f"the run in {out} is already at epoch {epoch + (1 if sample else 0)}: "
                      f"--epochs must be at least {epoch + (1 if sample else 0)}")
    broken = broken_outputs(out)
    if not broken:
        print(f"{out}: the run is finished ({epoch} of {cfg['epochs']} epochs{_recorded(out)}); "
              f"nothing to do. To train on, resume with --epochs above {epoch}")
        return 0
    print(f"{out}: training is complete, but {'; '.join(broken)}: writing the final model and "
          "metrics again from the checkpoint")
    return None


def broken_outputs(out: Path) -> list[str]:
    """What is wrong with a finished run's model.npz and metrics.json (empty: both load)."""
    problems = []
    try:
        nn.load(out / "model.npz")
    except CheckpointError as exc:
        problems.append(str(exc))
    try:
        metrics = read_json_file(out / "metrics.json", error=CheckpointError)
        if not isinstance(metrics, dict) or not isinstance(metrics.get("test_accuracy"), float):
            problems.append(f"{out / 'metrics.json'}: holds no test_accuracy")
    except CheckpointError as exc:
        problems.append(str(exc))
    return problems


def _recorded(out: Path) -> str:
    try:
        return f", test accuracy {read_json_file(out / 'metrics.json')['test_accuracy']:.4f}"
    except (CheckpointError, KeyError, TypeError, ValueError):
        return ""


def resume_changes(trainer: Trainer, cfg: dict, changes: dict) -> list[str]:
    """Apply the flags changed on --resume to a restored trainer; say what changed."""
    notes = [f"--{k.replace('_', '-')} {old} -> {new}" for k, (old, new) in changes.items()
             if k in ("epochs", "augment")]
    notes += trainer.replan(batch_size=cfg["batch_size"])
    remaining = cfg["epochs"] - trainer.state.position
    if remaining <= 0:
        return notes
    # the plan the run follows if nothing changed: the schedule over [schedule_from, epochs]
    planned = optim.make_schedule(cfg["schedule"], cfg["epochs"] - trainer.schedule_from)
    if cfg["lr"] != trainer.base_lr or planned.config() != trainer.schedule.config():
        notes += trainer.replan(lr=cfg["lr"],
                                schedule=optim.make_schedule(cfg["schedule"], remaining))
    return notes


def _usage(problem: Any) -> int:
    print(f"error: {problem}", file=sys.stderr)
    return EXIT_USAGE


def final_metrics(model: nn.Classifier, trainer: Trainer, cfg: dict, b: Any, data: tuple
                  ) -> dict[str, Any]:
    """The run's figures. The last epoch evaluated the final weights on the whole test set and
    the first ``trainer.eval_subset`` training images: those are reused, not rerun (rerunning
    them on all 70000 images cost the classic ``cnn`` preset 18 s, 4% of its run). A history without
    them (a finished run's outputs rewritten from a checkpoint that lacks them) is evaluated."""
    history, (x_train, y_train, x_test, y_test) = trainer.history, data
    n_train = min(trainer.eval_subset, len(x_train))
    if history.test_loss and history.train_accuracy:
        test = {"accuracy": history.test_accuracy[-1], "loss": history.test_loss[-1]}
        train = history.train_accuracy[-1]
    else:
        test = model.evaluate(x_test, y_test)
        train = model.evaluate(x_train[:n_train], y_train[:n_train])["accuracy"]
    secs = history.seconds
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "train_accuracy": train, "train_images_evaluated": n_train,
            "mean_train_loss_last_epoch": history.train_loss[-1] if history.train_loss else None,
            "epochs": len(history.epoch), "seconds_per_epoch": secs,
            "median_seconds_per_epoch": sorted(secs)[len(secs) // 2] if secs else 0.0,
            "total_train_seconds": sum(secs), "backend": b.name, "device": b.device_name(),
            "graphnet_version": gn.__version__, "config": cfg, "segments": history.segments,
            "history": history.to_dict(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (see :func:`graphnet.io.atomic_write`)."""
    atomic_write(path, [json.dumps(obj, indent=1).encode()])
