"""Benchmark 6: the two MLPs on a CUDA GPU: graphnet on CuPy vs PyTorch CUDA (vs the NumPy backend).

Runs only where graphnet's CuPy backend is usable (CuPy installed and a CUDA device); the
PyTorch CUDA column needs ``torch.cuda.is_available()``. Elsewhere it is skipped with the
reason. Run it on a GPU machine with

    GRAPHNET_BACKEND=cupy python benchmarks/run.py --only gpu

Every contender keeps the whole (pre-permuted) training set on its device; timers are read
only after ``backend().synchronize()`` / ``torch.cuda.synchronize()``. Also timed, in the
same rounds: a hand-written CuPy loop (the same arithmetic, in preallocated buffers) and
graphnet on the NumPy backend, for the speed-up of the GPU over the host. The CuPy memory
pool (used and held bytes) is read after the timed rounds.
"""
from __future__ import annotations

from typing import Any, Optional

from .common import (Config, batches_per_epoch, fmt_s, fmt_x, interleaved_steps, mnist_train,
                     paired_ratio, ratio, stats, torch_or_reason)
from .contenders import GraphnetMLP, LoopMLP, TorchMLP, agreement

BATCH = 128
CHUNK = 20  # steps per turn (the device is synchronised at the end of each turn)
CASES = {"mlp_small": ([128, 64, 10], "tanh", 0.5), "mlp_large": ([800, 800, 10], "relu", 0.05)}


def cupy_or_reason() -> tuple[Any, Optional[str]]:
    import graphnet as gn
    try:
        b = gn.get_backend("cupy")
    except gn.BackendUnavailableError as exc:
        return None, f"GPU benchmark skipped: {exc}"
    return b, None


def run(cfg: Config, _backend_name: str = "cupy") -> dict:
    """``_backend_name`` lets the smoke test drive this code on the NumPy backend (dry run)."""
    import graphnet as gn
    if _backend_name == "cupy":
        b, why = cupy_or_reason()
        if b is None:
            print(f"   {why}")
            return {"benchmark": "gpu", "skipped": True, "reason": why, "notes": [why], "targets": []}
    else:
        b = gn.get_backend(_backend_name)
    host = gn.get_backend("numpy")
    torch, why_no_torch = torch_or_reason(cfg)
    notes = []
    device = "cuda"
    if torch is not None and not torch.cuda.is_available():
        if _backend_name == "cupy":
            why_no_torch = "PyTorch CUDA column skipped: torch.cuda.is_available() is False"
            torch = None
        else:
            device = "cpu"  # dry run
    if why_no_torch:
        notes.append(why_no_torch)
    X, Y = mnist_train(cfg.seed)
    full_steps = batches_per_epoch(BATCH)
    steps = cfg.pick(full_steps, 40)
    rounds = cfg.pick(5, 3)
    out: dict[str, Any] = {"benchmark": "gpu", "device": b.device_name(), "versions": b.versions(),
                           "torch_device": None if torch is None else (
                               torch.cuda.get_device_name() if device == "cuda" else "cpu"),
                           "cases": {}, "notes": notes, "targets": []}
    for case, (layers, act, lr) in CASES.items():
        cs: dict[str, Any] = {}
        with gn.use_backend(b):
            g = GraphnetMLP(layers, act, lr, cfg.seed)
            g.set_data(X, Y, BATCH, full_steps)
            g.name = f"graphnet-{b.name}"
        cs[g.name] = g
        w0 = g.weights()
        loop = LoopMLP(w0, act, lr, BATCH, xp=b.xp)
        loop.set_data(X, Y, full_steps)
        loop.name = f"{b.name}-loop"
        cs[loop.name] = loop
        if torch is not None:
            t = TorchMLP(torch, w0, act, lr, device=device)
            t.set_data(X, Y, BATCH, full_steps)
            t.name = f"pytorch-{device}"
            cs[t.name] = t
        with gn.use_backend(host):
            gh = GraphnetMLP(layers, act, lr, cfg.seed)
            gh.set_data(X, Y, BATCH, full_steps)
            gh.name = "graphnet-host-numpy"
        cs[gh.name] = gh
        with gn.use_backend(b):
            check = agreement([cs[n] for n in cs if n != gh.name], steps=3)
        syncs = {n: c.sync for n, c in cs.items()}

        def runner(c: Any) -> Any:
            be = host if c is gh else b

            def go(start: int, stop: int) -> None:
                with gn.use_backend(be):
                    c.run_steps(start, stop)
            return go
        if _backend_name == "cupy":
            b.xp.get_default_memory_pool().free_all_blocks()
        times, _ = interleaved_steps({n: runner(c) for n, c in cs.items()}, steps, CHUNK,
                                     rounds=rounds, warmup=1, sync=syncs)
        res = {}
        for n in cs:
            st = stats(times[n])
            st["epoch_seconds"] = st["median"] * full_steps / steps
            res[n] = st
        gname, tname = g.name, f"pytorch-{device}"
        ratios = {
            f"{gname}/{tname}": {"of_medians": ratio(res[gname]["median"], res.get(tname, {}).get("median")),
                                 "paired_median": paired_ratio(times[gname], times[tname])
                                 if tname in times else None},
            f"{gname}/{loop.name}": {"of_medians": ratio(res[gname]["median"], res[loop.name]["median"]),
                                     "paired_median": paired_ratio(times[gname], times[loop.name])},
            f"speed-up of {gname} over graphnet-host-numpy": ratio(res[gh.name]["median"], res[gname]["median"]),
        }
        out["cases"][case] = {"layers": layers, "activation": act, "steps_timed": steps,
                              "steps_per_epoch": full_steps, "rounds": rounds, "agreement": check,
                              "results": res, "ratios": ratios,
                              "memory": b.memory_info(),
                              "memory_note": "on CuPy, pool_held_bytes is the pool's high-water mark "
                                             "for this case (its blocks were freed before it)"}
        r = ratios[f"{gname}/{tname}"]["of_medians"]
        out["targets"].append({"ratio": f"{case} {gname}/{tname}", "target": "<= 1.0", "value": r,
                               "met": None if r is None else r <= 1.0, "note": why_no_torch})
    if steps != full_steps:
        notes.append(f"quick mode: {steps} of {full_steps} steps per round; epoch_seconds extrapolated")
    return out


def summary(r: dict) -> list[list[str]]:
    if r.get("skipped"):
        return [["gpu", "skipped", "", "", "", "(see the note above)"]]
    rows = []
    for case, c in r["cases"].items():
        names = list(c["results"])
        gname = names[0]
        for n, st in c["results"].items():
            rows.append(["gpu " + case, n, fmt_s(st["epoch_seconds"]) + " /epoch",
                         "graphnet vs this " + fmt_x(ratio(c["results"][gname]["median"], st["median"])),
                         "", ""])
    return rows
