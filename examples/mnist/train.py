"""Train a network on MNIST with graphnet and write DIR/model.npz and DIR/metrics.json.

    python examples/mnist/train.py                      # preset "fast", >= 98.5% in about a minute on 2 cores
    python examples/mnist/train.py --preset seed-128-64-10
    GRAPHNET_BACKEND=cupy python examples/mnist/train.py --preset best
    mpiexec -n 2 python examples/mnist/train.py --distributed   # data-parallel, batch 128 per rank
    python examples/mnist/train.py --resume runs/fast   # continue after Ctrl-C or a crash

On --resume, --epochs, --batch-size, --lr, --schedule and --augment may change: the position
in the epoch is kept in samples and the learning-rate schedule is re-planned from there.

Exit codes: 0 done, 1 training failed (diverged, out of memory, below --min-accuracy),
2 bad flags or setup (nothing trained), 130 interrupted (resume with --resume DIR).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

from graphnet.errors import ArgumentError
from graphnet.io import check_path, read_json_file

if __package__:  # part of the package: python -m examples.mnist.train, or imported
    from .config import (CHANGEABLE_ON_RESUME, CHOICES, CURVE_EVERY, CURVE_IMAGES, DEFAULTS, FLAG_KEYS,
                         MAX_SEED, MLP_ONLY, PRESETS, SGD_ONLY)
else:  # run by path (python examples/mnist/train.py): this folder is on the path
    from config import (CHANGEABLE_ON_RESUME, CHOICES, CURVE_EVERY, CURVE_IMAGES, DEFAULTS, FLAG_KEYS,
                        MAX_SEED, MLP_ONLY, PRESETS, SGD_ONLY)


class UsageError(ValueError):
    """A flag or saved configuration that cannot be honoured; nothing has been done yet."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line on stderr and exit code 2 (argparse's, without the long usage text)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The flags, checked, with ``args.config`` (the resolved configuration) and
    ``args.changes`` (``{key: (saved, new)}`` on --resume); exits 2 on any problem."""
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named configuration (default: fast); other flags override it")
    p.add_argument("--layers", type=_int_list, help="MLP layer sizes after the input, e.g. 128,64,10")
    p.add_argument("--activation", choices=CHOICES["activation"], help="MLP activation")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=CHOICES["optimizer"])
    p.add_argument("--lr", type=float, help="base learning rate (> 0)")
    p.add_argument("--momentum", type=float, help="SGD momentum in [0, 1)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--dropout", type=float, help="MLP dropout in [0, 1)")
    p.add_argument("--schedule", choices=CHOICES["schedule"])
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random shifts of up to 2 pixels, on the active backend")
    p.add_argument("--seed", type=int, help=f"0..{MAX_SEED}: initial weights, shuffles, dropout")
    p.add_argument("--backend", help="numpy or cupy (overrides GRAPHNET_BACKEND)")
    p.add_argument("--data", help="folder with the MNIST IDX files (default: the cache)")
    p.add_argument("--out", help="output folder (default: runs/PRESET)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (default: refuse)")
    p.add_argument("--min-accuracy", type=_accuracy, metavar="A",
                   help="exit 1 if the test accuracy is below A: a fraction (0.98) or a percent "
                        "(98 or 98%%; values above 1 are percents)")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose checkpoint is in DIR")
    p.add_argument("--eval-every", type=int, default=CURVE_EVERY,
                   help=f"batches between learning-curve points, each evaluated on {CURVE_IMAGES} "
                        f"training and {CURVE_IMAGES} test images (0: none; default {CURVE_EVERY})")
    p.add_argument("--check-numerics", action="store_true", help="name the first node producing NaN/inf")
    p.add_argument("--plots", action="store_true", help="write the figures of visualize.py at the end")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")
    p.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None,
                   help="data-parallel over the ranks of mpiexec, global batch = batch x ranks "
                        "(default: on when started by mpiexec)")
    args = p.parse_args(argv)
    try:
        for flag in ("out", "data", "resume"):  # before any of them is looked at
            if getattr(args, flag) is not None:
                check_path(getattr(args, flag), f"--{flag}")
        args.config, args.changes = resolve_config(args)
        problems = validate(args.config) + flags_that_do_not_apply(args) + path_problems(args)
    except (UsageError, ArgumentError) as exc:
        problems = [str(exc)]
    if problems:
        p.error("; ".join(problems))
    return args


def _int_list(text: str) -> list[int]:
    """``"128,64,10"`` as ``[128, 64, 10]``; an empty item is refused, not skipped
    (``128,,10`` is a typo, not a two-layer network)."""
    items = [t.strip() for t in text.split(",")]
    if text.strip() and "" in items:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r} "
                                         f"(item {items.index('') + 1} is empty)")
    try:
        return [int(t) for t in items if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _accuracy(text: str) -> float:
    """A fraction in [0, 1], or a percent: ``98%`` or any value in (1, 100]."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        value = math.nan
    if percent or value > 1:
        value /= 100
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction 0-1 or a percent up to 100 "
                                         f"(e.g. 0.98, 98 or 98%), got {text!r}")
    return value


