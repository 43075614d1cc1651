"""The CLI's epoch against the engine: what graphnet's training loop adds around ``minimize``.

Contenders, in one process, taking turns of 20 steps:

* *cli*: the Trainer exactly as ``examples/mnist/train.py`` builds it (``build_trainer``:
  checkpoint folder, progress bar on (there is no tty, so tqdm draws nothing), the CLI's
  learning-curve points, divergence checks), running one more epoch through ``fit``.
* *engine*: the engine benchmark's loop (BENCHMARKS.md sections 1-2):
  ``optim.SGD.minimize(Classifier.train_graph, feed)`` over contiguous slices of the
  training set gathered in the same epoch order beforehand (outside the clock).

The engine's turns run from inside the cli epoch: after every 20 of its steps, the
Trainer's step calls the engine for its next 20 (timed on their own and taken out of the
cli epoch's time), so a burst of load on this shared machine hits both. Both models start
from the same seed and see the same batches in the same order at the same learning rate:
after every epoch their weights must be equal bit for bit (checked).

The cli epoch is split by timing the Trainer's own methods: ``cli_steps`` (the step loop:
gathering, schedule, keys, the step, loss recording, checks, the bar), ``curve`` (the
learning-curve points inside the loop) and ``end`` (the end-of-epoch work: evaluation on
the training subset and the test set, history, checkpoint), itself broken down.
"""
from __future__ import annotations

import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import Config, fmt_s, fmt_x, ratio, stats

CASES: dict[str, dict[str, Any]] = {
    "cli_small": dict(layers=[128, 64, 10], activation="tanh", lr=0.5),
    "cli_large": dict(layers=[800, 800, 10], activation="relu", lr=0.05),
}
BATCH = 128
CHUNK = 20  # steps per turn
TARGET = 1.05
QUICK_IMAGES = 2560  # quick mode: 20 steps per epoch


def cli_config(case: dict[str, Any], seed: int) -> dict[str, Any]:
    """A CLI configuration for ``case``: plain SGD, constant rate, no augmentation."""
    from examples.mnist.config import DEFAULTS
    return dict(DEFAULTS, layers=list(case["layers"]), activation=case["activation"], lr=case["lr"],
                batch_size=BATCH, optimizer="sgd", momentum=0.0, nesterov=False, weight_decay=0.0,
                dropout=0.0, schedule="constant", augment=False, seed=seed, epochs=1000, preset=None)


class Timers:
    """Wraps methods of an object so that each call's seconds are added up under a name."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}

    def wrap(self, obj: Any, method: str, name: str) -> None:
        fn = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - t0
        setattr(obj, method, timed)

    def take(self) -> dict[str, float]:
        out, self.total = self.total, {}
        return out


class EngineLoop:
    """The engine benchmark's contender on a model built like the CLI's."""

    def __init__(self, model: Any, optimizer: Any, seed: int) -> None:
        self.model, self.opt, self.seed = model, optimizer, seed
        self.graph = model.train_graph
        self.images, self.labels = model.inputs
        self.Xp = self.Yp = self.losses = None
        self.done = 0

    def prepare_epoch(self, X: Any, Y: Any, epoch: int) -> None:
        """The epoch's batches as contiguous slices, gathered in the Trainer's order."""
        from graphnet.train import epoch_permutation
        perm = epoch_permutation(self.seed, epoch, X.shape[0])
        self.Xp, self.Yp = X[perm], Y[perm]
        self.losses = self.model.backend.xp.zeros(-(-X.shape[0] // BATCH), dtype=X.dtype)
        self.done = 0

    def steps(self, count: int) -> None:
        """The epoch's next ``count`` steps (fewer at its end)."""
        X, Y, losses, minimize, graph = self.Xp, self.Yp, self.losses, self.opt.minimize, self.graph
        images, labels = self.images, self.labels
        stop = min(self.done + count, losses.shape[0])
        for i in range(self.done, stop):
            s = i * BATCH
            losses[i] = minimize(graph, {images: X[s:s + BATCH], labels: Y[s:s + BATCH]})
        self.done = stop


class Turns:
    """Runs the engine's next ``chunk`` steps after every ``chunk`` Trainer steps, from inside
    the Trainer's ``_step``; ``engine`` is their time, ``inside`` the time spent in them
    (to take out of the cli epoch)."""

    def __init__(self, trainer: Any, engine: EngineLoop, chunk: int) -> None:
        self.engine, self.chunk = engine, chunk
        self.count, self.engine_s, self.inside_s = 0, 0.0, 0.0
        step = trainer._step

        def step_then_turn(*args: Any) -> Any:
            out = step(*args)
            self.count += 1
            if self.count % chunk == 0:
                t0 = time.perf_counter()
                self.turn()
                self.inside_s += time.perf_counter() - t0
            return out
        trainer._step = step_then_turn

    def turn(self) -> None:
        t0 = time.perf_counter()
        self.engine.steps(self.chunk)
        self.engine_s += time.perf_counter() - t0

    def take(self) -> tuple[float, float]:
        """``(engine seconds, seconds inside the cli epoch)`` since the last take."""
        while self.engine.done < self.engine.losses.shape[0]:
            self.turn()
        out = self.engine_s, self.inside_s
        self.count, self.engine_s, self.inside_s = 0, 0.0, 0.0
        return out


