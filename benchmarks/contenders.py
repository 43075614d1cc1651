"""The three ways of training the same MLP: graphnet, a hand-written array loop, PyTorch.

All start from the same initial weights (graphnet's, drawn with ``gn.seed``), see the same
pre-permuted contiguous batches and do plain SGD in float32. Each has ``step(xb, yb)``
returning the loss without a host synchronisation, and ``epoch(steps)`` over its own copy
of the data (on its own device).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np


class Contender:
    name = "?"
    X: Any = None
    Y: Any = None
    batch = 128
    losses: Any = None

    def step(self, xb: Any, yb: Any) -> Any:
        raise NotImplementedError

    def epoch(self, steps: int) -> None:
        """``steps`` SGD steps over contiguous slices (``steps = ceil(n / batch)`` is one epoch)."""
        self.run_steps(0, steps)

    def run_steps(self, start: int, stop: int) -> None:
        """Steps ``start`` .. ``stop - 1`` of the epoch (batch i is rows i*batch .. (i+1)*batch)."""
        X, Y, b, losses, step = self.X, self.Y, self.batch, self.losses, self.step
        for i in range(start, stop):
            s = i * b
            losses[i] = step(X[s:s + b], Y[s:s + b])

    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Host copies of ``[(W (in, out), b (out,)), ...]``."""
        raise NotImplementedError

    def sync(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""


# --- graphnet --------------------------------------------------------------------------------
class GraphnetMLP(Contender):
    """graphnet's own path: ``optim.SGD.minimize`` on ``Classifier.train_graph``, as ``Trainer._step``."""

    name = "graphnet"

    def __init__(self, layers: Sequence[int], activation: str, lr: float, seed: int = 0,
                 n_in: int = 784) -> None:
        import graphnet as gn
        from graphnet import nn, optim
        self.gn = gn
        gn.seed(seed)
        self.model = nn.Classifier(nn.MLP(list(layers), n_in, activation), (n_in,))
        self.optimizer = optim.SGD(self.model.parameters(), lr=lr)
        self.graph = self.model.train_graph
        self.images, self.labels = self.model.images, self.model.labels
        self.backend = self.model.backend

    def set_data(self, X: np.ndarray, Y: np.ndarray, batch: int, max_steps: int) -> None:
        b = self.backend
        self.X, self.Y, self.batch = b.asarray(X), b.asarray(Y), batch
        self.losses = b.xp.zeros(max_steps, dtype=self.X.dtype)

    def step(self, xb: Any, yb: Any) -> Any:
        return self.optimizer.minimize(self.graph, {self.images: xb, self.labels: yb})

    def weights(self) -> list:
        from graphnet.nn import Linear
        return [(self.gn.to_numpy(l.W.value).copy(), self.gn.to_numpy(l.b.value).copy())
                for l in self.model.network.layers if isinstance(l, Linear)]

    def sync(self) -> None:
        self.backend.synchronize()

    def computes_image_gradient(self) -> bool:
        """Whether graphnet's backward pass computes d loss / d images (which nobody needs).

        Probed by watching the first layer's node during one ``gradients`` call (no update).
        """
        first = next(n for n in self.graph.order if self.images in n.inputs)
        seen: list = []
        orig = first.backward

        def spy(ctx: Any, g: Any, xs: tuple, y: Any) -> tuple:
            out = orig(ctx, g, xs, y)
            seen.append(out[0] is not None)
            return out
        first.backward = spy
        try:
            n = min(self.batch, self.X.shape[0])
            self.graph.gradients({self.images: self.X[:n], self.labels: self.Y[:n]})
        finally:
            del first.backward
        return bool(seen and seen[0])


# --- hand-written loop (NumPy, or CuPy with xp=cupy) ------------------------------------------
class LoopMLP(Contender):
    """The floor for any NumPy framework: the same float32 arithmetic written out by hand.

    Forward ``x @ W + b`` then the activation in place; softmax cross-entropy (mean) computed
    in the logits buffer; backward into preallocated buffers; SGD in place. No allocation of
    batch-sized arrays per step.
    """

    name = "numpy-loop"

    def __init__(self, weights: list, activation: str, lr: float, batch: int, xp: Any = np) -> None:
        if activation not in ("tanh", "relu"):
            raise ValueError(activation)
        self.xp, self.act, self.lr, self.batch = xp, activation, float(lr), batch
        f32 = xp.float32
        self.W = [xp.array(w, dtype=f32) for w, _ in weights]
        self.b = [xp.array(b, dtype=f32) for _, b in weights]
        self.gW = [xp.empty_like(w) for w in self.W]
        self.gb = [xp.empty_like(b) for b in self.b]
        outs = [w.shape[1] for w in self.W]
        self.h = [xp.empty((batch, n), dtype=f32) for n in outs]    # layer outputs (post-activation)
        self.d = [xp.empty((batch, n), dtype=f32) for n in outs]    # gradients w.r.t. h
        self.tmp = [xp.empty((batch, n), dtype=f32) for n in outs[:-1]]
        self.mask = [xp.empty((batch, n), dtype=bool) for n in outs[:-1]]
        self.m = xp.empty((batch, 1), dtype=f32)
        self.s = xp.empty((batch, 1), dtype=f32)
        self.rows = xp.arange(batch)
        if xp is not np:
            self.name = "cupy-loop"

    def set_data(self, X: Any, Y: Any, max_steps: int) -> None:
        xp = self.xp
        self.X, self.Y = xp.asarray(X), xp.asarray(Y)
        self.losses = xp.zeros(max_steps, dtype=xp.float32)

    def step(self, xb: Any, yb: Any) -> Any:
        xp, n, L = self.xp, xb.shape[0], len(self.W)
        W, b, h, d = self.W, self.b, self.h, self.d
        # forward
        a = xb
        for l in range(L):
            z = xp.matmul(a, W[l], out=h[l][:n])
            z += b[l]
            if l < L - 1:
                if self.act == "tanh":
                    xp.tanh(z, out=z)
                else:
                    xp.maximum(z, 0, out=z)
            a = z
        # softmax cross-entropy (mean), in the logits buffer
        z, m, s, rows = a, self.m[:n], self.s[:n], self.rows[:n]
        xp.max(z, axis=1, keepdims=True, out=m)
        z -= m
        picked = z[rows, yb]
        xp.exp(z, out=z)
        xp.sum(z, axis=1, keepdims=True, out=s)
        loss = (xp.log(s).sum() - picked.sum()) / n
        z /= s                       # probabilities
        z[rows, yb] -= 1
        z *= 1.0 / n                 # d loss / d logits
        # backward + SGD, top layer first
        g = z
        for l in range(L - 1, -1, -1):
            a_prev = xb if l == 0 else h[l - 1][:n]
            xp.matmul(a_prev.T, g, out=self.gW[l])
            xp.sum(g, axis=0, out=self.gb[l])
            if l > 0:
                gp = xp.matmul(g, W[l].T, out=d[l - 1][:n])
                if self.act == "tanh":
                    t = xp.multiply(a_prev, a_prev, out=self.tmp[l - 1][:n])
                    xp.subtract(1, t, out=t)
                    gp *= t
                else:
                    mk = xp.greater(a_prev, 0, out=self.mask[l - 1][:n])
                    xp.multiply(gp, mk, out=gp)
                g = gp
            self.gW[l] *= self.lr
            W[l] -= self.gW[l]
            self.gb[l] *= self.lr
            b[l] -= self.gb[l]
        return loss

    def weights(self) -> list:
        xp = self.xp
        host = (lambda a: a.get()) if xp is not np else (lambda a: a)
        return [(host(w).copy(), host(b).copy()) for w, b in zip(self.W, self.b)]

    def sync(self) -> None:
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()


# --- PyTorch ----------------------------------------------------------------------------------
class TorchMLP(Contender):
    """nn.Sequential of nn.Linear + activation, F.cross_entropy, torch.optim.SGD (defaults)."""

    name = "pytorch"

    def __init__(self, torch: Any, weights: list, activation: str, lr: float,
                 device: str = "cpu") -> None:
        self.torch, self.device = torch, device
        nn = torch.nn
        mods = []
        for i, (w, b) in enumerate(weights):
            lin = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                lin.bias.copy_(torch.from_numpy(b))
            mods.append(lin)
            if i < len(weights) - 1:
                mods.append(nn.Tanh() if activation == "tanh" else nn.ReLU())
        self.model = nn.Sequential(*mods).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.F = torch.nn.functional
        if device != "cpu":
            self.name = "pytorch-" + device.split(":")[0]

    def set_data(self, X: np.ndarray, Y: np.ndarray, batch: int, max_steps: int) -> None:
        t = self.torch
        self.X = t.from_numpy(X).to(self.device)
        self.Y = t.from_numpy(Y).to(self.device)
        self.batch = batch
        self.losses = t.zeros(max_steps, dtype=t.float32, device=self.device)

    def step(self, xb: Any, yb: Any) -> Any:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.F.cross_entropy(self.model(xb), yb)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def weights(self) -> list:
        lins = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        return [(l.weight.detach().cpu().numpy().T.copy(), l.bias.detach().cpu().numpy().copy())
                for l in lins]

    def sync(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.synchronize()


# --- agreement --------------------------------------------------------------------------------
def agreement(contenders: list[Contender], steps: int = 3) -> dict:
    """Run ``steps`` steps on each (from the same initial weights) and compare with the first.

    Proves the contenders do the same arithmetic: differences are float32 rounding only.
    """
    for c in contenders:
        c.epoch(steps)
        c.sync()
    ref = contenders[0]
    ref_w = ref.weights()
    ref_loss = _host(ref.losses[:steps])
    out = {"steps": steps, "reference": ref.name, "loss": [float(v) for v in ref_loss]}
    for c in contenders[1:]:
        w = c.weights()
        diff = max(float(np.max(np.abs(a - b))) for pa, pb in zip(ref_w, w) for a, b in zip(pa, pb))
        scale = max(float(np.max(np.abs(a))) for pa in ref_w for a in pa)
        out[c.name] = {"max_abs_weight_diff": diff, "max_rel_weight_diff": diff / scale,
                       "max_abs_loss_diff": float(np.max(np.abs(_host(c.losses[:steps]) - ref_loss)))}
    return out


def _host(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "get"):
        return x.get()
    return np.asarray(x)


def make_contenders(layers: Sequence[int], activation: str, lr: float, batch: int, X: np.ndarray,
                    Y: np.ndarray, max_steps: int, torch: Optional[Any] = None,
                    seed: int = 0) -> dict[str, Contender]:
    """graphnet, the NumPy loop and (if ``torch``) PyTorch CPU, all from graphnet's init."""
    g = GraphnetMLP(layers, activation, lr, seed)
    g.set_data(X, Y, batch, max_steps)
    w0 = g.weights()
    loop = LoopMLP(w0, activation, lr, batch)
    loop.set_data(X, Y, max_steps)
    out: dict[str, Contender] = {g.name: g, loop.name: loop}
    if torch is not None:
        t = TorchMLP(torch, w0, activation, lr)
        t.set_data(X, Y, batch, max_steps)
        out[t.name] = t
    return out