def output_dir(args: argparse.Namespace) -> Path:
    """Where the run writes: --out, else the --resume folder, else runs/PRESET."""
    return Path(args.out or args.resume or f"runs/{args.config.get('preset') or 'custom'}")


# --- the configuration ----------------------------------------------------------------
def resolve_config(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, tuple]]:
    """Defaults, then the preset (or the resumed run's config.json), then explicit flags."""
    changes: dict[str, tuple] = {}
    if not args.resume:
        preset = args.preset or "fast"
        cfg = dict(DEFAULTS, **PRESETS[preset], preset=preset)
    else:
        folder = Path(args.resume)
        saved = read_saved_config(folder)
        cfg = dict(DEFAULTS, **saved)
        if args.preset is not None and args.preset != cfg.get("preset"):
            raise UsageError(f"--resume cannot change --preset (the run in {folder} uses "
                             f"{cfg.get('preset')!r}); start a new run in another --out")
    for key in FLAG_KEYS:
        value = getattr(args, key)
        if value is None or value == cfg[key]:
            continue
        if args.resume and key not in CHANGEABLE_ON_RESUME:
            raise UsageError(f"--resume cannot change {_flag(key)} (the run in {args.resume} uses "
                             f"{cfg[key]!r}); only {', '.join(map(_flag, CHANGEABLE_ON_RESUME))} "
                             "may change. Start a new run in another --out")
        if args.resume:
            changes[key] = (cfg[key], value)
        cfg[key] = value
    return cfg, changes


def read_saved_config(folder: Path) -> dict[str, Any]:
    """The config.json of the run in ``folder``, checked (UsageError naming the file)."""
    path = folder / "config.json"
    if not folder.is_dir():
        raise UsageError(f"--resume {folder}: no such folder")
    if not path.exists():
        raise UsageError(f"--resume {folder}: no config.json there (not a run folder?)")
    saved = read_json_file(path, error=UsageError)
    if not isinstance(saved, dict):
        raise UsageError(f"{path}: expected a JSON object of settings, got {type(saved).__name__}")
    problems = validate(dict(DEFAULTS, **saved), name=lambda k: repr(k))
    if problems:
        raise UsageError(f"{path}: " + "; ".join(problems))
    return saved


def validate(cfg: dict[str, Any], name: Any = None) -> list[str]:
    """Every problem with a configuration (types, then ranges), before any work is done."""
    name = name or _flag
    bad = []
    for key, value in cfg.items():
        want = _expected_type(key, value)
        if want:
            bad.append(f"{name(key)} must be {want}, got {value!r}" if want != "unknown"
                       else f"unknown setting {name(key)} (known: {', '.join(sorted(DEFAULTS))})")
    if bad:
        return bad
    if any(n <= 0 for n in cfg["layers"]):
        bad.append(f"{name('layers')} must be positive, got {cfg['layers']}")
    elif cfg["model"] == "mlp" and cfg["layers"][-1] != 10:
        bad.append(f"{name('layers')} must end in 10 (the ten digit classes), got {cfg['layers']}")
    for key, low in (("epochs", 1), ("batch_size", 1)):
        if cfg[key] < low:
            bad.append(f"{name(key)} must be >= {low}, got {cfg[key]}")
    if not 0 <= cfg["seed"] <= MAX_SEED:
        bad.append(f"{name('seed')} must be in 0..{MAX_SEED}, got {cfg['seed']}")
    if not cfg["lr"] > 0:
        bad.append(f"{name('lr')} must be > 0, got {cfg['lr']}")
    for key in ("momentum", "dropout"):
        if not 0 <= cfg[key] < 1:
            bad.append(f"{name(key)} must be in [0, 1), got {cfg[key]}")
    if cfg["weight_decay"] < 0:
        bad.append(f"{name('weight_decay')} must be >= 0, got {cfg['weight_decay']}")
    if not 0 <= cfg["rotate"] <= 180:
        bad.append(f"{name('rotate')} must be in [0, 180] degrees, got {cfg['rotate']}")
    if not 0 <= cfg["zoom"] < 1:
        bad.append(f"{name('zoom')} must be in [0, 1) (a fraction of the size), got {cfg['zoom']}")
    if cfg["optimizer"] == "sgd" and cfg["nesterov"] and not cfg["momentum"] > 0:
        bad.append(f"{name('nesterov')} needs {name('momentum')} > 0 (or --no-nesterov)")
    return bad


