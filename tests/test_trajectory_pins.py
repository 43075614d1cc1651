"""The bits of a few training steps of the example's presets, pinned.

A change that alters a preset's training trajectory (initialisation, an op's rounding, the
convolution's algorithm, the optimizer, the batch order, augmentation, dropout) changes
these digests. When one fails on purpose: re-measure the README's results figures of the
presets it names (their accuracies no longer describe the code), then re-pin with

    PYTHONPATH=$PWD python tests/test_trajectory_pins.py

The bits depend on NumPy's and OpenBLAS's kernels for this machine's CPU, so the pins are
kept per (NumPy version, OpenBLAS core); elsewhere the test is skipped with that reason. They
are taken with one BLAS thread: OpenBLAS splits some products (128x784 @ 784x512, the MLPs'
first layer) differently on two threads, so an MLP's bits also depend on the thread count.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import threadpoolctl

import graphnet as gn
from examples.mnist import common, config

# (numpy version, OpenBLAS core) -> preset -> SHA-256 (first 16 hex digits) of the weights
PINS: dict[tuple[str, str], dict[str, str]] = {
    ('2.4.6', 'SkylakeX'): {'fast': '02a2b4054a42bf57', 'best': '50d8031e20c5b155',
                            'cnn': 'b652753bd909f684', 'cnn-classic': '83770fcc626c468d',
                            'cnn-best': '8e4f195be64a9855'},
}
STEPS_IMAGES = 3 * 128 + 40  # three full batches and a short one, one epoch


def blas_core() -> str:
    """OpenBLAS's core type (``OPENBLAS_CORETYPE`` chooses it on the project's machines)."""
    info = [i for i in threadpoolctl.threadpool_info() if i.get("internal_api") == "openblas"]
    return info[0].get("architecture") or "?" if info else "no-openblas"


def environment() -> tuple[str, str]:
    return np.__version__, blas_core()


def trained_digest(preset: str) -> str:
    """SHA-256 of every array the model holds after one short epoch of ``preset`` on fixed digits."""
    cfg = {**config.DEFAULTS, **config.PRESETS[preset], "epochs": 1, "seed": 3}
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(STEPS_IMAGES, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=STEPS_IMAGES)
    with gn.use_backend("numpy"), threadpoolctl.threadpool_limits(1):
        model, trainer = common.build_trainer(cfg, x, None, eval_every=0, progress=False)
        trainer.fit(x, y, epochs=1)
        h = hashlib.sha256()
        for name, p in sorted(model.named_arrays().items()):
            value = np.ascontiguousarray(gn.to_numpy(p.value))
            h.update(name.encode() + str(value.dtype).encode() + value.tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("preset", ["fast", "best", "cnn", "cnn-classic", "cnn-best"])
def test_a_preset_trains_the_pinned_bits(preset):
    pins = PINS.get(environment())
    if pins is None:
        pytest.skip(f"no pinned digests for NumPy {np.__version__} with OpenBLAS core "
                    f"{blas_core()!r}: pin them with `python {__file__}` on such a machine")
    got = trained_digest(preset)
    assert got == pins[preset], (
        f"preset {preset!r}: one epoch on fixed digits gave weights {got}, pinned {pins[preset]}."
        " The training trajectory changed: re-measure the README's figures for this preset, "
        "then re-pin (see this file's docstring)")


def test_the_digest_sees_one_changed_bit(monkeypatch):
    """The pin would notice a trajectory that differs by one rounding step."""
    before = trained_digest("fast")
    real = gn.optim.SGD._update

    def nudged(self, i, p, *args, **kwargs):
        real(self, i, p, *args, **kwargs)
        if i == 0:
            flat = p._value.reshape(-1)
            flat[0] = np.nextafter(flat[0], np.inf)
    monkeypatch.setattr(gn.optim.SGD, "_update", nudged)
    assert trained_digest("fast") != before


if __name__ == "__main__":
    key = environment()
    digests = {p: trained_digest(p) for p in ["fast", "best", "cnn", "cnn-classic", "cnn-best"]}
    print(f"    {key!r}: {digests!r},")
    sys.exit(0)
