"""The MNIST MLP and CNN epoch on a GPU: graphnet on CuPy (without and with CUDA-graph replay,
where graphnet has that option) against PyTorch CUDA eager. Used by ``gpu_check.sh``.

    GRAPHNET_BACKEND=cupy python3 -m benchmarks.bench_gpu_epoch --out results/epoch.json

Networks: the ``fast`` preset's MLP (784-512-256-10 ReLU, SGD with Nesterov momentum 0.9,
lr 0.05) and the ``cnn`` preset (conv 32, conv 64, max-pool, dense 128, dropouts; Adam 1e-3),
batches of 128, float32. PyTorch starts from graphnet's initial weights and the first batch's
loss of the two is compared. The data are random (timings do not depend on the values):
``steps`` batches on the device, timed in turns (``benchmarks.common.interleaved_steps``,
the device synchronised around each turn) and scaled to an epoch of 469 batches.
Prints one line per figure; every line says EMULATED when ``cupy`` is the CPU emulation.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_cnn import BATCH, TorchCNN  # noqa: E402
from benchmarks.common import (batches_per_epoch, interleaved_steps, stats,  # noqa: E402
                               write_json)

class GraphnetNet:
    """One network on graphnet's active backend: one ``minimize`` per batch, as the Trainer."""

    def __init__(self, case: str, X: Any, Y: Any, seed: int, replay: bool = False) -> None:
        import graphnet as gn
        from graphnet import nn, optim

        from examples.mnist.config import mnist_cnn
        gn.seed(seed)
        self.b = gn.backend()
        if case == "mlp":
            self.net = nn.MLP([512, 256, 10], 784, "relu", 0.0)
            self.x = gn.Input("images", shape=(None, 784))
        else:
            self.net = mnist_cnn({"model": "cnn"})
            self.x = gn.Input("images", shape=(None, 1, 28, 28))
        self.y = gn.Input("labels", shape=(None,), dtype="int64")
        logits = self.net(self.x)
        self.cost = gn.softmax_cross_entropy(logits, self.y)
        self.graph = gn.Graph(logits, cost=self.cost)
        params = self.net.parameters()
        self.opt = (optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True) if case == "mlp"
                    else optim.Adam(params, lr=1e-3))
        if replay:  # CUDA-graph replay (graphnet.capture); CaptureError where it cannot be
            from graphnet.capture import CapturedStep
            self.step = CapturedStep(self.graph, self.opt).minimize
        else:
            self.step = lambda feed: self.opt.minimize(self.graph, feed)
        self.X, self.Y = self.b.asarray(X), self.b.asarray(Y)

    def run_steps(self, start: int, stop: int) -> None:
        for i in range(start, stop):
            sl = slice(i * BATCH, (i + 1) * BATCH)
            self.step({self.x: self.X[sl], self.y: self.Y[sl]})

    def first_loss(self) -> float:
        import graphnet as gn
        feed = {self.x: self.X[:BATCH], self.y: self.Y[:BATCH]}
        return float(gn.to_numpy(gn.Graph(self.cost).run(feed)))

    def weights(self) -> list:
        import graphnet as gn
        return [np.array(gn.to_numpy(p.value)) for p in self.net.parameters()]


class TorchNet(TorchCNN):
    """The same layers in PyTorch eager on ``device``, from graphnet's initial weights
    (``run_steps``, batches of 128, is the CNN benchmark's)."""

    def __init__(self, torch: Any, case: str, X: np.ndarray, Y: np.ndarray, weights: list,
                 device: str) -> None:
        nn = torch.nn
        self.torch, self.device = torch, device
        if case == "mlp":
            self.model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256),
                                       nn.ReLU(), nn.Linear(256, 10))
        else:
            self.model = nn.Sequential(
                nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.MaxPool2d(2), nn.ReLU(),
                nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(128, 10))
        layers = [m for m in self.model if isinstance(m, (nn.Linear, nn.Conv2d))]
        with torch.no_grad():
            for layer, w, b in zip(layers, weights[0::2], weights[1::2]):
                w = w.T if isinstance(layer, nn.Linear) else w  # graphnet's dense W is (in, out)
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                layer.bias.copy_(torch.from_numpy(b))
        self.model.to(device)
        params = self.model.parameters()
        self.opt = (torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True) if case == "mlp"
                    else torch.optim.Adam(params, lr=1e-3))
        self.loss = nn.CrossEntropyLoss()
        self.X, self.Y = torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device)

    def first_loss(self) -> float:
        self.model.eval()
        with self.torch.no_grad():
            return float(self.loss(self.model(self.X[:BATCH]), self.Y[:BATCH]))

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def torch_cuda_or_reason() -> tuple[Any, Optional[str]]:
    """PyTorch with a CUDA device, or None and why not."""
    try:
        import torch
    except ImportError as exc:
        return None, f"PyTorch column skipped: torch is not importable ({exc})"
    if not torch.cuda.is_available():
        return None, "PyTorch column skipped: torch.cuda.is_available() is False"
    return torch, None


