"""Benchmark 3: graphnet step time against hidden width and against batch size.

One hidden layer, ReLU, 784 -> H -> 10, plain SGD on MNIST. At each point three things are
timed, interleaved: graphnet's step, the hand-written NumPy loop's step, and the bare matrix
products of one step (``gemm``: forward x@W1, h@W2; backward h.T@d, d@W2.T, x.T@dh). So

    graphnet - loop   = what the engine adds (Python dispatch, allocation, extra passes),
    loop - gemm       = elementwise work (bias, activation, softmax, SGD): memory-bound,
    gemm              = the matrix products: compute-bound once they are large enough.

The FLOP count is the useful one (forward + both backward products, minus the unneeded
gradient of the images). Epoch time is step time x ceil(60000 / batch).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .common import (Config, batches_per_epoch, fmt_s, fmt_x, interleaved_steps, mlp_flops,
                     mnist_train, stats)
from .contenders import GraphnetMLP, LoopMLP

WIDTHS = [256, 512, 1024, 2048, 4096]
BATCHES = [32, 64, 128, 256, 512, 1024, 2048]
WIDTH_BATCH = 128
BATCH_WIDTH = 1024
LR = 0.01


class Gemm:
    """Only the five matrix products of one step, into preallocated outputs."""

    def __init__(self, X: np.ndarray, hidden: int, batch: int) -> None:
        rng = np.random.default_rng(0)
        self.X, self.batch = X, batch
        n_in = X.shape[1]
        f = np.float32
        self.W1 = rng.standard_normal((n_in, hidden), dtype=f) * 0.01
        self.W2 = rng.standard_normal((hidden, 10), dtype=f) * 0.01
        self.h = np.empty((batch, hidden), f)
        self.o = np.empty((batch, 10), f)
        self.gW1, self.gW2 = np.empty_like(self.W1), np.empty_like(self.W2)
        self.dh = np.empty((batch, hidden), f)

    def run_steps(self, start: int, stop: int) -> None:
        X, b = self.X, self.batch
        for i in range(start, stop):
            xb = X[i * b:(i + 1) * b]
            np.matmul(xb, self.W1, out=self.h)
            np.matmul(self.h, self.W2, out=self.o)
            np.matmul(self.h.T, self.o, out=self.gW2)
            np.matmul(self.o, self.W2.T, out=self.dh)
            np.matmul(xb.T, self.dh, out=self.gW1)


def _point(cfg: Config, X: np.ndarray, Y: np.ndarray, hidden: int, batch: int, budget: float) -> dict:
    layers = [hidden, 10]
    fl = mlp_flops(layers, batch)["useful"]
    max_steps = X.shape[0] // batch
    steps = int(min(max_steps, max(3, round(budget / fl))))
    g = GraphnetMLP(layers, "relu", LR, cfg.seed)
    g.set_data(X, Y, batch, steps)
    loop = LoopMLP(g.weights(), "relu", LR, batch)
    loop.set_data(X, Y, steps)
    gemm = Gemm(X, hidden, batch)
    runners = {"graphnet": g.run_steps, "numpy-loop": loop.run_steps, "gemm": gemm.run_steps}
    times, _ = interleaved_steps(runners, steps, max(1, -(-steps // 4)), rounds=cfg.pick(3, 2))
    out: dict[str, Any] = {"hidden": hidden, "batch": batch, "steps_timed": steps,
                           "flops_per_step": fl}
    per_epoch = batches_per_epoch(batch)
    for n, ts in times.items():
        st = stats([t / steps for t in ts])
        out[n] = {"step_seconds": st, "gflops": fl / st["median"] / 1e9,
                  "epoch_seconds": st["median"] * per_epoch}
    tg, tl, tm = (out[n]["step_seconds"]["median"] for n in ("graphnet", "numpy-loop", "gemm"))
    out["graphnet/numpy-loop"] = tg / tl
    out["gemm_share_of_graphnet"] = tm / tg
    # the product graphnet may compute for nothing (d loss / d images), at this point's gemm rate
    wasted = 0.0
    out["graphnet_computes_image_gradient"] = g.computes_image_gradient()
    if out["graphnet_computes_image_gradient"]:
        wasted = mlp_flops(layers, batch)["first_layer_input_grad"] / (fl / tm)
    out["breakdown_us_per_step"] = {
        "matrix products": tm * 1e6,
        "elementwise passes (loop - products)": (tl - tm) * 1e6,
        "unneeded image-gradient product (estimated)": wasted * 1e6,
        "engine overhead (graphnet - loop - unneeded product)": (tg - tl - wasted) * 1e6}
    out["regime"] = regime(tg, tl, tm, wasted)
    return out


def regime(tg: float, tl: float, tm: float, wasted: float) -> str:
    """A one-line diagnosis of what takes graphnet's step time at this size."""
    parts = {"matrix products": tm, "elementwise (memory-bound)": max(tl - tm, 0),
             "unneeded image gradient": wasted, "engine overhead": max(tg - tl - wasted, 0)}
    ranked = sorted(parts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v / tg:.0%}" for k, v in ranked if v / tg >= 0.05)


def run(cfg: Config) -> dict:
    X, Y = mnist_train(cfg.seed)
    budget = cfg.pick(25e9, 2e9)  # FLOPs per timed round (about 0.2-0.4 s at 60-180 GFLOP/s)
    widths = cfg.pick(WIDTHS, [256, 2048])
    batches = cfg.pick(BATCHES, [32, 512])
    by_width = [_point(cfg, X, Y, h, WIDTH_BATCH, budget) for h in widths]
    by_batch = [_point(cfg, X, Y, BATCH_WIDTH, b, budget) for b in batches]
    return {
        "benchmark": "scaling",
        "description": "784 -> H -> 10 ReLU MLP, SGD, MNIST; graphnet vs the hand-written NumPy "
                       "loop vs the bare matrix products of one step",
        "config": {"widths": widths, "width_sweep_batch": WIDTH_BATCH, "batches": batches,
                   "batch_sweep_hidden": BATCH_WIDTH, "flop_budget_per_round": budget},
        "by_width": by_width,
        "by_batch": by_batch,
        "notes": [],
    }


def summary(r: dict) -> list[list[str]]:
    rows = []
    for p in r["by_width"] + r["by_batch"]:
        g = p["graphnet"]
        rows.append(["scaling", f"H={p['hidden']} B={p['batch']}",
                     fmt_s(g["epoch_seconds"]) + " /epoch",
                     "vs loop " + fmt_x(p["graphnet/numpy-loop"]),
                     f"{g['gflops']:.1f} GF/s (gemm {p['gemm']['gflops']:.0f})",
                     p["regime"]])
    return rows
