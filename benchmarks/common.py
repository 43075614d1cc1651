"""Shared benchmark plumbing: machine description, thread control, interleaved timing, data, FLOPs.

Every benchmark module exposes ``run(cfg) -> dict`` (the JSON it wants written) and a
``summary(result) -> list[row]`` for the table ``run.py`` prints.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

N_TRAIN = 60000


@dataclass
class Config:
    """What every benchmark gets from ``run.py``."""

    quick: bool = False
    threads: int = os.cpu_count() or 1
    out: Path = REPO / "benchmarks" / "results"
    use_torch: bool = True
    seed: int = 0
    notes: list = field(default_factory=list)

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


# --- machine ------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> list[dict]:
    """The BLAS libraries NumPy (and torch) load, with their thread counts."""
    try:
        import threadpoolctl
        return [{k: v for k, v in d.items() if k in ("user_api", "internal_api", "prefix", "version",
                                                       "num_threads", "threading_layer", "architecture")}
                for d in threadpoolctl.threadpool_info()]
    except ImportError:
        pass
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return [{"internal_api": blas.get("name"), "version": blas.get("version"),
                 "config": blas.get("openblas configuration", "")}]
    except Exception as exc:  # noqa: BLE001 - informational only
        return [{"error": repr(exc)}]


def machine_info(cfg: Config) -> dict:
    torch = import_torch() if cfg.use_torch else None
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads_used": cfg.threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "torch": getattr(torch, "__version__", None),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch_cuda": bool(torch is not None and torch.cuda.is_available()),
    }
    try:
        import graphnet
        info["graphnet"] = graphnet.__version__
        info["graphnet_git"] = _git_rev()
    except ImportError:
        pass
    return info


def _git_rev() -> Optional[str]:
    import subprocess
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "graphnet"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


# --- threads and torch ----------------------------------------------------------------------
_limits: Any = None


def start(cfg: Config, title: str) -> dict:
    """Apply ``cfg.threads``, print the one-line header of a benchmark run; the machine info."""
    set_threads(cfg.threads)
    machine = machine_info(cfg)
    print(f"{title}: {machine['cpu_model']}, {machine['usable_cores']} cores, {cfg.threads} "
          f"threads, numpy {machine['numpy']}, torch {machine['torch'] or 'not installed'}, "
          f"load {machine['load_average']}", flush=True)
    return machine


def set_threads(n: int) -> None:
    """Use ``n`` threads in NumPy's BLAS (via threadpoolctl, if installed) and in torch."""
    global _limits
    try:
        import threadpoolctl
        _limits = threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        pass
    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(n)


_torch: Any = False  # False: not tried yet; None: unavailable


def import_torch() -> Any:
    """The torch module, or None (benchmarks then skip their PyTorch column, saying so)."""
    global _torch
    if _torch is False:
        try:
            import torch
            _torch = torch
        except ImportError:
            _torch = None
    return _torch


def torch_or_reason(cfg: Config) -> tuple[Any, Optional[str]]:
    if not cfg.use_torch:
        return None, "PyTorch column skipped: --no-torch"
    torch = import_torch()
    if torch is None:
        return None, "PyTorch column skipped: torch is not importable (pip install torch)"
    return torch, None


# --- timing ---------------------------------------------------------------------------------
def interleaved(contenders: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                sync: Optional[dict[str, Callable[[], None]]] = None) -> dict[str, list[float]]:
    """Time each contender once per round, round-robin, the order rotating every round.

    The first ``warmup`` rounds are run but not kept. Returns ``{name: [seconds per round]}``.
    ``sync[name]`` (if given) is called before starting and before stopping the clock
    (device synchronisation).
    """
    names = list(contenders)
    sync = sync or {}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            dt = _timed(contenders[name], sync.get(name))
            if r >= warmup:
                times[name].append(dt)
    return times


def _timed(fn: Callable[..., Any], sync: Optional[Callable[[], None]], *args: Any) -> float:
    """Seconds ``fn(*args)`` takes, with the device synchronised before and after."""
    if sync:
        sync()
    t0 = time.perf_counter()
    fn(*args)
    if sync:
        sync()
    return time.perf_counter() - t0


