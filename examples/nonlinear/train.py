"""Toy problems a straight line cannot solve, and how a small network solves them.

    python examples/nonlinear/train.py --out runs/nonlinear        # a few seconds on a CPU
    python examples/nonlinear/train.py --out figs --backend cupy --hidden 16,3

Two problems in the plane:

* ``xor``: four clouds around (+-1, +-1); the class is 1 where the coordinates'
  signs differ.
* ``disk``: points uniform in the square [-1, 1]^2; the class is 1 inside the
  circle of radius sqrt(2/pi) (half of the square's area).

Each is learnt by a network 2 -> hidden tanh layers -> 2 (softmax) built directly
with the graph API (``gn.Input``, ``gn.Parameter``, ``gn.tanh``, ``gn.linear``,
``gn.Graph`` with the cost, ``gn.optim.Adam``), trained full-batch by graphnet's
``Trainer`` (the same one that trains the MNIST example). The graph's
outputs are the class probabilities *and* the last hidden layer, from one run.

Writes OUT/xor.png and OUT/disk.png, each with two panels:

* left: the decision regions in the input plane (shade: probability of class 1,
  black line: where it is 0.5) with the training points;
* right: the last hidden layer of the same points, centred and projected on its
  first two principal axes. In this feature space the output layer is linear, so
  its decision boundary (shaded the same way, on the PCA plane) is a straight
  line: the network has made the classes linearly separable.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

import graphnet as gn
from graphnet import viz
from graphnet.nn.init import glorot_uniform
from graphnet.training import Trainer

PROBLEMS = ("xor", "disk")


def make_data(problem: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(points (n, 2) float64, labels (n,) int64)`` on the host."""
    rng = np.random.default_rng(seed)
    if problem == "xor":
        centres = rng.choice([-1.0, 1.0], size=(n, 2))
        x = centres + rng.normal(scale=0.35, size=(n, 2))
        y = (centres[:, 0] != centres[:, 1]).astype(np.int64)
    elif problem == "disk":
        x = rng.uniform(-1.0, 1.0, size=(n, 2))
        y = ((x ** 2).sum(axis=1) < 2.0 / math.pi).astype(np.int64)
    else:
        raise ValueError(f"unknown problem {problem!r}; choose from {', '.join(PROBLEMS)}")
    return x, y


class Net:
    """2 -> tanh hidden layers -> 2 classes, as graphnet graphs."""

    def __init__(self, hidden: list[int]) -> None:
        """Weights from graphnet's host generator (seed it with ``gn.seed``)."""
        self.backend = gn.backend()
        self.hidden = list(hidden)
        self.x = gn.Input("x", shape=(None, 2))
        self.y = gn.Input("y", shape=(None,), dtype="int64")
        self.params: list[gn.Parameter] = []
        h, n_in = self.x, 2
        for i, n in enumerate(hidden):
            h = gn.tanh(self._dense(h, n_in, n, f"hidden{i + 1}"))
            n_in = n
        self.features = h
        # the output layer, also usable on its own (for the feature-space picture)
        self.h = gn.Input("h", shape=(None, n_in))
        self.W_out = self._param(n_in, 2, "W_out")
        self.b_out = gn.Parameter(np.zeros(2), name="b_out")
        self.params.append(self.b_out)
        logits = gn.linear(self.features, self.W_out, self.b_out)
        self.probs = gn.softmax(logits)
        self.loss = gn.softmax_cross_entropy(logits, self.y)
        self.graph = gn.Graph([self.probs, self.features], cost=self.loss)
        self.train_graph = gn.Graph([self.probs], cost=self.loss)
        self.head = gn.Graph(gn.softmax(gn.linear(self.h, self.W_out, self.b_out)))

    def _param(self, n_in: int, n_out: int, name: str) -> gn.Parameter:
        p = gn.Parameter(glorot_uniform((n_in, n_out), n_in, n_out), name=name)  # for tanh
        self.params.append(p)
        return p

    def _dense(self, h: Any, n_in: int, n_out: int, name: str) -> Any:
        W = self._param(n_in, n_out, f"W_{name}")
        b = gn.Parameter(np.zeros(n_out), name=f"b_{name}")
        self.params.append(b)
        return gn.linear(h, W, b)

    def fit(self, x: Any, y: Any, steps: int, lr: float) -> list[float]:
        """Full-batch Adam with graphnet's Trainer (one step per epoch); returns the loss
        every 100 steps."""
        opt = gn.optim.Adam(self.params, lr=lr)
        n = int(x.shape[0])
        history = Trainer(self, opt, batch_size=n, eval_subset=n, progress=False).fit(
            x, y, epochs=steps)
        return [loss for step, loss in enumerate(history.train_loss)
                if step % 100 == 0 or step == steps - 1]

    # --- what the Trainer needs (graphnet.nn.TrainableModel) ---------------------------
    @property
    def inputs(self) -> tuple[gn.Input, gn.Input]:
        return self.x, self.y

    def prepare(self, x: Any) -> Any:
        return self.backend.asarray(x, self.W_out.dtype)

    def prepare_targets(self, y: Any, n: int, argument: str = "targets") -> Any:
        y = self.backend.asarray(y)
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise ValueError(f"{argument}: expected {n} integer labels, got {y.dtype} {y.shape}")
        return y.astype(self.backend.xp.int64)

    def evaluate(self, x: Any, y: Any, batch_size: int = 0, prepared: bool = False
                 ) -> dict[str, float]:
        x = x if prepared else self.prepare(x)
        loss, probs = self.graph.values({self.x: x, self.y: y}, [self.loss, self.probs])
        return {"loss": float(loss), "accuracy": float((probs.argmax(axis=1) == y).mean())}

    def parameters(self) -> list[gn.Parameter]:
        return list(self.params)

    def named_arrays(self) -> dict[str, gn.Parameter]:
        return {p.name: p for p in self.params}

    def config(self) -> dict[str, Any]:
        return {"network": "nonlinear", "hidden": self.hidden}

    def host_arrays(self) -> dict[str, np.ndarray]:
        return {k: gn.to_numpy(p.value) for k, p in self.named_arrays().items()}

    def load_host_arrays(self, arrays: Any, source: str = "checkpoint") -> None:
        for k, p in self.named_arrays().items():
            p.value = arrays[k]

    def run(self, x: Any) -> tuple[Any, Any]:
        """(probabilities, last hidden layer) on the backend, from one run."""
        return self.graph.run({self.x: gn.asarray(x)})

    def head_probs(self, h: Any) -> Any:
        """The output layer alone, applied to feature rows ``h``."""
        return self.head.run({self.h: gn.asarray(h)})