def run(cfg: Config, name: str) -> dict:
    from examples.mnist.common import build_optimizer, build_trainer
    from examples.mnist.train import CURVE_EVERY
    from graphnet.datasets import mnist
    case = CASES[name]
    x, y, xt, yt = mnist.load()
    if cfg.quick:
        x, y, xt, yt = x[:QUICK_IMAGES], y[:QUICK_IMAGES], xt[:1000], yt[:1000]
    rounds, warmup = cfg.pick(5, 2), 1
    conf = cli_config(case, cfg.seed)
    with tempfile.TemporaryDirectory() as out:
        model, trainer = build_trainer(conf, x, Path(out), eval_every=CURVE_EVERY, progress=True)
        emodel, _ = build_trainer(conf, x, None, eval_every=0)  # same seed: the same initial weights
        engine = EngineLoop(emodel, build_optimizer(conf, emodel.parameters()), conf["seed"])
        X, Y = model.prepare(x), model.prepare_targets(y, x.shape[0])
        timers = Timers()
        timers.wrap(trainer, "_run_epoch", "epoch")
        timers.wrap(trainer, "_finish_epoch", "end")
        timers.wrap(trainer, "_record_curve", "curve")
        timers.wrap(trainer, "_evaluate", "evaluate")
        timers.wrap(trainer, "save_checkpoint", "checkpoint")
        turns = Turns(trainer, engine, CHUNK)
        rows: list[dict[str, float]] = []
        agree = []
        for r in range(warmup + rounds):
            engine.prepare_epoch(X, Y, trainer.state.epoch)
            trainer.fit(x, y, xt, yt, epochs=trainer.state.epoch + 1)
            engine_s, inside_s = turns.take()
            agree.append(_same_weights(model, emodel))
            if r >= warmup:
                rows.append(dict(_split(timers.take(), inside_s), engine=engine_s))
            timers.take()
        profile = _profile(trainer, x, y, xt, yt)
    (cfg.out / f"profile_{name}.txt").parent.mkdir(parents=True, exist_ok=True)
    (cfg.out / f"profile_{name}.txt").write_text(profile)
    return _result(cfg, name, case, rows, agree, steps=-(-x.shape[0] // BATCH),
                   curve_every=CURVE_EVERY)


def _split(t: dict[str, float], engine_inside: float) -> dict[str, float]:
    """One cli epoch's seconds (the engine's turns taken out): the step loop, the curve
    points, the end, and its parts."""
    curve, end = t.get("curve", 0.0), t.get("end", 0.0)
    loop = t["epoch"] - end - engine_inside
    # _evaluate runs in the curve points and at the end; a curve point is evaluation and a
    # few list appends, so the end's evaluation is the rest
    end_eval = max(t.get("evaluate", 0.0) - curve, 0.0)
    return {"cli_loop": loop, "cli_steps": loop - curve, "curve": curve, "end": end,
            "end_evaluate": end_eval, "end_checkpoint": t.get("checkpoint", 0.0)}


def _same_weights(a: Any, b: Any) -> bool:
    ha, hb = a.host_arrays(), b.host_arrays()
    return ha.keys() == hb.keys() and all(np.array_equal(ha[k], hb[k]) for k in ha)


def _profile(trainer: Any, x: Any, y: Any, xt: Any, yt: Any) -> str:
    """cProfile of one more cli epoch (``_run_epoch`` alone: not fit's data preparation),
    the top functions by own time."""
    trainer.__dict__.pop("_step", None)  # the engine's turns are over
    prof, epoch = cProfile.Profile(), trainer._run_epoch

    def profiled(*args: Any) -> Any:
        prof.enable()
        try:
            return epoch(*args)
        finally:
            prof.disable()
    trainer._run_epoch = profiled
    trainer.fit(x, y, xt, yt, epochs=trainer.state.epoch + 1)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    return buf.getvalue()


def _result(cfg: Config, name: str, case: dict, rows: list[dict], agree: list[bool],
            steps: int, curve_every: int) -> dict:
    keys = list(rows[0])
    res = {k: stats([r[k] for r in rows]) for k in keys}
    engine = res["engine"]["median"]

    def paired(k: str) -> float:
        return float(np.median([r[k] / r["engine"] for r in rows]))
    ratios = {f"{k}/engine": {"of_medians": ratio(res[k]["median"], engine), "paired_median": paired(k)}
              for k in ("cli_steps", "cli_loop")}
    per_step_us = {k: (res[k]["median"] - engine) / steps * 1e6 for k in ("cli_steps", "cli_loop")}
    value = ratios["cli_loop/engine"]["of_medians"]
    return {
        "benchmark": name,
        "description": f"one CLI (Trainer) epoch of MLP {case['layers']} {case['activation']}, batch "
                       f"{BATCH}, plain SGD lr={case['lr']}, against the bare minimize loop over the "
                       f"same batches; {steps} steps per epoch",
        "config": {"layers": case["layers"], "activation": case["activation"], "lr": case["lr"],
                   "batch": BATCH, "eval_every": curve_every, "steps_per_epoch": steps,
                   "rounds": len(rows), "interleaved": f"turns of {CHUNK} steps"},
        "agreement": {"weights_bit_identical_every_round": all(agree), "rounds": agree},
        "results": res,
        "ratios": ratios,
        "cli_minus_engine_us_per_step": per_step_us,
        "targets": [{"ratio": "cli_loop/engine", "target": f"<= {TARGET}", "value": value,
                     "met": value <= TARGET}],
        "notes": ["cli_loop: the epoch's training part as the CLI runs it (steps + curve points); "
                  "cli_steps: without the curve points; end: the end-of-epoch work (per epoch)"]
                 + (["quick mode: a 2560-image training set"] if cfg.quick else []),
    }


def summary(r: dict) -> list[list[str]]:
    res, rows = r["results"], []
    eng = res["engine"]["median"]
    for k in ("engine", "cli_steps", "cli_loop", "curve", "end", "end_evaluate", "end_checkpoint"):
        rows.append([r["benchmark"], k, fmt_s(res[k]["median"]), "vs engine " + fmt_x(ratio(res[k]["median"], eng)),
                     "", ""])
    return rows