def interleaved_steps(runners: dict[str, Callable[[int, int], Any]], steps: int, chunk: int,
                      rounds: int, warmup: int = 1,
                      sync: Optional[dict[str, Callable[[], None]]] = None,
                      extra: Optional[Callable[[], Any]] = None, extra_every: int = 0
                      ) -> tuple[dict[str, list[float]], list[float]]:
    """Like :func:`interleaved`, but each round's epoch is cut into chunks of ``chunk`` steps
    and the contenders take turns chunk by chunk (the order rotating each turn).

    ``runners[name](start, stop)`` runs steps ``start..stop-1``. A contender's time for a
    round is the sum of its chunks' times, so every figure is still one whole epoch, but a
    burst of load on a shared machine now hits all contenders instead of whichever epoch
    happened to be running. ``extra`` (e.g. a reference matrix product) is timed on its own
    every ``extra_every`` turns, under the same conditions. Returns ``(times, extra_times)``.
    """
    names = list(runners)
    sync = sync or {}
    times: dict[str, list[float]] = {n: [] for n in names}
    extra_times: list[float] = []
    turn = 0
    for r in range(warmup + rounds):
        acc = dict.fromkeys(names, 0.0)
        for k, start in enumerate(range(0, steps, chunk)):
            stop = min(steps, start + chunk)
            j = turn % len(names)
            for name in names[j:] + names[:j]:
                acc[name] += _timed(runners[name], sync.get(name), start, stop)
            if extra is not None and extra_every and k % extra_every == 0 and r >= warmup:
                t0 = time.perf_counter()
                extra()
                extra_times.append(time.perf_counter() - t0)
            turn += 1
        if r >= warmup:
            for name in names:
                times[name].append(acc[name])
    return times, extra_times


def stats(ts: Sequence[float]) -> dict:
    ts = list(ts)
    if not ts:
        return {"median": None, "min": None, "max": None, "n": 0, "all": []}
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "n": len(ts),
            "all": [round(t, 6) for t in ts]}


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def paired_ratio(ta: Sequence[float], tb: Sequence[float]) -> Optional[float]:
    """Median over rounds of ta[r] / tb[r] (the two timed in the same round)."""
    pairs = [a / b for a, b in zip(ta, tb) if b > 0]
    return statistics.median(pairs) if pairs else None


# --- data and FLOPs -------------------------------------------------------------------------
_mnist: Optional[tuple] = None


def mnist_train(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST training set as graphnet's Classifier prepares it (x/255 minus the pixel mean,
    float32, shape (60000, 784)) and int64 labels, permuted once: batches are contiguous slices."""
    global _mnist
    if _mnist is None:
        from graphnet.datasets import mnist
        x, y, _, _ = mnist.load()
        X = x.reshape(x.shape[0], -1).astype(np.float32)
        X *= np.float32(1 / 255)
        X -= X.mean(axis=0)
        perm = np.random.default_rng(seed).permutation(X.shape[0])
        _mnist = (np.ascontiguousarray(X[perm]), y[perm].astype(np.int64))
    return _mnist


def synthetic_train(n: int, n_in: int = 784, classes: int = 10, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, n_in), dtype=np.float32),
            rng.integers(0, classes, size=n).astype(np.int64))


def batches_per_epoch(batch: int, n: int = N_TRAIN) -> int:
    return math.ceil(n / batch)


def mlp_flops(sizes: Sequence[int], batch: int, n_in: int = 784) -> dict:
    """Matrix-product FLOPs (2*M*N*K each) of one training step of an MLP.

    ``useful``: forward + weight gradient for every layer + input gradient for every layer but
    the first (nobody needs the gradient of the images). ``textbook``: all three for every layer.
    """
    fwd = gw = gx = 0
    gx_first = 0
    prev = n_in
    for i, n in enumerate(sizes):
        f = 2 * batch * prev * n
        fwd += f
        gw += f
        if i == 0:
            gx_first = f
        else:
            gx += f
        prev = n
    return {"forward": fwd, "useful": fwd + gw + gx, "textbook": fwd + gw + gx + gx_first,
            "first_layer_input_grad": gx_first}


def epoch_flops(sizes: Sequence[int], batch: int, n: int = N_TRAIN, kind: str = "useful") -> int:
    full, rest = divmod(n, batch)
    total = full * mlp_flops(sizes, batch)[kind]
    if rest:
        total += mlp_flops(sizes, rest)[kind]
    return total


def gemm_rate(n: int = 2048, reps: int = 5, dtype: Any = np.float32) -> dict:
    """float32 ``A @ B`` rate of this machine now (median of ``reps`` after one warm-up)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=dtype)
    b = rng.standard_normal((n, n), dtype=dtype)
    out = np.empty((n, n), dtype=dtype)
    np.matmul(a, b, out=out)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    return {"n": n, "seconds": med, "gflops": 2 * n ** 3 / med / 1e9,
            "gflops_best": 2 * n ** 3 / min(ts) / 1e9, "all": ts}


# --- output ---------------------------------------------------------------------------------
def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return repr(x)


def fmt_s(t: Optional[float]) -> str:
    if t is None:
        return "-"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.1f} us"


def fmt_x(r: Optional[float]) -> str:
    return "-" if r is None else f"{r:.2f}x"
