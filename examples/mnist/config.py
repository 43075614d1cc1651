"""The MNIST example's configuration: image size, presets, defaults, flag rules and networks.

Everything MNIST-specific the example needs is here; graphnet itself knows nothing of MNIST.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:  # graphnet is imported when a network is built, after the backend is chosen
    from graphnet.nn import Layer, Sequential

SIDE = 28                              #: MNIST images are SIDE x SIDE grey levels
IMAGE_SHAPE = (SIDE, SIDE)
N_PIXELS = SIDE * SIDE                 #: the MLP's input size
# Learning-curve points: every CURVE_EVERY training batches (the --eval-every default), each
# evaluated on CURVE_IMAGES training and CURVE_IMAGES test images. Evaluation is forward
# passes only, but 2 x 2000 images every 100 batches added 8-14% to an epoch; this 2-3%.
CURVE_EVERY, CURVE_IMAGES = 200, 1000
CNN_INPUT_SHAPE = (1, SIDE, SIDE)      #: the CNNs' input (one channel)
NUM_CLASSES = 10
PIXEL_SCALE = 1 / 255                  #: raw uint8 grey levels -> [0, 1]
N_IMAGES = 70_000                      #: training plus test images (memory estimate)
# Parameters of the fixed convolutional networks, and floats of activations per image
# (forward values kept for the backward pass), for the memory estimate.
CNN_SIZES = {"cnn": (1_200_000, 120_000), "cnn-pool": (230_000, 40_000),
             "cnn-best": (360_000, 110_000)}

PRESETS: dict[str, dict[str, Any]] = {
    # The reference's two published set-ups: tanh, softmax, cross-entropy, batch 128, plain SGD.
    "seed-10": dict(layers=[10], activation="tanh", epochs=1, optimizer="sgd", lr=0.5),
    # The reference script's own learning rate for this network: 1.0, loss averaged over the batch.
    "seed-128-64-10": dict(layers=[128, 64, 10], activation="tanh", epochs=10, optimizer="sgd",
                           lr=1.0),
    # Best fully connected network that trains in about a minute on two quiet CPU cores; shifts
    # of up to 2 px took seed 0 from 98.30% to 98.75% at the same 12 epochs.
    "fast": dict(layers=[512, 256, 10], activation="relu", epochs=12, optimizer="sgd", lr=0.05,
                 momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine", augment=True),
    # The strongest fully connected network we found.
    "best": dict(layers=[1024, 1024, 10], activation="relu", epochs=40, optimizer="sgd", lr=0.05,
                 momentum=0.9, nesterov=True, weight_decay=5e-4, dropout=0.2, schedule="cosine",
                 augment=True),
    # Convolutional networks (mnist_cnn below). The classic conv32-conv64-pool-dense128 spends
    # 3/4 of its work on its second convolution at full resolution: about 50 s an epoch here,
    # so 6 minutes allow 6 epochs, which gave 99.15-99.35% by seed. Pooling after each
    # convolution (cnn-pool) costs a fifth as much per image and trains 12 epochs of shifted
    # digits in about 5 minutes in all: see README "Results" for seeds 0-2.
    "cnn": dict(model="cnn-pool", epochs=12, batch_size=128, optimizer="adam", lr=3e-3,
                schedule="cosine", augment=True),
    # The classic network: Adam at 3e-3 with a cosine decay over 8 epochs of digits shifted
    # by up to 2 px (99.32% on seeds 0-2, 7 minutes).
    "cnn-classic": dict(model="cnn", epochs=8, batch_size=128, optimizer="adam", lr=3e-3,
                        schedule="cosine", augment=True),
    # Two BatchNorm conv blocks, trained on shifted (2 px) and rotated (10 degrees) digits.
    "cnn-best": dict(model="cnn-best", epochs=15, batch_size=128, optimizer="adam", lr=2e-3,
                     schedule="cosine", augment=True, rotate=10.0),
}
DEFAULTS: dict[str, Any] = dict(layers=[512, 256, 10], activation="relu", epochs=12, batch_size=128,
                                optimizer="sgd", lr=0.05, momentum=0.0, nesterov=False,
                                weight_decay=0.0, dropout=0.0, schedule="constant", seed=0,
                                augment=False, model="mlp", rotate=0.0, zoom=0.0)
FLAG_KEYS = ("layers", "activation", "epochs", "batch_size", "optimizer", "lr", "momentum",
             "nesterov", "weight_decay", "dropout", "schedule", "seed", "augment")
CHANGEABLE_ON_RESUME = ("epochs", "batch_size", "lr", "schedule", "augment")
MLP_ONLY = ("layers", "activation", "dropout")
SGD_ONLY = ("momentum", "nesterov")
CHOICES = {"activation": ("tanh", "relu", "sigmoid"), "optimizer": ("sgd", "adam"),
           "schedule": ("constant", "step", "cosine"),
           "model": ("mlp", "cnn", "cnn-pool", "cnn-best")}
MAX_SEED = 2**32 - 1


def build_network(cfg: Mapping[str, Any]) -> tuple[Sequential, tuple[int, ...]]:
    """The network and its input shape for a config."""
    from graphnet.nn import MLP
    if cfg.get("model", "mlp") == "mlp":
        return MLP(cfg["layers"], N_PIXELS, cfg["activation"], cfg["dropout"]), (N_PIXELS,)
    return mnist_cnn(cfg), CNN_INPUT_SHAPE


def describe_network(cfg: Mapping[str, Any]) -> str:
    """``mlp [128, 64, 10]`` or the CNN's name, for the start-up line."""
    model = cfg.get("model", "mlp")
    return f"mlp {cfg['layers']}" if model == "mlp" else model


