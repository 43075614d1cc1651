"""Benchmark: training the MNIST example's CNNs, graphnet (NumPy backend) vs PyTorch CPU.

    python benchmarks/bench_cnn.py                 # 100 batches per round, scaled to an epoch
    python benchmarks/bench_cnn.py --full          # whole epochs (469 batches) per round
    python benchmarks/bench_cnn.py --threads 1     # BLAS / torch threads (default: all cores)
    python benchmarks/bench_cnn.py --model cnn-pool   # the cnn preset's network

``--model cnn`` (default; ``cnn-classic`` preset): ``mnist_cnn({"model": "cnn"})``, conv 32 3x3,
ReLU, conv 64 3x3, max-pool 2, ReLU, dropout 0.25, dense 128, ReLU, dropout 0.5, dense 10.
``--model cnn-pool`` (the ``cnn`` preset): the same with a max-pool after each convolution.
PyTorch gets the same layers in the same order, the same initial weights (checked: both
give the same logits), Adam lr 1e-3 and the same pre-permuted contiguous batches of 128 of
real MNIST, float32. The contenders take turns of ``CHUNK`` steps, round-robin with the
order rotating, so a burst of load on a shared machine hits both; a contender's round time is the sum of
its turns. After a warm-up round, each figure is the median over the timed rounds;
``ratio`` is the median over rounds of graphnet's time / PyTorch's time in the same round.
PyTorch is optional: without it the PyTorch column is skipped with a message. Results go
to ``benchmarks/results/cnn.json`` or ``cnn_pool.json`` (``..._threadsN.json`` with
``--threads N`` below all cores).
On a machine shared with other work, compare ``--threads 1`` too: multi-threaded BLAS
slows down sharply when the cores are oversubscribed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script: set threads before NumPy loads its BLAS
    _argv = sys.argv[1:]
    for _i, _a in enumerate(_argv):
        if _a.startswith("--threads"):
            _n = _a.split("=", 1)[1] if "=" in _a else (_argv[_i + 1] if _i + 1 < len(_argv) else "")
            if _n.isdigit():
                for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                    os.environ[_v] = _n
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np  # noqa: E402

from benchmarks.common import (REPO, Config, batches_per_epoch, fmt_s, fmt_x, interleaved_steps,  # noqa: E402
                               paired_ratio, start, stats, torch_or_reason,
                               write_json)

BATCH = 128
LR = 1e-3
NETWORKS = {"cnn": "conv32-conv64-pool-dense128", "cnn-pool": "conv32-pool-conv64-pool-dense128"}
CHUNK = 10  # steps per turn


def mnist_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The training set as the cnn preset sees it: (60000, 1, 28, 28) float32, x/255 minus the
    pixel mean, permuted once so that batches are contiguous slices; int64 labels."""
    from graphnet.datasets import mnist
    x, y, _, _ = mnist.load()
    X = x.reshape(-1, 1, 28, 28).astype(np.float32)
    X *= np.float32(1 / 255)
    X -= X.mean(axis=0)
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    return np.ascontiguousarray(X[perm]), y[perm].astype(np.int64)


class GraphnetCNN:
    """An example network on graphnet's NumPy backend: one ``Adam.minimize`` per batch (as the Trainer)."""

    name = "graphnet"

    def __init__(self, X: np.ndarray, Y: np.ndarray, seed: int, model: str = "cnn") -> None:
        import graphnet as gn
        from graphnet import optim

        from examples.mnist.config import mnist_cnn
        gn.set_backend("numpy")
        gn.seed(seed)
        self.gn = gn
        self.net = mnist_cnn({"model": model})
        self.x = gn.Input("images", shape=(None, 1, 28, 28))
        self.y = gn.Input("labels", shape=(None,), dtype="int64")
        self.logits = self.net(self.x)
        self.graph = gn.Graph(self.logits, cost=gn.softmax_cross_entropy(self.logits, self.y))
        self.opt = optim.Adam(self.net.parameters(), lr=LR)
        self.X, self.Y = X, Y

    def run_steps(self, start: int, stop: int) -> None:
        for i in range(start, stop):
            sl = slice(i * BATCH, (i + 1) * BATCH)
            self.opt.minimize(self.graph, {self.x: self.X[sl], self.y: self.Y[sl]})

    def eval_logits(self, xb: np.ndarray) -> np.ndarray:
        return np.asarray(self.gn.Graph(self.logits).run({self.x: xb}, training=False))

    def weights(self) -> list[np.ndarray]:
        return [np.array(self.gn.to_numpy(p.value)) for p in self.net.parameters()]


def torch_layers(nn: Any, model: str) -> list:
    """PyTorch's layers for an example network, in graphnet's order."""
    if model == "cnn":
        return [nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.MaxPool2d(2), nn.ReLU(),
                nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(128, 10)]
    if model == "cnn-pool":
        return [nn.Conv2d(1, 32, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(32, 64, 3),
                nn.MaxPool2d(2), nn.ReLU(), nn.Dropout(0.25), nn.Flatten(), nn.Linear(1600, 128),
                nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10)]
    raise ValueError(f"no PyTorch twin for model {model!r}; choose 'cnn' or 'cnn-pool'")


