"""Benchmark 5: host memory of training, and proof that it does not grow from epoch to epoch.

Each contender trains in a fresh subprocess (so one's allocations cannot hide another's):
graphnet's step loop, graphnet's real ``Trainer.fit`` (one permutation gather per epoch,
evaluation at the end of each), the hand-written NumPy loop, and PyTorch CPU. Each reports

* ``baseline``: RSS after loading the data and building the model;
* ``rss_after_epoch``: RSS after each epoch (growth = last - first);
* ``peak``: the high-water mark while training (VmHWM, reset after setup through
  /proc/self/clear_refs where Linux allows it, else ru_maxrss since start);
* ``step_peak_traced`` (NumPy contenders): the peak of NumPy's own allocations during one
  step, via tracemalloc: the step's working set of temporaries.

On the CuPy backend (GRAPHNET_BACKEND=cupy) the graphnet worker also reports the memory
pool after each epoch (``backend().memory_info()``).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import REPO, Config

LAYERS = [800, 800, 10]
ACT = "relu"
LR = 0.05
BATCH = 128


def _rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _hwm() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(kind: str, epochs: int, steps: int, threads: int) -> dict:
    """Runs in the subprocess: train ``epochs`` epochs of ``steps`` steps, measure memory."""
    sys.path.insert(0, str(REPO))
    from benchmarks.common import mnist_train, set_threads
    set_threads(threads)
    out: dict[str, Any] = {"kind": kind, "epochs": epochs, "steps_per_epoch": steps}
    pool = None
    if kind == "graphnet-trainer":
        import graphnet as gn
        from graphnet import nn, optim
        from graphnet.datasets import mnist
        from graphnet.train import Trainer
        x_raw, y_raw, _, _ = mnist.load()
        x_raw, y_raw = x_raw[:steps * BATCH], y_raw[:steps * BATCH]
        gn.seed(0)
        model = nn.Classifier(nn.MLP(LAYERS, 784, ACT))
        model.fit_preprocessing(x_raw)
        rss_epochs: list[int] = []
        trainer = Trainer(model, optim.SGD(model.parameters(), lr=LR), batch_size=BATCH,
                          progress=False, eval_subset=2000,
                          on_epoch_end=lambda t: rss_epochs.append(_rss()))
        out["baseline_rss"] = _rss()
        out["hwm_reset"] = _reset_hwm()
        t0 = time.perf_counter()
        trainer.fit(x_raw, y_raw, epochs=epochs)
        out["seconds"] = time.perf_counter() - t0
        out["rss_after_epoch"] = rss_epochs
        b = gn.backend()
        if b.name != "numpy":
            out["pool_after_run"] = b.memory_info()
    else:
        from benchmarks.contenders import GraphnetMLP, LoopMLP, TorchMLP
        X, Y = mnist_train()
        g = GraphnetMLP(LAYERS, ACT, LR)
        if kind == "graphnet":
            c = g
            c.set_data(X, Y, BATCH, steps)
            if c.backend.name != "numpy":
                pool = c.backend
        elif kind == "numpy-loop":
            c = LoopMLP(g.weights(), ACT, LR, BATCH)
            c.set_data(X, Y, steps)
        elif kind == "pytorch":
            import torch
            c = TorchMLP(torch, g.weights(), ACT, LR)
            c.set_data(X, Y, BATCH, steps)
        else:
            raise ValueError(kind)
        if kind != "graphnet":
            del g
        out["baseline_rss"] = _rss()
        out["hwm_reset"] = _reset_hwm()
        rss_epochs = []
        pools = []
        t0 = time.perf_counter()
        for _ in range(epochs):
            c.epoch(steps)
            c.sync()
            rss_epochs.append(_rss())
            if pool is not None:
                pools.append(pool.memory_info())
        out["seconds"] = time.perf_counter() - t0
        out["rss_after_epoch"] = rss_epochs
        if pools:
            out["pool_after_epoch"] = pools
        if kind in ("graphnet", "numpy-loop") and pool is None:
            import tracemalloc
            xb, yb = c.X[:BATCH], c.Y[:BATCH]
            c.step(xb, yb)
            tracemalloc.start()
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            c.step(xb, yb)
            cur, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            out["step_peak_traced"] = peak - base
            out["step_retained_traced"] = cur - base
    out["peak_rss"] = _hwm()
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def run(cfg: Config) -> dict:
    from .common import batches_per_epoch, import_torch
    epochs = cfg.pick(4, 2)
    steps = cfg.pick(batches_per_epoch(BATCH), 10)
    kinds = ["graphnet", "graphnet-trainer", "numpy-loop"]
    notes = []
    if cfg.use_torch and import_torch() is not None:
        kinds.append("pytorch")
    else:
        notes.append("PyTorch column skipped: torch is not importable" if cfg.use_torch
                     else "PyTorch column skipped: --no-torch")
    res = {}
    for kind in kinds:
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", kind, str(epochs), str(steps),
               str(cfg.threads)]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        if p.returncode != 0:
            res[kind] = {"error": p.stderr[-2000:]}
            notes.append(f"{kind} worker failed: {p.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        e = r["rss_after_epoch"]
        r["growth_first_to_last_epoch"] = e[-1] - e[0] if e else None
        r["peak_above_baseline"] = r["peak_rss"] - r["baseline_rss"] if r.get("hwm_reset") else None
        res[kind] = r
    return {
        "benchmark": "memory",
        "description": f"MLP {LAYERS} {ACT}, batch {BATCH}, {epochs} epochs of {steps} steps, "
                       "each contender in its own process",
        "config": {"layers": LAYERS, "batch": BATCH, "epochs": epochs, "steps_per_epoch": steps},
        "results": res,
        "notes": notes,
    }


def _mb(x: Any) -> str:
    return "-" if x is None else f"{x / 2**20:.1f} MiB"


def summary(r: dict) -> list[list[str]]:
    rows = []
    for kind, x in r["results"].items():
        if "error" in x:
            rows.append(["memory", kind, "failed", "", "", ""])
            continue
        rows.append(["memory", kind, "peak " + _mb(x["peak_rss"]),
                     "above baseline " + _mb(x.get("peak_above_baseline")),
                     "growth " + _mb(x["growth_first_to_last_epoch"]),
                     ("step temporaries " + _mb(x["step_peak_traced"])) if "step_peak_traced" in x else ""])
    return rows


if __name__ == "__main__":
    kind, epochs, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(worker(kind, epochs, steps, threads)))
