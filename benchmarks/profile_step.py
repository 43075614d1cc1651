"""Where a graphnet training step spends its time: cProfile, and py-spy (native) where available.

For MLP [128, 64, 10] tanh and [800, 800, 10] ReLU (batch 128, SGD, MNIST), exactly the step
of ``Trainer._step``:

* cProfile: the top functions by own time (``tottime``), as a share of the profiled step.
  BLAS calls made through the ``@`` operator do not appear as functions: their time is the
  own time of the Python function that contains the ``@`` (e.g. ``Linear.backward``).
  cProfile inflates the cost of small Python calls, so also compare with the unprofiled
  step time it reports.
* py-spy (``pip install py-spy``; needs ptrace): a sampling profile with native frames of a
  subprocess doing the same steps. Samples are grouped by what is on top of the stack
  (BLAS, NumPy's C code, libm, libc, the Python interpreter) and by the innermost graphnet
  function on the stack (its time including the NumPy/BLAS work it calls).

Run alone: ``python benchmarks/run.py --only profile``.
"""
from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import REPO, Config, mnist_train, set_threads

CASES = {"mlp_small": ([128, 64, 10], "tanh", 0.5), "mlp_large": ([800, 800, 10], "relu", 0.05)}
BATCH = 128
TOP = 15


def _contender(case: str) -> Any:
    from .contenders import GraphnetMLP
    layers, act, lr = CASES[case]
    X, Y = mnist_train()
    g = GraphnetMLP(layers, act, lr)
    g.set_data(X, Y, BATCH, 470)
    return g


def _profiled_steps(g: Any, steps: int) -> None:
    X, Y, b = g.X, g.Y, g.batch
    n = X.shape[0] // b
    for i in range(steps):
        j = i % n
        g.losses[j] = g.step(X[j * b:(j + 1) * b], Y[j * b:(j + 1) * b])


def cprofile_case(case: str, steps: int) -> dict:
    g = _contender(case)
    _profiled_steps(g, 5)  # warm-up
    t0 = time.perf_counter()
    _profiled_steps(g, steps)
    plain = (time.perf_counter() - t0) / steps
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(_profiled_steps, g, steps)
    profiled = (time.perf_counter() - t0) / steps
    st = pstats.Stats(prof)
    total = st.total_tt
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{_short(file)}:{line}({fn})", "ncalls_per_step": nc / steps,
                     "tottime_us_per_step": tt / steps * 1e6, "cumtime_us_per_step": ct / steps * 1e6,
                     "share_of_step": tt / total})
    rows.sort(key=lambda r: -r["tottime_us_per_step"])
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
    return {"steps": steps, "step_ms_unprofiled": plain * 1e3, "step_ms_profiled": profiled * 1e3,
            "top_tottime": rows[:TOP], "pstats_text": text.getvalue()}


def _short(path: str) -> str:
    p = path.replace(str(REPO) + os.sep, "")
    m = re.search(r"site-packages/(.*)", p)
    return m.group(1) if m else p


# --- py-spy -------------------------------------------------------------------------------
def pyspy_case(case: str, steps: int, threads: int, out_dir: Path) -> dict:
    exe = shutil.which("py-spy")
    if exe is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        cmd = [exe, "record", "--native", "--rate", "250", "--format", "raw", "--output", str(raw),
               "--", sys.executable, "-m", "benchmarks.profile_step", "worker", case, str(steps),
               str(threads)]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        if p.returncode != 0 or not raw.exists():
            return {"skipped": f"py-spy failed (rc {p.returncode}): {p.stderr.strip()[-300:]}"}
        text = raw.read_text()
    folded = out_dir / f"profile_{case}.folded"
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [ln for ln in text.splitlines() if "_profiled_steps" in ln]
    folded.write_text("\n".join(lines) + "\n")
    return analyse_folded(lines) | {"folded_file": folded.name}


def _category(frame: str) -> str:
    f = frame.lower()
    if "openblas" in f or "blas" in f or "gemm" in f:
        return "BLAS (matrix products, incl. thread hand-off)"
    if "libm" in f:
        return "libm (tanh/exp/log)"
    if "_multiarray_umath" in f or "numpy" in f and ".so" in f:
        return "NumPy C code (ufuncs, reductions, indexing, allocation)"
    if "libc.so" in f or "ld-linux" in f:
        return "libc (memcpy/memset/malloc/free)"
    if ".py:" in f or ".py)" in f or "libpython" in f or "python3" in f:
        return "Python interpreter (engine, op and optimizer code)"
    return "other native"


_FRAME = re.compile(r"^(?P<fn>.*) \((?P<where>[^()]*)\)$")


def analyse_folded(lines: list[str]) -> dict:
    by_cat: Counter = Counter()
    by_leaf: Counter = Counter()
    by_graphnet: Counter = Counter()
    total = 0
    for ln in lines:
        stack, _, count = ln.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        by_cat[_category(leaf)] += n
        by_leaf[re.sub(r":\d+\)$", ")", leaf)] += n
        owner = "benchmark harness / other"
        for fr in reversed(frames):
            m = _FRAME.match(fr)
            if m and "graphnet/" in m.group("where") and ".py" in m.group("where"):
                where = m.group("where").split("graphnet/", 1)[1].split(":")[0]
                owner = f"{where}:{m.group('fn')}"
                break
        by_graphnet[owner] += n

    def share(c: Counter, k: int = TOP) -> list:
        return [{"what": w, "samples": s, "share": s / total} for w, s in c.most_common(k)]
    return {"samples": total, "by_category": share(by_cat), "top_leaf_frames": share(by_leaf),
            "by_innermost_graphnet_function": share(by_graphnet)}


def run(cfg: Config) -> dict:
    steps = {"mlp_small": cfg.pick(300, 30), "mlp_large": cfg.pick(60, 8)}
    out: dict[str, Any] = {"benchmark": "profile", "cases": {}, "notes": []}
    for case in CASES:
        c = cprofile_case(case, steps[case])
        txt = c.pop("pstats_text")
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / f"profile_{case}.txt").write_text(txt)
        c["pstats_file"] = f"profile_{case}.txt"
        spy = pyspy_case(case, steps[case] * (1 if cfg.quick else 2), cfg.threads, cfg.out)
        if "skipped" in spy:
            out["notes"].append(f"{case}: py-spy {spy['skipped']}")
        out["cases"][case] = {"layers": CASES[case][0], "activation": CASES[case][1],
                              "cprofile": c, "pyspy": spy}
    return out


def summary(r: dict) -> list[list[str]]:
    rows = []
    for case, c in r["cases"].items():
        cp = c["cprofile"]
        top = cp["top_tottime"][:3]
        rows.append(["profile " + case, "cProfile", f"{cp['step_ms_unprofiled']:.2f} ms /step", "", "",
                     "own time: " + ", ".join(f"{t['function'].split('/')[-1]} {t['share_of_step']:.0%}"
                                              for t in top)])
        spy = c["pyspy"]
        if "by_category" in spy:
            rows.append(["profile " + case, "py-spy", f"{spy['samples']} samples", "", "",
                         ", ".join(f"{x['what'].split(' (')[0]} {x['share']:.0%}"
                                   for x in spy["by_category"][:4])])
    return rows


def _worker(case: str, steps: int, threads: int) -> None:
    set_threads(threads)
    g = _contender(case)
    _profiled_steps(g, 5)
    _profiled_steps(g, steps)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "worker":
        _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        print(json.dumps(run(Config(quick="--quick" in sys.argv)), indent=1, default=str)[:5000])
