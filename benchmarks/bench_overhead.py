"""Benchmark 4: engine overhead, microseconds per node per training step on tiny tensors.

A chain of ``BLOCKS`` blocks ``h = tanh(h @ W_k + b_k)`` on 4x4 arrays, then ``sum``: 3 op
nodes per block plus the sum (49 op nodes for 16 blocks). The arrays are so small that the
arithmetic is negligible: what is measured is the cost of dispatching each node.

* graphnet ``Graph.gradients`` (forward + backward) and ``Graph.run`` (forward only);
* PyTorch eager, the same graph: forward + ``loss.backward()`` (grads reset to None each
  step), and forward alone under ``torch.no_grad()``;
* the same arithmetic as plain NumPy calls written out by hand (the floor: what the NumPy
  calls themselves cost, without any engine).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .common import Config, fmt_s, interleaved, paired_ratio, ratio, stats, torch_or_reason

BLOCKS = 16
SIZE = 4


def build_graphnet(params: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Any, Any, int]:
    import graphnet as gn
    x = gn.Input("x", shape=(SIZE, SIZE))
    h = x
    for w, b in params:
        h = gn.tanh(h @ gn.Parameter(w) + gn.Parameter(b))
    cost = gn.sum(h)
    graph = gn.Graph(h, cost=cost)
    n_ops = sum(1 for n in graph.order if n.inputs)
    return graph, x, n_ops


def numpy_floor(xv: np.ndarray, params: list) -> tuple:
    """Forward and backward of the chain as bare NumPy calls (same ops as the engine issues)."""
    hs = [xv]
    h = xv
    for w, b in params:
        h = np.tanh(h @ w + b)
        hs.append(h)
    loss = h.sum()
    g = np.ones_like(h)
    grads = []
    for k in range(len(params) - 1, -1, -1):
        w, _ = params[k]
        y = hs[k + 1]
        g = g * (1 - y * y)          # tanh
        gb = g                       # add (no broadcast: b is 4x4)
        gw = hs[k].T @ g             # matmul
        g = g @ w.T
        grads.append((gw, gb))
    return loss, grads


def run(cfg: Config) -> dict:
    rng = np.random.default_rng(cfg.seed)
    params = [(rng.standard_normal((SIZE, SIZE), dtype=np.float32) * 0.5,
               rng.standard_normal((SIZE, SIZE), dtype=np.float32) * 0.1) for _ in range(BLOCKS)]
    xv = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    graph, x, n_ops = build_graphnet(params)
    feed = {x: xv}
    iters = cfg.pick(200, 50)  # short turns, many rounds: robust to bursts of load
    rounds, warmup = cfg.pick(15, 4), 1

    def loop(fn: Any) -> Any:
        def go() -> None:
            for _ in range(iters):
                fn()
        return go

    fns = {
        "graphnet fwd+bwd": loop(lambda: graph.gradients(feed)),
        "graphnet fwd": loop(lambda: graph.run(feed)),
        "numpy fwd+bwd": loop(lambda: numpy_floor(xv, params)),
    }
    torch, why_no_torch = torch_or_reason(cfg)
    if torch is not None:
        tx = torch.from_numpy(xv)
        tparams = [(torch.from_numpy(w.copy()).requires_grad_(), torch.from_numpy(b.copy()).requires_grad_())
                   for w, b in params]
        flat = [t for pair in tparams for t in pair]

        def torch_fwd_bwd() -> None:
            h = tx
            for w, b in tparams:
                h = torch.tanh(h @ w + b)
            h.sum().backward()
            for t in flat:
                t.grad = None

        def torch_fwd() -> None:
            with torch.no_grad():
                h = tx
                for w, b in tparams:
                    h = torch.tanh(h @ w + b)
                h.sum()

        fns["pytorch fwd+bwd"] = loop(torch_fwd_bwd)
        fns["pytorch fwd (no_grad)"] = loop(torch_fwd)
        # the two must compute the same gradients
        agree = gradient_agreement(graph, feed, _torch_grads(torch, tx, params))
    else:
        agree = None
    times = interleaved(fns, rounds=rounds, warmup=warmup)
    res = {}
    for n, ts in times.items():
        st = stats([t / iters for t in ts])
        st["us_per_step"] = st["median"] * 1e6
        st["us_per_node"] = st["median"] * 1e6 / n_ops
        res[n] = st
    floor = res["numpy fwd+bwd"]["median"]
    eng = {n: (res[n]["median"] - floor) * 1e6 / n_ops for n in res if "fwd+bwd" in n and "numpy" not in n}
    ratios = {"graphnet/pytorch fwd+bwd": {
        "of_medians": ratio(res["graphnet fwd+bwd"]["median"], res.get("pytorch fwd+bwd", {}).get("median")),
        "paired_median": paired_ratio(times["graphnet fwd+bwd"], times["pytorch fwd+bwd"])
        if "pytorch fwd+bwd" in times else None}}
    r = ratios["graphnet/pytorch fwd+bwd"]["of_medians"]
    notes = [why_no_torch] if why_no_torch else []
    return {
        "benchmark": "overhead",
        "description": f"chain of {BLOCKS} x (matmul, add, tanh) + sum on {SIZE}x{SIZE} float32: "
                       f"{n_ops} op nodes; time per training step (forward + backward) / nodes",
        "config": {"blocks": BLOCKS, "size": SIZE, "op_nodes": n_ops, "iters_per_round": iters,
                   "rounds": rounds, "warmup_rounds": warmup, "interleaved": True},
        "results": res,
        "engine_us_per_node_above_numpy_floor": eng,
        "gradient_agreement_max_abs_diff_vs_torch": agree,
        "ratios": ratios,
        "targets": [{"ratio": "graphnet/pytorch fwd+bwd per node", "target": "<= 1.0", "value": r,
                     "met": None if r is None else r <= 1.0, "note": why_no_torch}],
        "notes": notes,
    }


def gradient_agreement(graph: Any, feed: dict, reference: list) -> float:
    """Largest absolute difference between the graph's parameter gradients (on whatever
    backend the graph runs) and host ``reference`` arrays, in ``graph.parameters()`` order."""
    from graphnet.backends.host import to_numpy
    grads = graph.gradients(feed)
    return max(float(np.max(np.abs(to_numpy(grads[p]) - ref)))
               for p, ref in zip(graph.parameters(), reference))


def _torch_grads(torch: Any, tx: Any, params: list) -> list:
    ps = [(torch.from_numpy(w.copy()).requires_grad_(), torch.from_numpy(b.copy()).requires_grad_())
          for w, b in params]
    h = tx
    for w, b in ps:
        h = torch.tanh(h @ w + b)
    h.sum().backward()
    return [t.grad.numpy() for pair in ps for t in pair]


def summary(r: dict) -> list[list[str]]:
    rows = []
    for n, st in r["results"].items():
        rows.append(["overhead", n, fmt_s(st["median"]) + " /step", f"{st['us_per_node']:.2f} us/node",
                     "", ""])
    return rows