class TorchCNN:
    """The same layers in PyTorch (CPU), started from graphnet's initial weights."""

    name = "pytorch"

    def __init__(self, torch: Any, X: np.ndarray, Y: np.ndarray, weights: list[np.ndarray],
                 model: str = "cnn", lr: float = LR) -> None:
        nn = torch.nn
        self.torch = torch
        self.model = nn.Sequential(*torch_layers(nn, model))
        layers = [m for m in self.model if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            for layer, w, b in zip(layers, weights[0::2], weights[1::2]):
                if isinstance(layer, nn.Linear):
                    w = np.ascontiguousarray(w.T)  # graphnet: (in, out)
                layer.weight.copy_(torch.from_numpy(w))
                layer.bias.copy_(torch.from_numpy(b))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.loss = nn.CrossEntropyLoss()
        self.X, self.Y = torch.from_numpy(X), torch.from_numpy(Y)

    def run_steps(self, start: int, stop: int) -> None:
        self.model.train()
        for i in range(start, stop):
            xb, yb = self.X[i * BATCH:(i + 1) * BATCH], self.Y[i * BATCH:(i + 1) * BATCH]
            self.opt.zero_grad(set_to_none=True)
            self.loss(self.model(xb), yb).backward()
            self.opt.step()

    def eval_logits(self, xb: np.ndarray) -> np.ndarray:
        self.model.eval()
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(xb)).numpy()


def run(cfg: Config, steps: Optional[int] = None, rounds: Optional[int] = None,
        model: str = "cnn") -> dict:
    full_steps = batches_per_epoch(BATCH)
    steps = min(steps or cfg.pick(100, 6), full_steps)
    rounds = rounds or cfg.pick(5, 2)
    torch, why_no_torch = torch_or_reason(cfg)
    notes = [why_no_torch] if why_no_torch else []
    X, Y = mnist_images(cfg.seed)
    cs: dict[str, Any] = {"graphnet": GraphnetCNN(X, Y, cfg.seed, model)}
    agreement = None
    if torch is not None:
        cs["pytorch"] = TorchCNN(torch, X, Y, cs["graphnet"].weights(), model)
        xb = X[-256:]
        a, b = cs["graphnet"].eval_logits(xb), cs["pytorch"].eval_logits(xb)
        agreement = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))
        if agreement > 1e-3:
            notes.append(f"WARNING: graphnet and PyTorch logits differ (relative {agreement:.2g})")
    t0 = time.perf_counter()
    times, _ = interleaved_steps({n: c.run_steps for n, c in cs.items()}, steps, CHUNK,
                                 rounds=rounds, warmup=1)
    wall = time.perf_counter() - t0
    scale = full_steps / steps
    res: dict[str, Any] = {
        "benchmark": "cnn" if model == "cnn" else "cnn_pool", "model": model,
        "network": f"mnist_cnn {model} ({NETWORKS[model]})",
        "batch": BATCH, "optimizer": f"adam lr={LR}", "dtype": "float32", "threads": cfg.threads,
        "steps_timed_per_round": steps, "steps_per_epoch": full_steps, "rounds": rounds,
        "warmup_rounds": 1, "chunk": CHUNK, "wall_seconds": wall,
        "logits_max_relative_difference": agreement, "notes": notes, "contenders": {}}
    for name, ts in times.items():
        per_epoch = [t * scale for t in ts]
        res["contenders"][name] = {"seconds_per_round": stats(ts), "seconds_per_epoch": stats(per_epoch),
                                   "ms_per_step": stats([1e3 * t / steps for t in ts])}
    if "pytorch" in times:
        res["ratio_graphnet_over_pytorch"] = paired_ratio(times["graphnet"], times["pytorch"])
    return res


def summary(res: dict) -> list[list[str]]:
    rows = []
    for name, c in res["contenders"].items():
        rows.append([res["benchmark"], name, fmt_s(c["seconds_per_epoch"]["median"]) + "/epoch",
                     f"{c['ms_per_step']['median']:.0f} ms/step"])
    if res.get("ratio_graphnet_over_pytorch") is not None:
        rows.append([res["benchmark"], "graphnet / pytorch",
                     fmt_x(res["ratio_graphnet_over_pytorch"]), ""])
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help="batches timed per round (default 100; scaled to an epoch)")
    p.add_argument("--full", action="store_true", help="time whole epochs (469 batches) per round")
    p.add_argument("--rounds", type=int, help="timed rounds after the warm-up (default 5)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="BLAS and torch threads (default: all cores)")
    p.add_argument("--model", choices=sorted(NETWORKS), default="cnn",
                   help="the example network (default: cnn, the classic one)")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for cnn.json")
    args = p.parse_args(argv)
    cfg = Config(quick=args.quick, threads=args.threads, out=Path(args.out), use_torch=not args.no_torch)
    machine = start(cfg, "cnn benchmark")
    res = run(cfg, steps=batches_per_epoch(BATCH) if args.full else args.steps, rounds=args.rounds,
              model=args.model)
    res["machine"] = machine
    res["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for note in res["notes"]:
        print(f"   {note}")
    for name, c in res["contenders"].items():
        print(f"   {name:9s} {c['seconds_per_epoch']['median']:7.1f} s/epoch "
              f"({c['ms_per_step']['median']:.0f} ms/step; epochs scaled from "
              f"{res['steps_timed_per_round']} steps x {res['rounds']} rounds)")
    r = res.get("ratio_graphnet_over_pytorch")
    if r is not None:
        print(f"   graphnet / pytorch = {r:.2f}x (median of paired rounds; logits agree to "
              f"{res['logits_max_relative_difference']:.1e} relative)")
    default_threads = args.threads == (os.cpu_count() or 1)
    stem = res["benchmark"]
    path = Path(args.out) / (f"{stem}.json" if default_threads else f"{stem}_threads{args.threads}.json")
    write_json(path, res)
    print(f"   wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
