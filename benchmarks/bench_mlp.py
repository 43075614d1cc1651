"""Benchmarks 1 and 2: one MNIST epoch of an MLP, graphnet vs a hand-written NumPy loop vs PyTorch CPU.

Same initial weights, same pre-permuted contiguous batches of 128, plain SGD, float32. The
contenders take turns of 20 steps, round-robin (the order rotating each turn), so a burst of
load on a shared machine hits all of them; a contender's epoch time is the sum of its turns.
After a warm-up epoch, each figure is the median over the timed epochs. ``mlp_large`` also
times a float32 2048x2048 ``A @ B`` about three times per epoch, between turns, to express
the achieved FLOP rate as a fraction of the machine's matrix-product rate in the same run.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .common import (Config, batches_per_epoch, epoch_flops, fmt_s, fmt_x, mlp_flops, mnist_train,
                     paired_ratio, ratio, stats, torch_or_reason, interleaved_steps)
from .contenders import agreement, make_contenders

BATCH = 128
CASES: dict[str, dict[str, Any]] = {
    "mlp_small": dict(layers=[128, 64, 10], activation="tanh", lr=0.5, gemm=False,
                      targets=[("graphnet", "numpy-loop", 1.10), ("graphnet", "pytorch", 1.0)]),
    "mlp_large": dict(layers=[800, 800, 10], activation="relu", lr=0.05, gemm=True,
                      targets=[("graphnet", "pytorch", 1.0), ("graphnet", "numpy-loop", 1.05)]),
}
GEMM_N = 2048
CHUNK = 20  # steps per turn when interleaving (see common.interleaved_steps)


def run(cfg: Config, name: str) -> dict:
    case = CASES[name]
    layers, act = case["layers"], case["activation"]
    full_steps = batches_per_epoch(BATCH)
    steps = cfg.pick(full_steps, 40)
    rounds, warmup = cfg.pick(5, 3), 1
    torch, why_no_torch = torch_or_reason(cfg)
    X, Y = mnist_train(cfg.seed)
    cs = make_contenders(layers, act, case["lr"], BATCH, X, Y, full_steps, torch, cfg.seed)
    check = agreement(list(cs.values()), steps=3)
    image_grad = cs["graphnet"].computes_image_gradient()

    runners = {n: c.run_steps for n, c in cs.items()}
    gemm_every = max(1, steps // CHUNK // 3)  # about 3 matrix products per round
    gemm = _reference_product() if case["gemm"] else None
    t0 = time.perf_counter()
    times, gemm_times = interleaved_steps(runners, steps, CHUNK, rounds=rounds, warmup=warmup,
                                          extra=gemm, extra_every=gemm_every)
    wall = time.perf_counter() - t0

    samples = min(steps * BATCH, X.shape[0])
    flops = epoch_flops(layers, BATCH, samples)
    textbook = epoch_flops(layers, BATCH, samples, kind="textbook")
    scale = full_steps / steps
    res: dict[str, Any] = {}
    for n in cs:
        st = stats(times[n])
        st["epoch_seconds"] = st["median"] * scale
        st["step_ms"] = st["median"] / steps * 1e3
        st["gflops"] = flops / st["median"] / 1e9
        res[n] = st
    gemm_rate = None
    if case["gemm"]:
        gt = stats(gemm_times)
        gemm_rate = {"n": GEMM_N, "seconds": gt, "gflops": 2 * GEMM_N ** 3 / gt["median"] / 1e9,
                     "gflops_best": 2 * GEMM_N ** 3 / gt["min"] / 1e9}
        for n in cs:
            res[n]["fraction_of_gemm_rate"] = res[n]["gflops"] / gemm_rate["gflops"]

    ratios = {}
    names = list(cs)
    for i, a_ in enumerate(names):
        for b_ in names[i + 1:]:
            ratios[f"{a_}/{b_}"] = {"of_medians": ratio(res[a_]["median"], res[b_]["median"]),
                                    "paired_median": paired_ratio(times[a_], times[b_])}
    targets = []
    for a_, b_, limit in case["targets"]:
        key = f"{a_}/{b_}"
        r = ratios.get(key, {}).get("of_medians")
        targets.append({"ratio": key, "target": f"<= {limit}", "value": r,
                        "met": None if r is None else r <= limit,
                        "note": why_no_torch if r is None else None})
    notes = []
    if why_no_torch:
        notes.append(why_no_torch)
    if steps != full_steps:
        notes.append(f"quick mode: {steps} of {full_steps} steps timed per round; epoch_seconds "
                     "extrapolated")
    return {
        "benchmark": name,
        "description": f"MLP {layers} {act}, batch {BATCH}, plain SGD lr={case['lr']}, real MNIST "
                       f"({X.shape[0]} images); one epoch = {full_steps} steps",
        "config": {"layers": layers, "activation": act, "batch": BATCH, "lr": case["lr"],
                   "steps_timed": steps, "steps_per_epoch": full_steps, "rounds": rounds,
                   "warmup_rounds": warmup, "interleaved": f"round-robin in turns of {CHUNK} steps"},
        "flops": {"per_step": mlp_flops(layers, BATCH), "per_timed_round_useful": flops,
                  "per_timed_round_textbook": textbook},
        "agreement": check,
        "graphnet_computes_image_gradient": image_grad,
        "results": res,
        "gemm": gemm_rate,
        "ratios": ratios,
        "targets": targets,
        "wall_seconds": wall,
        "notes": notes,
    }


def _reference_product() -> Any:
    """A float32 GEMM_N x GEMM_N ``A @ B`` into a preallocated output (warmed up once)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    b = rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    return lambda: np.matmul(a, b, out=out)


def summary(r: dict) -> list[list[str]]:
    rows = []
    loop = r["results"].get("numpy-loop", {}).get("median")
    torch = r["results"].get("pytorch", {}).get("median")
    for n, st in r["results"].items():
        frac = st.get("fraction_of_gemm_rate")
        rows.append([r["benchmark"], n, fmt_s(st["epoch_seconds"]) + " /epoch",
                     "vs loop " + fmt_x(ratio(st["median"], loop)),
                     "vs torch " + fmt_x(ratio(st["median"], torch)),
                     f"{st['gflops']:.1f} GF/s" + (f" ({frac:.0%} of gemm)" if frac else "")])
    if r.get("gemm"):
        rows.append([r["benchmark"], "gemm 2048", fmt_s(r["gemm"]["seconds"]["median"]), "", "",
                     f"{r['gemm']['gflops']:.1f} GF/s"])
    return rows
