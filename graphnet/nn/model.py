"""``Classifier``: a network plus the preprocessing learned from its training set."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..backends import backend
from ..backends.base import Backend
from ..backends.host import to_numpy
from ..checks import fits_in_memory, positive_int, sizes
from ..errors import ArgumentError, FeedError
from ..graph import Graph
from ..io import CheckpointError, atomic_write_npz, check_path, read_npz
from ..node import Input, Node, Parameter
from ..ops import softmax, softmax_cross_entropy
from ..hints import Array, Data, PathLike
from ..training.protocol import TRAINABLE_MEMBERS, TrainableModel, missing_members  # noqa: F401 (re-exported)
from .layers import Layer, Linear, Sequential, from_config



class ClassifierInputError(FeedError):
    """Images, labels or a batch size given to a Classifier are not what the model expects."""


class Classifier:
    """A network from images to class scores, built into graphs once.

    Raw images (pixel values 0-255, any numeric dtype, shape ``(N, *image_shape)``)
    are scaled by ``pixel_scale`` and centred by the training mean (see
    :meth:`fit_preprocessing`); both travel with the saved model.
    """

    def __init__(self, network: Layer, input_shape: Optional[Sequence[int]] = None,
                 num_classes: Optional[int] = None, pixel_scale: float = 1 / 255,
                 check_numerics: bool = False) -> None:
        self.network = network
        if input_shape is None:
            input_shape = _declared_input_shape(network)
        if input_shape is None:
            raise ArgumentError("Classifier input_shape: not given, and the network does not "
                                "declare its input size; give input_shape (e.g. (784,) or "
                                "(1, 28, 28)), or a network whose first layer declares it "
                                "(e.g. MLP(..., in_features=784))")
        self.input_shape = tuple(sizes(input_shape, "Classifier input_shape"))
        fits_in_memory(self.input_shape, 8, "Classifier input_shape")  # the mean array
        self.pixel_scale = float(pixel_scale)
        if not (math.isfinite(self.pixel_scale) and self.pixel_scale > 0):
            raise ValueError(f"pixel_scale must be a positive number, got {pixel_scale!r}")
        self.backend = backend()
        self.images = Input("images", shape=(None,) + self.input_shape)
        self.labels = Input("labels", shape=(None,), dtype="int64")
        self.logits: Node = network(self.images)
        self.num_classes = _num_classes(num_classes, self.logits)
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

    @property
    def inputs(self) -> tuple[Input, Input]:
        """``(images, labels)``: the inputs a training batch feeds."""
        return self.images, self.labels

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
    def image_shapes(self) -> list[tuple[int, ...]]:
        """The shapes one image may have: the input shape, flat, and the same without
        leading 1-axes (``(28, 28)`` for ``(1, 28, 28)``), or square for a flat square input."""
        n_pixels = math.prod(self.input_shape)
        shapes = [self.input_shape, (n_pixels,)]
        trimmed = self.input_shape
        while len(trimmed) > 1 and trimmed[0] == 1:
            trimmed = trimmed[1:]
        shapes.append(trimmed)
        side = math.isqrt(n_pixels)
        if len(self.input_shape) == 1 and side * side == n_pixels:
            shapes.append((side, side))
        return list(dict.fromkeys(shapes))

    @property
    def pixel_max(self) -> float:
        """The largest raw pixel value this model takes (255 for MNIST: ``1 / pixel_scale``)."""
        top = 1.0 / self.pixel_scale
        return float(round(top)) if abs(top - round(top)) < 1e-6 * top else top

    def prepare(self, images: Data) -> Array:
        """Raw images (a batch) -> the network's float input on the active backend.

        Refuses images of another shape or pixel scale (see :meth:`check_images`).
        """
        return self._scale(self.check_images(images)[0])

    def _scale(self, x: Array) -> Array:
        x = x.astype(self.mean.dtype)
        x *= self.pixel_scale
        x -= self.mean.value
        return x

    def check_images(self, images: Data, argument: str = "images") -> tuple[Array, bool]:
        """``images`` as a backend batch ``(N, *input_shape)``, and whether it was one image.

        Takes one image or a batch in any of :meth:`image_shapes`, with raw pixel values
        in ``[0, pixel_max]`` (the scale the model was trained on); anything else raises
        :class:`ClassifierInputError` saying what was expected. Costs one min/max
        reduction per call (and an integrality test only when all values are <= 1).
        """
        x = self._as_backend_array(images, argument)
        if x.dtype.kind not in "uif":
            raise ClassifierInputError(f"{argument}: expected real pixel values (integers or "
                                       f"floats), got dtype {x.dtype}")
        shapes = self.image_shapes()
        batch = x.ndim >= 2 and tuple(x.shape[1:]) in shapes  # (1, 28, 28): a batch of one
        single = not batch and tuple(x.shape) in shapes
        if not (batch or single):
            n_pixels = math.prod(self.input_shape)
            one = " or ".join(str(s) for s in shapes)
            many = " or ".join(str(("N",) + s).replace("'", "") for s in shapes)
            raise ClassifierInputError(f"{argument}: images must have {n_pixels} pixels each: one "
                                       f"image of shape {one}, or a batch {many}; got shape "
                                       f"{tuple(x.shape)}")
        self._check_pixel_scale(x, argument)
        return x.reshape((1 if single else x.shape[0],) + self.input_shape), single

    def _as_backend_array(self, values: Data, argument: str) -> Array:
        b = self.backend
        if b.is_array(values):
            return values
        try:
            host = np.asarray(to_numpy(values))
        except (ValueError, TypeError) as exc:
            raise ClassifierInputError(f"{argument}: cannot be read as an array ({exc})") from None
        if host.dtype.kind not in "biuf":
            raise ClassifierInputError(f"{argument}: expected numbers, got dtype {host.dtype}")
        return b.asarray(host)

    def _check_pixel_scale(self, x: Array, argument: str) -> None:
        if x.size == 0 or x.dtype.kind == "u" and x.dtype.itemsize == 1 and self.pixel_max >= 255:
            return
        xp = self.backend.xp
        lo, hi = (float(v) for v in to_numpy(xp.stack([x.min(), x.max()]).astype(xp.float64)))
        top = self.pixel_max
        expected = (f"expected raw pixel values in [0, {top:g}], the scale this model was "
                    f"trained on (it scales them by {self.pixel_scale:.6g} itself)")
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ClassifierInputError(f"{argument}: contain NaN or infinite values; {expected}")
        if lo < 0 or hi > top * (1 + 1e-6):
            raise ClassifierInputError(f"{argument}: values range over [{lo:g}, {hi:g}]; "
                                       f"{expected}")
        if x.dtype.kind == "f" and top > 1 and hi <= 1 and bool((x != xp.floor(x)).any()):
            raise ClassifierInputError(
                f"{argument}: values lie in [{lo:g}, {hi:g}] with fractions, as if already "
                f"scaled to [0, 1]; {expected}: multiply them by {top:g}")

    def prepare_targets(self, y: Data, n: int, argument: str = "labels") -> Array:
        """Training labels: what :meth:`check_labels` returns (checked once, at the start)."""
        return self.check_labels(y, n, argument)

    def check_labels(self, labels: Data, n: int, argument: str = "labels") -> Array:
        """``labels`` as a backend int64 vector of exactly ``n`` class indices in
        ``[0, num_classes)``; anything else raises :class:`ClassifierInputError`."""
        y = self._as_backend_array(labels, argument)
        if y.ndim == 0:
            y = y.reshape(1)
        top = self.num_classes - 1
        if y.dtype.kind not in "iu":
            raise ClassifierInputError(f"{argument}: labels must be integers 0..{top}, got dtype "
                                       f"{y.dtype}: expected integer class indices")
        if y.ndim != 1 or y.shape[0] != n:
            got = tuple(y.shape)
            raise ClassifierInputError(
                f"{argument}: expected one label per image, shape ({n},); got shape {got} "
                f"(expected {n} labels (one per image), got shape {got}; never broadcast)")
        if n:
            xp = self.backend.xp
            lo, hi = (int(v) for v in to_numpy(xp.stack([y.min(), y.max()]).astype(xp.int64)))
            if lo < 0 or hi > top:
                raise ClassifierInputError(
                    f"{argument}: labels must be in 0..{top}, found {lo if lo < 0 else hi}: "
                    f"expected class indices in [0, {top}], got values in [{lo}, {hi}]")
        return y.astype(self.backend.xp.int64)

    def fit_preprocessing(self, images: Data) -> None:
        """Learn the per-pixel training mean (after scaling) from ``images``."""
        x = self.check_images(images)[0]
        if x.shape[0] == 0:
            raise ClassifierInputError(f"images: no images (shape {tuple(x.shape)}) to learn "
                                       "the mean from")
        self.mean.value = self.mean.value * 0
        self.mean.value = self._scale(x).mean(axis=0)

    # --- inference ----------------------------------------------------------------------
    def predict(self, images: Data, batch_size: int = 4096) -> Array:
        """Class indices (backend array) for raw images: ``(N,)`` for a batch, 0-d for one image."""
        probs = self.predict_proba(images, batch_size)
        return probs.argmax(axis=-1)

    def predict_proba(self, images: Data, batch_size: int = 4096) -> Array:
        """Class probabilities (backend array) for raw images: ``(N, num_classes)`` for a
        batch, ``(num_classes,)`` for one image."""
        return self._run_eval(images, batch_size, features=False)[0]

    def deep_features(self, images: Data, batch_size: int = 4096) -> tuple[Array, Array]:
        """``(probabilities, last hidden layer)`` for raw images, from one run per batch;
        for one image, both without the batch axis."""
        if self.features is None:
            raise ValueError("this network has no hidden layer to take features from")
        return self._run_eval(images, batch_size, features=True)

    def _run_eval(self, images: Data, batch_size: int,
                  features: bool) -> tuple[Array, Optional[Array]]:
        batch_size = positive_int(batch_size, "batch_size")
        x, single = self.check_images(images)
        xp = self.backend.xp
        probs, feats = [], []
        for i in range(0, x.shape[0], batch_size):  # scaled per batch: memory bounded by it
            out = self.eval_graph.run({self.images: self._scale(x[i:i + batch_size])})
            probs.append(out[0])
            if features:
                feats.append(out[1].reshape(out[1].shape[0], -1))
        p = xp.concatenate(probs) if probs else xp.zeros((0, self.num_classes), self.mean.dtype)
        f = (xp.concatenate(feats) if feats else None) if features else None
        if single:
            return p[0], (f[0] if f is not None else None)
        return p, f

    def evaluate(self, x: Data, y: Data, batch_size: int = 2000,
                 prepared: bool = False) -> dict[str, float]:
        """Accuracy and mean loss as Python floats (one host synchronisation).

        ``x``: raw images (or, with ``prepared=True``, the output of :meth:`prepare`);
        ``y``: exactly one class index per image.
        """
        batch_size = positive_int(batch_size, "batch_size")
        b = self.backend
        xp = b.xp
        x = self._as_backend_array(x, "x") if prepared else self.check_images(x)[0]
        if x.shape[0] == 0:
            raise ClassifierInputError("images: no images to evaluate")
        y = self.check_labels(y, int(x.shape[0]))
        correct = xp.zeros((), dtype=xp.int64)
        loss_sum = xp.zeros((), dtype=x.dtype if prepared else self.mean.dtype)
        for i in range(0, x.shape[0], batch_size):  # scaled per batch: memory bounded by it
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            xb = xb if prepared else self._scale(xb)
            loss, probs = self._eval_batch(xb, yb)
            correct += (probs.argmax(axis=1) == yb).sum()
            loss_sum += loss * xb.shape[0]
        n = int(x.shape[0])
        return {"accuracy": int(correct) / n, "loss": float(loss_sum) / n}

    def _eval_batch(self, xb: Array, yb: Array) -> tuple[Array, Array]:
        loss, probs = self.eval_graph.values({self.images: xb, self.labels: yb},
                                             [self.loss, self.probs])
        return loss, probs

    # --- saving and loading -------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """What rebuilds this model's architecture."""
        return {"network": {"type": type(self.network).__name__, **self.network.config()},
                "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "pixel_scale": self.pixel_scale}

    def host_arrays(self) -> dict[str, np.ndarray]:
        """Copies of every array on the host (the live model stays where it is)."""
        return {k: to_numpy(p.value) for k, p in self.named_arrays().items()}

    def load_host_arrays(self, arrays: Mapping[str, np.ndarray],
                         source: str = "checkpoint") -> None:
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

    def save(self, path: PathLike) -> None:
        """Write the model (config and host copies of its arrays) to an ``.npz`` file."""
        if check_path(path, "path").is_dir():
            raise ArgumentError(f"path: {path} is a folder; give a file name, e.g. "
                                f"{Path(path) / 'model.npz'}")
        atomic_write_npz(path, self.host_arrays(), {"kind": "model", "model": self.config()})


def _declared_input_shape(network: Layer) -> Optional[tuple[int]]:
    """``(in_features,)`` when the network starts with a Linear of known input size."""
    first = network[0] if isinstance(network, Sequential) and len(network) else network
    if isinstance(first, Linear) and first.in_features is not None:
        return (int(first.in_features),)
    return None


def _num_classes(given: Optional[int], logits: Node) -> int:
    """``given``, else the size of the network's output axis."""
    if given is not None:
        return positive_int(given, "Classifier num_classes")
    if logits.shape is None or logits.shape[-1] is None:
        raise ValueError("num_classes: the network's output size is not known before running "
                         "it; give num_classes")
    return int(logits.shape[-1])


def _features_of(network: Layer) -> Optional[Node]:
    if isinstance(network, Sequential):
        try:
            return network.features()
        except ValueError:
            return None
    return None


#: What a saved config without ``input_shape`` meant: models saved before it was recorded were
#: MNIST MLPs of flat 28x28 images. Kept here, in the loader, not as a Classifier default.
LEGACY_INPUT_SHAPE = (784,)


def model_from_config(cfg: dict[str, Any], source: str = "checkpoint") -> Classifier:
    """Build an untrained Classifier from a saved config."""
    try:
        network = from_config(cfg["network"])
        shape = cfg.get("input_shape")
        if shape is None and _declared_input_shape(network) is None:
            shape = LEGACY_INPUT_SHAPE
        return Classifier(network, shape, cfg.get("num_classes"), cfg.get("pixel_scale", 1 / 255))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{source}: the model config cannot be rebuilt: {exc}") from None


def load(path: PathLike) -> Classifier:
    """Load a model saved by :meth:`Classifier.save` (or a training checkpoint) onto the active backend."""
    try:
        path = check_path(path, "path")
    except ArgumentError as exc:  # callers expect a CheckpointError for any unusable file
        raise CheckpointError(str(exc)) from None
    arrays, meta = read_npz(path)
    if "model" not in meta:
        raise CheckpointError(f"{path}: holds no model")
    model = model_from_config(meta["model"], str(path))
    model.load_host_arrays({k[len("model/"):] if k.startswith("model/") else k: v
                            for k, v in arrays.items() if not k.startswith("optim/")}, str(path))
    return model