def figure(problem: str, net: Net, x: np.ndarray, y: np.ndarray, accuracy: float) -> Any:
    """Input-plane regions (left) and PCA of the last hidden layer (right)."""
    probs, feats = net.run(x)
    proj = viz.pca(feats, 2)
    fig = viz.new_figure((11.5, 5.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    viz.decision_regions(lambda p: net.run(p)[0], x, y, ax=left,
                         title=f"Input plane: decision regions (accuracy {100 * accuracy:.1f}%)")
    ev = proj.explained
    viz.decision_regions(lambda p: net.head_probs(proj.inverse(p)), proj.points, y, ax=right,
                         xlabel=f"PC 1 ({100 * ev[0]:.0f}% of variance)",
                         ylabel=f"PC 2 ({100 * ev[1]:.0f}% of variance)",
                         title=f"Last hidden layer ({feats.shape[1]} tanh units), PCA to 2-D:\n"
                               "the output layer's boundary is a straight line")
    sizes = " -> ".join(["2"] + [str(int(n)) for n in net_sizes(net)] + ["2"])
    fig.suptitle(f"{problem.upper()}: network {sizes}, trained with graphnet "
                 f"on {gn.backend().name}")
    return fig


def net_sizes(net: Net) -> list[int]:
    return [p.shape[1] for p in net.params if p.ndim == 2][:-1]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/nonlinear", help="output folder for the PNGs")
    p.add_argument("--problems", default=",".join(PROBLEMS),
                   help=f"comma-separated, from {', '.join(PROBLEMS)}")
    p.add_argument("--hidden", default="16,3",
                   help="hidden layer sizes (the last is the feature layer), e.g. 16,3")
    p.add_argument("--points", type=int, default=400)
    p.add_argument("--steps", type=int, default=1500, help="full-batch Adam steps")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", help="numpy or cupy (overrides GRAPHNET_BACKEND)")
    args = p.parse_args(argv)
    hidden = [int(s) for s in args.hidden.split(",") if s]
    if not hidden or min(hidden) < 1:
        p.error(f"--hidden needs positive sizes, got {args.hidden!r}")
    problems = [s for s in args.problems.split(",") if s]
    bad = [s for s in problems if s not in PROBLEMS]
    if bad:
        p.error(f"unknown problem(s) {bad}; choose from {', '.join(PROBLEMS)}")
    try:
        if args.backend:
            gn.set_backend(args.backend)
        b = gn.backend()
    except (gn.BackendUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for problem in problems:
        t0 = time.perf_counter()
        gn.seed(args.seed)
        x, y = make_data(problem, args.points, args.seed)
        net = Net(hidden)
        losses = net.fit(b.asarray(x), b.asarray(y), args.steps, args.lr)
        accuracy = float((gn.to_numpy(net.run(x)[0]).argmax(axis=1) == y).mean())
        path = viz.save(figure(problem, net, x, y, accuracy), out / f"{problem}.png")
        print(f"{problem}: loss {losses[0]:.3f} -> {losses[-1]:.4f}, accuracy "
              f"{100 * accuracy:.1f}% on {b.name}; wrote {path} "
              f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
