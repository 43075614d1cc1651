"""Train a network on MNIST with graphnet and write DIR/model.npz and DIR/metrics.json.

    python examples/mnist/train.py                      # preset "fast", >= 98.0% in ~2 min on 2 cores
    python examples/mnist/train.py --preset seed-128-64-10
    GRAPHNET_BACKEND=cupy python examples/mnist/train.py --preset best
    mpiexec -n 2 python examples/mnist/train.py --distributed   # data-parallel, batch 128 per rank
    python examples/mnist/train.py --resume runs/fast   # continue after Ctrl-C or a crash
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

PRESETS: dict[str, dict[str, Any]] = {
    # The reference's two published set-ups: tanh, softmax, cross-entropy, batch 128, plain SGD.
    "seed-10": dict(layers=[10], activation="tanh", epochs=1, optimizer="sgd", lr=0.5),
    "seed-128-64-10": dict(layers=[128, 64, 10], activation="tanh", epochs=10, optimizer="sgd",
                           lr=0.5),
    # Best fully connected network that trains in about two minutes on two CPU cores.
    "fast": dict(layers=[512, 256, 10], activation="relu", epochs=12, optimizer="sgd", lr=0.05,
                 momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine"),
    # The strongest fully connected network we found.
    "best": dict(layers=[1024, 1024, 10], activation="relu", epochs=40, optimizer="sgd", lr=0.05,
                 momentum=0.9, nesterov=True, weight_decay=5e-4, dropout=0.2, schedule="cosine",
                 augment=True),
    # Convolutional networks (graphnet.nn.mnist_cnn): the classic conv32-conv64-pool-dense128.
    "cnn": dict(model="cnn", epochs=8, batch_size=128, optimizer="adam", lr=1e-3,
                schedule="cosine"),
    # Two BatchNorm conv blocks, trained on shifted (2 px) and rotated (10 degrees) digits.
    "cnn-best": dict(model="cnn-best", epochs=15, batch_size=128, optimizer="adam", lr=2e-3,
                     schedule="cosine", augment=True, rotate=10.0),
}
DEFAULTS: dict[str, Any] = dict(layers=[512, 256, 10], activation="relu", epochs=12, batch_size=128,
                                optimizer="sgd", lr=0.05, momentum=0.0, nesterov=False,
                                weight_decay=0.0, dropout=0.0, schedule="constant", seed=0,
                                augment=False, model="mlp", rotate=0.0)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named configuration (default: fast); other flags override it")
    p.add_argument("--layers", type=_int_list, help="layer sizes after the input, e.g. 128,64,10")
    p.add_argument("--activation", choices=["tanh", "relu", "sigmoid"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--schedule", choices=["constant", "step", "cosine"])
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random shifts of up to 2 pixels, on the active backend")
    p.add_argument("--seed", type=int)
    p.add_argument("--backend", help="numpy or cupy (overrides GRAPHNET_BACKEND)")
    p.add_argument("--data", help="folder with the MNIST IDX files (default: the cache)")
    p.add_argument("--out", help="output folder (default: runs/PRESET)")
    p.add_argument("--min-accuracy", type=float, help="exit 1 if the test accuracy is below this")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose checkpoint is in DIR")
    p.add_argument("--eval-every", type=int, default=100, help="batches between learning-curve points")
    p.add_argument("--check-numerics", action="store_true", help="name the first node producing NaN/inf")
    p.add_argument("--plots", action="store_true", help="write the figures of visualize.py at the end")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None,
                   help="data-parallel over the ranks of mpiexec, global batch = batch x ranks "
                        "(default: on when started by mpiexec)")
    args = p.parse_args(argv)
    cfg = resolve_config(args)
    problems = validate(cfg)
    if problems:
        p.error("; ".join(problems))
    args.config = cfg
    return args


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the preset, then explicit flags."""
    saved = Path(args.resume or "", "config.json")
    if args.resume and saved.exists():
        cfg = dict(DEFAULTS, **json.loads(saved.read_text()))
    else:
        preset = args.preset or "fast"
        cfg = dict(DEFAULTS, **PRESETS[preset])
        cfg["preset"] = preset
    for key in ("layers", "activation", "epochs", "batch_size", "optimizer", "lr", "momentum",
                "nesterov", "weight_decay", "dropout", "schedule", "seed", "augment"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    return cfg


def validate(cfg: dict[str, Any]) -> list[str]:
    """Every problem with a configuration, before any work is done."""
    bad = []
    if cfg["model"] == "mlp" and (not cfg["layers"] or cfg["layers"][-1] != 10):
        bad.append(f"--layers must end in 10 (the ten digit classes), got {cfg['layers']}")
    if any(n <= 0 for n in cfg["layers"]):
        bad.append(f"--layers must be positive, got {cfg['layers']}")
    if cfg["epochs"] < 0:
        bad.append(f"--epochs must be >= 0, got {cfg['epochs']}")
    if cfg["batch_size"] <= 0:
        bad.append(f"--batch-size must be > 0, got {cfg['batch_size']}")
    if not cfg["lr"] > 0:
        bad.append(f"--lr must be > 0, got {cfg['lr']}")
    if not 0 <= cfg["momentum"] < 1:
        bad.append(f"--momentum must be in [0, 1), got {cfg['momentum']}")
    if cfg["weight_decay"] < 0:
        bad.append(f"--weight-decay must be >= 0, got {cfg['weight_decay']}")
    if not 0 <= cfg["dropout"] < 1:
        bad.append(f"--dropout must be in [0, 1), got {cfg['dropout']}")
    return bad


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.backend:
        os.environ["GRAPHNET_BACKEND"] = args.backend
    from graphnet import distributed  # noqa: E402  (after the backend is chosen: GPU per rank)
    try:
        args.world = distributed.from_flag(args.distributed)
        if args.world is not None:
            args.world.check_config(args.config)
    except distributed.DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import run_training  # noqa: E402  (after the backend is chosen)
    if args.world is None:
        return run_training(args)
    with distributed.failure_ends_all(args.world) as guard:  # one rank failing ends them all
        return guard.check(run_training(args))


if __name__ == "__main__":
    sys.exit(main())