def mnist_cnn(cfg: Optional[Mapping[str, Any]] = None) -> Sequential:
    """The MNIST example's convolutional networks, for input (N, 1, 28, 28).

    ``cfg["model"]``:

    * ``"cnn"`` (the classic Keras example): conv 32 3x3, ReLU, conv 64 3x3, ReLU, max-pool 2,
      dropout 0.25, flatten, dense 128, ReLU, dropout 0.5, dense 10 (1.2 M parameters);
    * ``"cnn-pool"``: the same with a max-pool 2 after each convolution (28 -> 26 -> 13 -> 11
      -> 5), so dense 1600 -> 128 (0.23 M parameters, a fifth of the work per image);
    * ``"cnn-best"``: two blocks of [conv 3x3, BatchNorm, ReLU] x 2 then max-pool 2
      (32 then 64 channels, no padding: 28 -> 24 -> 12 -> 8 -> 4), dropout 0.25, dense 256
      with BatchNorm and ReLU, dropout 0.4, dense 10 (0.36 M parameters).

    Where a ReLU meets a max-pool the pool comes first: ``relu(max(...)) == max(relu(...))``
    (and so are the gradients), on a quarter of the values. Other keys of ``cfg`` are
    ignored. The first layer is always the Conv2d whose ``W`` is (32, 1, 3, 3).
    """
    from graphnet.nn import (BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear,
                             MaxPool2d, ReLU, Sequential)
    cfg = dict(cfg or {})
    model = cfg.get("model", "cnn")
    if model == "cnn":
        # Glorot-uniform weights, like the Keras reference: with He-normal convolutions the
        # same training reached a mean loss of 0.375 in epoch 1 instead of 0.239.
        return Sequential([
            Conv2d(1, 32, 3, init="glorot"), ReLU(),
            Conv2d(32, 64, 3, init="glorot"), MaxPool2d(2), ReLU(), Dropout(0.25), Flatten(),
            Linear(64 * 12 * 12, 128), ReLU(), Dropout(0.5),
            Linear(128, NUM_CLASSES),
        ])
    if model == "cnn-pool":
        return Sequential([
            Conv2d(1, 32, 3, init="glorot"), MaxPool2d(2), ReLU(),
            Conv2d(32, 64, 3, init="glorot"), MaxPool2d(2), ReLU(), Dropout(0.25), Flatten(),
            Linear(64 * 5 * 5, 128), ReLU(), Dropout(0.5),
            Linear(128, NUM_CLASSES),
        ])
    if model == "cnn-best":
        def block(c_in: int, c_out: int, pool: bool = False) -> list[Layer]:
            return ([Conv2d(c_in, c_out, 3, bias=False), BatchNorm2d(c_out)]
                    + ([MaxPool2d(2)] if pool else []) + [ReLU()])
        return Sequential(
            block(1, 32) + block(32, 32, pool=True) + block(32, 64) + block(64, 64, pool=True)
            + [Dropout(0.25), Flatten(), Linear(64 * 4 * 4, 256, bias=False, init="he"),
               BatchNorm1d(256), ReLU(), Dropout(0.4), Linear(256, NUM_CLASSES)])
    raise ValueError(f"unknown convolutional model {model!r}; choose 'cnn', 'cnn-pool' or "
                     "'cnn-best'")
