"""Weight decay smooths the weights: two one-layer networks, trained the same way but for the decay.

    python examples/mnist/weight_decay.py --out runs/weight_decay       # seconds on two CPU cores
    python examples/mnist/weight_decay.py --epochs 1 --lam 0.01 --backend cupy

The reference's update rule is theta <- (1 - lambda) theta - eta dJ/dtheta with
lambda = 0.01 per step. graphnet's SGD decay is decoupled, p *= 1 - lr * weight_decay
per step, so the same rule is ``weight_decay = lambda / lr``. Both models use the
seed-10 preset of train.py (784 -> 10, softmax, plain SGD at the preset's lr, batch
128) for ``--epochs`` epochs with the same seed, so they start from the same weights
and see the same batches.

Writes OUT/weight_decay.png and OUT/{no_decay,decay}/model.npz. ``visualize.py``
calls :func:`write` to add the figure to its page (skip with --no-weight-decay).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import graphnet as gn
from graphnet import optim, viz
from graphnet.datasets import mnist
from graphnet.training import Trainer

if __package__:  # part of the package: python -m examples.mnist.weight_decay, or imported
    from .config import DEFAULTS, PRESETS
else:  # run by path (python examples/mnist/weight_decay.py): this folder is on the path
    from config import DEFAULTS, PRESETS

LAMBDA, EPOCHS = 0.01, 3


def seed10_config(epochs: int = EPOCHS, weight_decay: float = 0.0, seed: int = 0) -> dict:
    """The seed-10 preset of train.py with the given epochs and weight decay."""
    cfg = dict(DEFAULTS, **PRESETS["seed-10"])
    cfg.update(epochs=epochs, weight_decay=weight_decay, seed=seed, preset="seed-10")
    return cfg


def train_one(cfg: dict, data: tuple, progress: bool = False) -> tuple[Any, dict]:
    """Train a Classifier for ``cfg`` on ``data`` = (x_train, y_train, x_test, y_test)."""
    if __package__:  # part of the package: python -m examples.mnist.weight_decay, or imported
        from .common import build_optimizer
        from .config import NUM_CLASSES, PIXEL_SCALE, build_network
    else:  # run by path (python examples/mnist/weight_decay.py): this folder is on the path
        from common import build_optimizer
        from config import NUM_CLASSES, PIXEL_SCALE, build_network
    x_train, y_train, x_test, y_test = data
    gn.seed(cfg["seed"])
    network, input_shape = build_network(cfg)
    model = gn.nn.Classifier(network, input_shape, NUM_CLASSES, PIXEL_SCALE)
    model.fit_preprocessing(x_train)
    opt = build_optimizer(cfg, model.parameters())
    Trainer(model, opt, optim.make_schedule(cfg["schedule"], cfg["epochs"]),
            batch_size=cfg["batch_size"], progress=progress).fit(
        x_train, y_train, x_test, y_test, epochs=cfg["epochs"])
    return model, model.evaluate(x_test, y_test)


def train_pair(data: tuple, epochs: int = EPOCHS, lam: float = LAMBDA, seed: int = 0,
               progress: bool = False) -> list[tuple[Any, dict, dict]]:
    """[(model, test metrics, config)] without, then with, weight decay ``lam`` per step."""
    plain = seed10_config(epochs, 0.0, seed)
    decay = seed10_config(epochs, lam / plain["lr"], seed)
    return [(*train_one(cfg, data, progress), cfg) for cfg in (plain, decay)]


def figure(pair: list[tuple[Any, dict, dict]], lam: float = LAMBDA) -> Any:
    """The two sets of templates side by side (each panel on its own symmetric scale)."""
    (m0, r0, c0), (m1, r1, c1) = pair
    titles = [f"No weight decay\n(test accuracy {100 * r0['accuracy']:.1f}%)",
              f"Weight decay, $\\lambda$ = {lam:g} per step (weight_decay = {c1['weight_decay']:g})"
              f"\n(test accuracy {100 * r1['accuracy']:.1f}%)"]
    fig = viz.weight_decay_comparison([m0, m1], titles)
    fig.suptitle(f"One-layer network (784 -> 10), {c0['epochs']} epochs of SGD at lr "
                 f"{c0['lr']:g}: the same training but for the decay", fontsize=12)
    return fig


def write(out_dir: str | Path, data: Optional[tuple] = None, epochs: int = EPOCHS,
          lam: float = LAMBDA, seed: int = 0, save_models: bool = True,
          progress: bool = False) -> Path:
    """Train the pair and write ``out_dir/weight_decay.png``; returns its path."""
    out = Path(out_dir)
    data = data if data is not None else mnist.load()
    pair = train_pair(data, epochs, lam, seed, progress)
    if save_models:
        for (model, _, _), name in zip(pair, ("no_decay", "decay")):
            model.save(out / name / "model.npz")
    return viz.save(figure(pair, lam), out / "weight_decay.png")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/weight_decay", help="output folder")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--lam", type=float, default=LAMBDA,
                   help="decay per step, as in theta <- (1 - lam) theta - lr grad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", help="numpy or cupy (overrides GRAPHNET_BACKEND)")
    p.add_argument("--data", help="folder with the MNIST IDX files (default: the cache)")
    args = p.parse_args(argv)
    if args.backend:
        gn.set_backend(args.backend)
    path = write(args.out, mnist.load(args.data), args.epochs, args.lam, args.seed)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
