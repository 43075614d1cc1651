"""The MNIST example's work: build the model from a config, train, save, report."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import graphnet as gn
from graphnet import nn, optim
from graphnet.datasets import mnist
from graphnet.io import CheckpointError
from graphnet.train import (CHECKPOINT, DivergenceError, OutOfMemory, Trainer,
                            TrainingInterrupted)

EXIT_BAD_SETUP, EXIT_DIVERGED, EXIT_BELOW_TARGET, EXIT_INTERRUPTED = 2, 3, 1, 130


def build_network(cfg: dict[str, Any]) -> tuple[Any, tuple]:
    """The network and its input shape for a config."""
    if cfg.get("model", "mlp") == "mlp":
        return nn.MLP(cfg["layers"], 784, cfg["activation"], cfg["dropout"]), (784,)
    builder = getattr(nn, "mnist_cnn", None)
    if builder is None:
        raise SystemExit(f"model {cfg['model']!r} is not available in this graphnet")
    return builder(cfg), (1, 28, 28)


def describe_network(cfg: dict[str, Any]) -> str:
    """``mlp [128, 64, 10]`` or the CNN's name, for the start-up line."""
    model = cfg.get("model", "mlp")
    return f"mlp {cfg['layers']}" if model == "mlp" else model


def build_optimizer(cfg: dict[str, Any], params: list) -> optim.Optimizer:
    if cfg["optimizer"] == "adam":
        return optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                     nesterov=bool(cfg["nesterov"] and cfg["momentum"]),
                     weight_decay=cfg["weight_decay"])


def augmenter(cfg: dict[str, Any]) -> Any:
    """The batch augmentation for a config, or None."""
    if not cfg.get("augment"):
        return None
    from graphnet.augment import random_shift
    return lambda xb: random_shift(xb, max_shift=2, image_shape=(28, 28),
                                   rotate=cfg.get("rotate", 0.0))


def run_training(args: argparse.Namespace) -> int:
    cfg = args.config
    out = Path(args.out or args.resume or f"runs/{cfg['preset'] or 'custom'}")
    try:
        b = gn.backend()
    except (gn.BackendUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETUP
    try:
        x_train, y_train, x_test, y_test = mnist.load(args.data)
    except mnist.MNISTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETUP
    gn.seed(cfg["seed"])
    network, input_shape = build_network(cfg)
    model = nn.Classifier(network, input_shape, check_numerics=args.check_numerics)
    model.fit_preprocessing(x_train)
    opt = build_optimizer(cfg, model.parameters())
    trainer = Trainer(model, opt, optim.make_schedule(cfg["schedule"], cfg["epochs"]),
                      batch_size=cfg["batch_size"], eval_every=args.eval_every, checkpoint_dir=out,
                      progress=not args.no_progress, augment=augmenter(cfg))
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        try:
            trainer.load_checkpoint(out / CHECKPOINT)
        except CheckpointError as exc:
            print(f"error: cannot resume: {exc}", file=sys.stderr)
            return EXIT_BAD_SETUP
        print(f"resuming {out} at epoch {trainer.state.epoch + 1}, batch {trainer.state.batch + 1}")
    else:
        write_json(out / "config.json", cfg)
    print(f"graphnet {gn.__version__} on {b.name} ({b.device_name()}); "
          f"network {describe_network(cfg)}, {cfg['epochs']} epochs -> {out}")
    try:
        history = trainer.fit(x_train, y_train, x_test, y_test, epochs=cfg["epochs"])
    except TrainingInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DivergenceError, gn.NumericsError) as exc:  # --check-numerics names the node
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except OutOfMemory as exc:
        print(f"error: {exc} (--batch-size)", file=sys.stderr)
        return EXIT_BAD_SETUP
    metrics = final_metrics(model, history, cfg, b, x_train, y_train, x_test, y_test)
    model.save(out / "model.npz")
    write_json(out / "metrics.json", metrics)
    print(f"test accuracy {metrics['test_accuracy']:.4f}, train accuracy "
          f"{metrics['train_accuracy']:.4f}; median epoch {metrics['median_seconds_per_epoch']:.2f} s; "
          f"wrote {out / 'model.npz'} and {out / 'metrics.json'}")
    if args.plots:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from visualize import write_all
        print(f"figures: {write_all(out / 'model.npz', out, data=args.data)}")
    if args.min_accuracy is not None and metrics["test_accuracy"] < args.min_accuracy:
        print(f"FAIL: test accuracy {metrics['test_accuracy']:.4f} < {args.min_accuracy}",
              file=sys.stderr)
        return EXIT_BELOW_TARGET
    return 0


def final_metrics(model: nn.Classifier, history: Any, cfg: dict, b: Any, x_train: Any,
                  y_train: Any, x_test: Any, y_test: Any) -> dict[str, Any]:
    test = model.evaluate(x_test, y_test)
    train = model.evaluate(x_train, y_train)
    secs = history.seconds
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "train_accuracy": train["accuracy"], "train_loss": train["loss"],
            "epochs": len(history.epoch), "seconds_per_epoch": secs,
            "median_seconds_per_epoch": sorted(secs)[len(secs) // 2] if secs else 0.0,
            "total_train_seconds": sum(secs), "backend": b.name, "device": b.device_name(),
            "graphnet_version": gn.__version__, "config": cfg, "history": history.to_dict(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