def run_case(case: str, steps: int, rounds: int, seed: int, emulated: bool) -> dict:
    """Epoch times of one network: graphnet (and with replay), PyTorch CUDA eager."""
    import graphnet as gn
    rng = np.random.default_rng(seed)
    shape = (steps * BATCH, 784) if case == "mlp" else (steps * BATCH, 1, 28, 28)
    X = rng.standard_normal(shape, dtype=np.float32)
    Y = rng.integers(0, 10, steps * BATCH).astype(np.int64)
    b = gn.backend()
    runners: dict[str, Any] = {"graphnet-cupy": GraphnetNet(case, X, Y, seed)}
    notes = []
    from graphnet.capture import CaptureError
    try:
        runners["graphnet-cupy-replay"] = GraphnetNet(case, X, Y, seed, replay=True)
    except CaptureError as exc:  # e.g. the preset CNN's dropout: one mask would be replayed
        notes.append(f"CUDA-graph replay: refused for this network: {exc}")
    torch, why = torch_cuda_or_reason()
    if emulated and torch is not None:
        torch, why = None, "PyTorch column skipped: the emulation has no CUDA device"
    if torch is None:
        notes.append(why)
    else:
        runners["pytorch-cuda-eager"] = TorchNet(torch, case, X, Y,
                                                 runners["graphnet-cupy"].weights(), "cuda")
    losses = {n: r.first_loss() for n, r in runners.items()}
    syncs = {n: (r.sync if isinstance(r, TorchNet) else b.synchronize) for n, r in runners.items()}
    chunk = max(1, steps // 4)
    times, _ = interleaved_steps({n: r.run_steps for n, r in runners.items()}, steps, chunk,
                                 rounds=rounds, warmup=1, sync=syncs)
    scale = batches_per_epoch(BATCH) / steps
    return {"steps_timed": steps, "rounds": rounds, "first_batch_loss": losses, "notes": notes,
            "epoch_seconds": {n: stats([t * scale for t in ts])["median"] for n, ts in times.items()}}


def report(case: str, r: dict, tag: str) -> list[str]:
    """The result lines for one case (each prefixed with ``tag``)."""
    lines = [f"{tag}epoch {case}: {n} {s:.3f} s/epoch (median of {r['rounds']} rounds of "
             f"{r['steps_timed']} steps, scaled to 469)" for n, s in r["epoch_seconds"].items()]
    eps = r["epoch_seconds"]
    base = eps.get("pytorch-cuda-eager")
    for n in ("graphnet-cupy", "graphnet-cupy-replay"):
        if base and n in eps:
            lines.append(f"{tag}epoch {case}: {n} / pytorch-cuda-eager = {eps[n] / base:.2f}x")
    losses = ", ".join(f"{n} {v:.4f}" for n, v in r["first_batch_loss"].items())
    lines.append(f"{tag}epoch {case}: first-batch loss {losses}")
    lines += [f"{tag}epoch {case}: {note}" for note in r["notes"]]
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="batches per timed round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up")
    p.add_argument("--cases", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--out", type=Path, help="JSON file for the results")
    args = p.parse_args(argv)
    import graphnet as gn
    b = gn.backend()
    emulated = bool(getattr(b.xp, "__graphnet_emulation__", False))
    tag = "EMULATED: " if emulated else ""
    if b.name != "cupy":
        print(f"{tag}epoch: the active backend is {b.name!r}, not cupy (set GRAPHNET_BACKEND=cupy)")
        return 2
    results = {}
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        results[case] = run_case(case, args.steps, args.rounds, 0, emulated)
        print("\n".join(report(case, results[case], tag)), flush=True)
    if args.out:
        write_json(args.out, {"device": b.device_name(), "emulated": emulated, "cases": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
