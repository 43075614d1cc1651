"""``Classifier``: a network plus the preprocessing learned from its training set."""
from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

from ..backends import backend
from ..backends.host import to_numpy
from ..graph import Graph
from ..io import CheckpointError, atomic_write_npz, read_npz
from ..node import Input, Node, Parameter
from ..ops import softmax, softmax_cross_entropy
from .layers import Layer, Sequential, from_config


class Classifier:
    """A network from images to class scores, built into graphs once.

    Raw images (pixel values 0-255, any numeric dtype, shape ``(N, *image_shape)``)
    are scaled by ``pixel_scale`` and centred by the training mean (see
    :meth:`fit_preprocessing`); both travel with the saved model.
    """

    def __init__(self, network: Layer, input_shape: Sequence[int] = (784,), num_classes: int = 10,
                 pixel_scale: float = 1 / 255, check_numerics: bool = False) -> None:
        self.network = network
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.pixel_scale = float(pixel_scale)
        self.backend = backend()
        self.images = Input("images", shape=(None,) + self.input_shape)
        self.labels = Input("labels", shape=(None,), dtype="int64")
        self.logits: Node = network(self.images)
        if self.logits.shape is not None and self.logits.shape[-1] != self.num_classes:
            raise ValueError(f"the network ends in {self.logits.shape[-1]} outputs, "
                             f"but the classifier has {self.num_classes} classes")
        self.probs = softmax(self.logits)
        self.features: Optional[Node] = _features_of(network)
        self.loss = softmax_cross_entropy(self.logits, self.labels)
        self.mean = Parameter(self.backend.xp.zeros(self.input_shape), name="mean", trainable=False)
        self.train_graph = Graph([self.logits], cost=self.loss, check_numerics=check_numerics)
        outs = [self.probs] + ([self.features] if self.features is not None else [])
        self.eval_graph = Graph(outs, cost=self.loss, check_numerics=check_numerics)

    # --- parameters -------------------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        """The trainable parameters."""
        return self.network.parameters()

    def named_arrays(self) -> dict[str, Parameter]:
        """Every array the model holds (parameters, statistics, the input mean), by name."""
        out = {f"net.{k}": p for k, p in self.network.named_parameters().items()}
        out["mean"] = self.mean
        return out

    # --- preprocessing ------------------------------------------------------------------
    def prepare(self, images: Any) -> Any:
        """Raw images -> the network's float input on the active backend."""
        b = self.backend
        x = images if b.is_array(images) else b.asarray(to_numpy(images))
        n_pixels = math.prod(self.input_shape)
        if x.ndim < 1 or x.size != x.shape[0] * n_pixels or x.dtype.kind not in "uif":
            raise ValueError(f"images must be numeric with {n_pixels} pixels each "
                             f"(e.g. shape (N, 28, 28)), got shape {tuple(x.shape)} "
                             f"and dtype {x.dtype}")
        x = x.reshape((x.shape[0],) + self.input_shape).astype(self.mean.dtype)
        x *= self.pixel_scale
        x -= self.mean.value
        return x

    def fit_preprocessing(self, images: Any) -> None:
        """Learn the per-pixel training mean (after scaling) from ``images``."""
        saved = self.mean.value
        self.mean.value = saved * 0
        self.mean.value = self.prepare(images).mean(axis=0)

    # --- inference ----------------------------------------------------------------------
    def predict(self, images: Any, batch_size: int = 4096) -> Any:
        """Class indices (on the active backend) for raw images."""
        x = self.prepare(images)
        xp = self.backend.xp
        out = [self.eval_graph.run({self.images: x[i:i + batch_size]})[0].argmax(axis=1)
               for i in range(0, x.shape[0], batch_size)]
        return xp.concatenate(out) if out else xp.zeros((0,), dtype=xp.int64)

    def deep_features(self, images: Any, batch_size: int = 4096) -> tuple[Any, Any]:
        """``(probabilities, last hidden layer)`` for raw images, from one run per batch."""
        if self.features is None:
            raise ValueError("this network has no hidden layer to take features from")
        x = self.prepare(images)
        probs, feats = [], []
        for i in range(0, x.shape[0], batch_size):
            p, f = self.eval_graph.run({self.images: x[i:i + batch_size]})
            probs.append(p)
            feats.append(f.reshape(f.shape[0], -1))
        xp = self.backend.xp
        return xp.concatenate(probs), xp.concatenate(feats)

    def evaluate(self, x: Any, y: Any, batch_size: int = 2000, prepared: bool = False) -> dict:
        """Accuracy and mean loss as Python floats (one host synchronisation)."""
        b = self.backend
        xp = b.xp
        if not prepared:
            x = self.prepare(x)
        y = y if b.is_array(y) else b.asarray(to_numpy(y))
        correct, loss_sum = xp.zeros((), dtype=xp.int64), xp.zeros((), dtype=x.dtype)
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            loss, probs = self._eval_batch(xb, yb)
            correct += (probs.argmax(axis=1) == yb).sum()
            loss_sum += loss * xb.shape[0]
        n = max(int(x.shape[0]), 1)
        return {"accuracy": int(correct) / n, "loss": float(loss_sum) / n}

    def _eval_batch(self, xb: Any, yb: Any) -> tuple[Any, Any]:
        loss, probs = self.eval_graph.values({self.images: xb, self.labels: yb},
                                             [self.loss, self.probs])
        return loss, probs

    # --- saving and loading -------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """What rebuilds this model's architecture."""
        return {"network": {"type": type(self.network).__name__, **self.network.config()},
                "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "pixel_scale": self.pixel_scale}

    def host_arrays(self) -> dict[str, Any]:
        """Copies of every array on the host (the live model stays where it is)."""
        return {k: to_numpy(p.value) for k, p in self.named_arrays().items()}

    def load_host_arrays(self, arrays: dict[str, Any], source: str = "checkpoint") -> None:
        """Set every array from host copies; mismatched names or shapes raise CheckpointError."""
        mine = self.named_arrays()
        missing = sorted(set(mine) - set(arrays))
        extra = sorted(set(arrays) - set(mine))
        if missing or extra:
            raise CheckpointError(f"{source}: arrays do not match this model's architecture "
                                  f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})")
        for k, p in mine.items():
            if tuple(arrays[k].shape) != p.shape:
                raise CheckpointError(f"{source}: array {k!r} has shape {tuple(arrays[k].shape)}, "
                                      f"the model needs {p.shape}")
        for k, p in mine.items():
            p.value = arrays[k]

    def save(self, path: str | os.PathLike) -> None:
        """Write the model (config and host copies of its arrays) to an ``.npz`` file."""
        atomic_write_npz(path, self.host_arrays(), {"kind": "model", "model": self.config()})


def _features_of(network: Layer) -> Optional[Node]:
    if isinstance(network, Sequential):
        try:
            return network.features()
        except ValueError:
            return None
    return None


def model_from_config(cfg: dict[str, Any], source: str = "checkpoint") -> Classifier:
    """Build an untrained Classifier from a saved config."""
    try:
        network = from_config(cfg["network"])
        return Classifier(network, cfg["input_shape"], cfg["num_classes"], cfg["pixel_scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: the model config cannot be rebuilt: {exc}") from None


def load(path: str | os.PathLike) -> Classifier:
    """Load a model saved by :meth:`Classifier.save` (or a training checkpoint) onto the active backend."""
    arrays, meta = read_npz(path)
    if "model" not in meta:
        raise CheckpointError(f"{path}: holds no model")
    model = model_from_config(meta["model"], str(path))
    model.load_host_arrays({k[len("model/"):] if k.startswith("model/") else k: v
                            for k, v in arrays.items() if not k.startswith("optim/")}, str(path))
    return model
