"""Run graphnet's benchmarks, write one JSON file per benchmark and print a summary table.

    python benchmarks/run.py                    # everything (about 5-10 minutes on 2 cores)
    python benchmarks/run.py --quick            # a few steps of each, under a minute
    python benchmarks/run.py --only mlp_large   # names: see --list; 'mlp' (or 'cli') selects both sizes
    python benchmarks/run.py --only cnn         # both CNNs step by step and the cnn preset's CLI epoch, vs PyTorch
    GRAPHNET_BACKEND=cupy python benchmarks/run.py --only gpu   # on a CUDA machine

Figures are medians over timed rounds after a warm-up, with all contenders interleaved
round-robin in the same run; compare ratios, not absolute times, across runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``graphnet`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import (bench_cli, bench_cnn, bench_cnn_cli, bench_gpu, bench_memory, bench_mlp,  # noqa: E402
                        bench_overhead, bench_scaling)
from benchmarks import profile_step  # noqa: E402
from benchmarks.common import REPO, Config, start, write_json  # noqa: E402

# name -> (run(cfg) -> dict, summary(result) -> rows), in running order
BENCHMARKS: dict[str, tuple[Callable[[Config], dict], Callable[[dict], list]]] = {
    "mlp_small": (lambda cfg: bench_mlp.run(cfg, "mlp_small"), bench_mlp.summary),
    "mlp_large": (lambda cfg: bench_mlp.run(cfg, "mlp_large"), bench_mlp.summary),
    "scaling": (bench_scaling.run, bench_scaling.summary),
    "overhead": (bench_overhead.run, bench_overhead.summary),
    "memory": (bench_memory.run, bench_memory.summary),
    "profile": (profile_step.run, profile_step.summary),
    "gpu": (bench_gpu.run, bench_gpu.summary),
    "cnn": (bench_cnn.run, bench_cnn.summary),
    "cnn_pool": (lambda cfg: bench_cnn.run(cfg, model="cnn-pool"), bench_cnn.summary),
    "cnn_cli": (bench_cnn_cli.run, bench_cnn_cli.summary),
    "cli_small": (lambda cfg: bench_cli.run(cfg, "cli_small"), bench_cli.summary),
    "cli_large": (lambda cfg: bench_cli.run(cfg, "cli_large"), bench_cli.summary),
}


def select(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    out = []
    for w in wanted:
        hits = [n for n in BENCHMARKS if n == w or n.startswith(w + "_")]
        if not hits:
            raise SystemExit(f"unknown benchmark {w!r}; choose from {', '.join(BENCHMARKS)} "
                             "(or 'mlp' / 'cli' for both sizes)")
        out += [h for h in hits if h not in out]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few steps per figure (smoke test, < 1 min)")
    p.add_argument("--only", help="comma-separated benchmark names (see --list)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                   help="folder for the JSON results (default: benchmarks/results)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="BLAS and torch threads (default: all cores)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    p.add_argument("--list", action="store_true", help="list the benchmark names and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    names = select(args.only)
    cfg = Config(quick=args.quick, threads=args.threads, out=Path(args.out), use_torch=not args.no_torch)
    machine = start(cfg, f"graphnet benchmarks{' (quick)' if cfg.quick else ''}")
    busy = busy_warning(machine, cfg.threads)
    if busy:
        machine["busy_warning"] = busy
        print(f"WARNING: {busy}", flush=True)
    rows: list[list[str]] = []
    failed = []
    index: dict[str, Any] = {"machine": machine, "quick": cfg.quick, "benchmarks": {}}
    for name in names:
        run_fn, summary_fn = BENCHMARKS[name]
        t0 = time.perf_counter()
        print(f"-- {name} ...", flush=True)
        try:
            result = run_fn(cfg)
        except Exception:  # noqa: BLE001 - report, keep going with the others
            traceback.print_exc()
            failed.append(name)
            continue
        result.setdefault("benchmark", name)
        result["quick"] = cfg.quick
        result["machine"] = machine
        result["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        result["seconds"] = time.perf_counter() - t0
        path = cfg.out / f"{name}.json"
        write_json(path, result)
        index["benchmarks"][name] = str(path.name)
        new_rows = summary_fn(result)
        rows += new_rows
        for note in result.get("notes", []):
            print(f"   note: {note}")
        for t in result.get("targets", []):
            v = "n/a" if t["value"] is None else f"{t['value']:.3f}"
            met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
            print(f"   target {t['ratio']} {t['target']}: {v} ({met})")
        print(f"   ({result['seconds']:.1f} s) -> {path}", flush=True)
    write_json(cfg.out / "index.json", index)
    table = format_table(rows)
    print("\n" + table)
    (cfg.out / "summary.md").write_text(markdown_table(rows, machine, cfg) + "\n")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def busy_warning(machine: dict, threads: int) -> str | None:
    """A warning when other processes already load the cores (figures will be noisy)."""
    load, cores = (machine.get("load_average") or [0])[0], machine.get("usable_cores") or 1
    if load < 0.75 * cores:
        return None
    msg = (f"the machine is busy (load average {load:.1f} on {cores} cores): absolute times will "
           "be inflated and noisy; compare ratios only")
    if threads > 1:
        msg += (f". With {threads} BLAS threads on oversubscribed cores, small matrix products can "
                "run ~10x slower (threads spin-waiting); consider --threads 1")
    return msg


def format_table(rows: list[list[str]]) -> str:
    if not rows:
        return "(no results)"
    widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(max(map(len, rows)))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def markdown_table(rows: list[list[str]], machine: dict, cfg: Config) -> str:
    head = (f"Measured {machine['date']} on {machine['cpu_model']} ({machine['usable_cores']} cores, "
            f"{cfg.threads} threads), numpy {machine['numpy']}, torch {machine['torch']}, "
            f"load average at start {machine['load_average']}{' (quick mode)' if cfg.quick else ''}\n\n")
    n = max(map(len, rows)) if rows else 1
    header = ["benchmark", "contender / point", "time", "ratio", "ratio", "rate / notes"][:n]
    header += [""] * (n - len(header))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * n]
    for r in rows:
        lines.append("| " + " | ".join(r + [""] * (n - len(r))) + " |")
    return head + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
