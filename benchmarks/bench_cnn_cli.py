"""Benchmark: the ``--preset cnn`` epoch as the CLI reports it, against a PyTorch CPU epoch.

    python benchmarks/run.py --only cnn           # this and bench_cnn (step by step), one run
    python benchmarks/bench_cnn_cli.py --threads 1 --rounds 3

Contenders, in one process, whole epochs taking turns (the order alternating each round):

* *cli*: the Trainer exactly as ``examples/mnist/train.py --preset cnn`` builds it
  (``build_trainer``: shifted batches, learning-curve points, divergence checks, a
  checkpoint folder), training one more epoch through ``fit``; its time is the epoch time
  the CLI prints (``History.seconds``: the step loop with its augmentation and curve points,
  not the end-of-epoch evaluation and checkpoint).
* *pytorch*: bench_cnn's PyTorch twin of the preset's network (same layers and initial
  weights), Adam at the preset's rate, over the training set as contiguous batches of 128:
  a bare training loop, no augmentation or evaluation.

So the comparison is the CLI's whole epoch against PyTorch's bare one. ``ratio`` is the
median over rounds of cli / pytorch in the same round.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks.bench_cnn import BATCH, TorchCNN, mnist_images  # noqa: E402
from benchmarks.common import (REPO, Config, fmt_s, fmt_x, paired_ratio, start, stats,  # noqa: E402
                               torch_or_reason, write_json)

QUICK_IMAGES = 1280  # quick mode: 10 steps per epoch


class CliEpochs:
    """The CLI's Trainer for the ``cnn`` preset; ``epoch()`` trains one more, returns its time."""

    name = "cli"

    def __init__(self, n_images: int, folder: Path) -> None:
        import graphnet as gn
        from examples.mnist.common import build_trainer
        from examples.mnist.config import CURVE_EVERY, DEFAULTS, PRESETS
        from graphnet.datasets import mnist
        gn.set_backend("numpy")
        self.cfg = dict(DEFAULTS, **PRESETS["cnn"], preset="cnn")
        x, y, xt, yt = mnist.load()
        self.data = (x[:n_images], y[:n_images], xt[:n_images], yt[:n_images])
        self.model, self.trainer = build_trainer(self.cfg, self.data[0], folder,
                                                 eval_every=CURVE_EVERY, progress=False)
        self.done = 0

    def weights(self) -> list:
        import numpy as np

        import graphnet as gn
        return [np.array(gn.to_numpy(p.value)) for p in self.model.network.parameters()]

    def epoch(self) -> float:
        self.done += 1
        self.trainer.fit(*self.data, epochs=self.done)
        return self.trainer.history.seconds[-1]


class TorchEpochs:
    """bench_cnn's PyTorch contender at the preset's learning rate; ``epoch()`` as above."""

    name = "pytorch"

    def __init__(self, torch: Any, n_images: int, weights: list, model: str, lr: float,
                 seed: int) -> None:
        X, Y = mnist_images(seed)
        self.net = TorchCNN(torch, X[:n_images], Y[:n_images], weights, model, lr)
        self.steps = -(-n_images // BATCH)

    def epoch(self) -> float:
        t0 = time.perf_counter()
        self.net.run_steps(0, self.steps)
        return time.perf_counter() - t0


def run(cfg: Config, rounds: Optional[int] = None) -> dict:
    rounds = rounds or cfg.pick(3, 1)
    n_images = cfg.pick(60000, QUICK_IMAGES)
    torch, why_no_torch = torch_or_reason(cfg)
    notes = [why_no_torch] if why_no_torch else []
    with tempfile.TemporaryDirectory() as folder:
        cli = CliEpochs(n_images, Path(folder))
        cs: dict[str, Any] = {"cli": cli}
        if torch is not None:
            cs["pytorch"] = TorchEpochs(torch, n_images, cli.weights(), cli.cfg["model"],
                                        cli.cfg["lr"], cfg.seed)
        times: dict[str, list[float]] = {name: [] for name in cs}
        order = list(cs)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                times[name].append(cs[name].epoch())
                print(f"   round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    res: dict[str, Any] = {
        "benchmark": "cnn_cli", "preset": "cnn", "config": cli.cfg, "images_per_epoch": n_images,
        "threads": cfg.threads, "rounds": rounds, "notes": notes,
        "contenders": {name: {"seconds_per_epoch": stats(ts), "rounds": ts}
                       for name, ts in times.items()}}
    if "pytorch" in times:
        res["ratio_cli_over_pytorch"] = paired_ratio(times["cli"], times["pytorch"])
    return res


def summary(res: dict) -> list[list[str]]:
    rows = [["cnn_cli", name, fmt_s(c["seconds_per_epoch"]["median"]) + "/epoch", ""]
            for name, c in res["contenders"].items()]
    if res.get("ratio_cli_over_pytorch") is not None:
        rows.append(["cnn_cli", "cli / pytorch", fmt_x(res["ratio_cli_over_pytorch"]), ""])
    return rows


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=_positive, help="epochs per contender (default 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="BLAS and torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="epochs of 1280 images (smoke test)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                   help="folder for cnn_cli.json")
    args = p.parse_args(argv)
    cfg = Config(quick=args.quick, threads=args.threads, out=Path(args.out),
                 use_torch=not args.no_torch)
    machine = start(cfg, "cnn CLI-epoch benchmark")
    res = run(cfg, rounds=args.rounds)
    res["machine"] = machine
    res["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for row in summary(res):
        print("   " + "  ".join(row))
    default_threads = args.threads == (os.cpu_count() or 1)
    path = Path(args.out) / ("cnn_cli.json" if default_threads
                             else f"cnn_cli_threads{args.threads}.json")
    write_json(path, res)
    print(f"   wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