def _expected_type(key: str, value: Any) -> Optional[str]:
    """What ``value`` should be for ``key``, if it is not that ("unknown": no such key)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if key == "layers":
        ok, want = isinstance(value, list) and bool(value) and all(map(is_int, value)), \
            "a non-empty list of integers"
    elif key in ("epochs", "batch_size", "seed"):
        ok, want = is_int(value), "an integer"
    elif key in ("lr", "momentum", "weight_decay", "dropout", "rotate", "zoom"):
        ok, want = (is_int(value) or isinstance(value, float)) and math.isfinite(value), \
            "a finite number"
    elif key in ("nesterov", "augment"):
        ok, want = isinstance(value, bool), "true or false"
    elif key in CHOICES:
        ok, want = value in CHOICES[key], "one of " + ", ".join(CHOICES[key])
    elif key == "preset":
        ok, want = value is None or value in PRESETS, "a preset name or null"
    else:
        return "unknown"
    return None if ok else want


def flags_that_do_not_apply(args: argparse.Namespace) -> list[str]:
    """Flags given explicitly that the chosen network or optimizer cannot honour."""
    cfg, bad = args.config, []
    if cfg["model"] != "mlp":
        for key in MLP_ONLY:
            if getattr(args, key) is not None:
                bad.append(f"{_flag(key)} applies to MLPs only; the {cfg['model']!r} network is "
                           "fixed (drop the flag, or choose an MLP preset)")
    if cfg["optimizer"] != "sgd":
        for key in SGD_ONLY:
            if getattr(args, key) is not None:
                bad.append(f"{_flag(key)} applies to --optimizer sgd only, not {cfg['optimizer']}")
    if args.eval_every < 0:
        bad.append(f"--eval-every must be >= 0, got {args.eval_every}")
    if args.resume and args.overwrite:
        bad.append("--resume continues a run and --overwrite replaces it: give one of them")
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        bad.append(f"--resume writes into the run's own folder ({args.resume}); drop --out")
    return bad


#: the files a run writes in its folder (common.RUN_FILES), checked before any work
OUTPUT_FILES = ("checkpoint.npz", "model.npz", "metrics.json", "config.json")


def path_problems(args: argparse.Namespace) -> list[str]:
    """--out, --data and --resume paths that cannot work, and outputs that cannot be written."""
    bad, out = [], output_dir(args)
    if out.exists() and not out.is_dir():
        bad.append(f"--out {out} is a file, not a folder")
    else:
        parent = next((p for p in [out, *out.absolute().parents] if p.exists()), None)
        if parent is not None and not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
            bad.append(f"--out {out}: cannot write in {parent}")
        bad += [f"{out / name} is not a regular file (a folder?): the run would write it; "
                "remove it or choose another --out" for name in OUTPUT_FILES
                if (out / name).exists() and not (out / name).is_file()]
    if args.data and Path(args.data).exists() and not Path(args.data).is_dir():
        bad.append(f"--data {args.data} is a file; give the folder holding the MNIST IDX files")
    if args.resume and not (Path(args.resume) / "checkpoint.npz").is_file():
        bad.append(f"--resume {args.resume}: no checkpoint.npz there (nothing to resume)")
    return bad


def scale_lr_with_ranks(args: argparse.Namespace, ranks: int) -> str:
    """Multiply the preset's learning rate by ``ranks`` (the global batch grows as much:
    the linear scaling rule, Goyal et al. 2017) unless --lr was given or the run is resumed
    (its config.json holds the rate it used). Returns a line saying what was done, or ''."""
    if ranks <= 1 or args.lr is not None or args.resume:
        return ""
    base = args.config["lr"]
    args.config["lr"] = base * ranks
    return (f"learning rate {base:g} x {ranks} ranks = {base * ranks:g} (scaled with the global "
            f"batch; give --lr to set it yourself)")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.backend:
        os.environ["GRAPHNET_BACKEND"] = args.backend
    from graphnet import distributed  # (after the backend is chosen: GPU per rank)
    if __package__:  # part of the package: python -m examples.mnist.train, or imported
        from . import launch
    else:  # run by path (python examples/mnist/train.py): this folder is on the path
        import launch
    try:
        args.world = launch.from_flag(args.distributed)
        if args.world is not None:
            note = scale_lr_with_ranks(args, args.world.size)
            if note:
                print(note)
            args.world.check_config(args.config)
    except distributed.DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if __package__:  # part of the package: python -m examples.mnist.train, or imported
            from .common import run_training
        else:  # run by path (python examples/mnist/train.py): this folder is on the path
            from common import run_training
        if args.world is None:
            return run_training(args)
        with launch.failure_ends_all(args.world) as guard:  # one rank failing ends them all
            return guard.check(run_training(args))
    except KeyboardInterrupt:
        print("\nstopped at once (Ctrl-C); the last checkpoint written is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
