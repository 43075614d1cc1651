"""Independent float64 NumPy references (no graphnet inside): an MLP's loss, gradients and
the textbook optimizer updates, with their constants written here, not read from graphnet."""
from __future__ import annotations

import numpy as np

#: Adam's published defaults (Kingma & Ba, 2015), written out independently of graphnet.
ADAM_LR, ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-8


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mlp_forward(params: list, x: np.ndarray, activation: str = "tanh") -> tuple[np.ndarray, list]:
    """Logits of an MLP ``[W1, b1, W2, b2, ...]`` and the hidden activations (inputs first)."""
    act = np.tanh if activation == "tanh" else (lambda a: np.maximum(a, 0))
    hs = [x]
    for i in range(0, len(params) - 2, 2):
        hs.append(act(hs[-1] @ params[i] + params[i + 1]))
    return hs[-1] @ params[-2] + params[-1], hs


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy over the batch."""
    return float(-log_softmax(logits)[np.arange(len(y)), y].mean())


def mlp_loss_and_grads(params: list, x: np.ndarray, y: np.ndarray,
                       activation: str = "tanh") -> tuple[float, list]:
    """Mean cross-entropy and its gradient for each parameter (hand-derived backward pass)."""
    logits, hs = mlp_forward(params, x, activation)
    n = len(y)
    d = np.exp(log_softmax(logits))
    d[np.arange(n), y] -= 1
    d /= n
    grads = [None] * len(params)
    for i in range(len(params) - 2, -1, -2):
        h = hs[i // 2]
        grads[i], grads[i + 1] = h.T @ d, d.sum(axis=0)
        if i:
            d = d @ params[i].T
            d = d * (1 - h ** 2) if activation == "tanh" else d * (h > 0)
    return cross_entropy(logits, y), grads


def sgd_step(p: np.ndarray, g: np.ndarray, v: np.ndarray | None, lr: float, momentum: float = 0.0,
             nesterov: bool = False, wd: float = 0.0) -> None:
    """One SGD step in place: decoupled decay ``p *= 1 - lr*wd``, then (Nesterov) momentum."""
    p *= 1 - lr * wd
    if not momentum:
        p -= lr * g
        return
    v *= momentum
    v += g
    p -= lr * (g + momentum * v) if nesterov else lr * v


def adam_step(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, lr: float,
              beta1: float, beta2: float, eps: float, wd: float = 0.0) -> None:
    """One bias-corrected Adam (AdamW when ``wd``) step in place; ``t`` counts from 1."""
    p *= 1 - lr * wd
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    p -= lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
