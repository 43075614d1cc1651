"""README promises about data and the environment: every MNIST file checked against its
MD5, shifts and rotations that move pixels by the right amount, and ``python -m graphnet``
listing as available only the backends that can run."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
from graphnet.augment import keyed_uniform, random_shift
from graphnet.datasets import mnist

ROOT = Path(__file__).resolve().parents[1]


def _tiny_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    out = {}
    for name, n in zip(mnist.FILES, (6, 6, 3, 3)):
        if "images" in name:
            out[name] = (bytes.fromhex("00000803") + n.to_bytes(4, "big") + (28).to_bytes(4, "big")
                         + (28).to_bytes(4, "big") + rng.integers(0, 256, n * 784, np.uint8).tobytes())
        else:
            out[name] = bytes.fromhex("00000801") + n.to_bytes(4, "big") + \
                rng.integers(0, 10, n, np.uint8).tobytes()
    return out


@pytest.mark.parametrize("corrupt", list(mnist.FILES))
def test_each_of_the_four_files_is_checked_against_its_md5(corrupt, tmp_path, monkeypatch):
    files = _tiny_files()
    monkeypatch.setattr(mnist, "FILES", {k: hashlib.md5(v).hexdigest() for k, v in files.items()})
    for name, data in files.items():
        if name == corrupt:  # one payload byte changed: the header still parses
            data = data[:-1] + bytes([(data[-1] + 1) % 256])
        (tmp_path / name).write_bytes(data)
    with pytest.raises(mnist.MNISTError, match="MD5 mismatch") as info:
        mnist.load(root=tmp_path, download=False)
    assert corrupt in str(info.value)


# --- augmentation -------------------------------------------------------------------------
def _one_pixel(n: int, size: int, row: int, col: int) -> np.ndarray:
    x = np.zeros((n, 1, size, size), dtype=np.float32)
    x[:, 0, row, col] = 1.0
    return x


def test_shifts_move_each_image_by_whole_pixels_up_to_the_limit(backend):
    n, size = 400, 28
    out = gn.to_numpy(random_shift(backend.asarray(_one_pixel(n, size, 12, 15)), max_shift=2,
                                   image_shape=(1, size, size)))
    assert out.shape == (n, 1, size, size)
    offsets = []
    for img in out[:, 0]:
        (r,), (c,) = np.nonzero(img)  # exactly one lit pixel: moved, not blurred or lost
        offsets.append((int(r) - 12, int(c) - 15))
    assert set(offsets) == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    counts = np.unique(np.array(offsets), axis=0, return_counts=True)[1]
    assert counts.min() >= 4, f"offsets far from uniform: {counts}"


def test_rotations_turn_about_the_centre_within_the_limit(backend):
    n, size, radius, limit = 300, 29, 10, 30.0  # odd size: the centre is pixel (14, 14)
    x = np.zeros((n, 1, size, size), dtype=np.float32)
    x[:, 0, 13:16, 13 + radius:16 + radius] = 1.0  # a 3x3 spot: nearest sampling keeps it
    out = gn.to_numpy(random_shift(backend.asarray(x), max_shift=0, image_shape=(1, size, size),
                                   rotate=limit))
    angles = []
    for img in out[:, 0]:
        rows, cols = np.nonzero(img)
        assert 5 <= len(rows) <= 13, f"the spot lost its size: {len(rows)} pixels"
        dy, dx = rows.mean() - 14, cols.mean() - 14
        assert math.hypot(dy, dx) == pytest.approx(radius, abs=1.0)  # a turn keeps the radius
        angles.append(math.degrees(math.atan2(-dy, dx)))
    slack = math.degrees(math.atan(1 / radius))  # nearest-pixel sampling: up to a pixel
    assert max(abs(a) for a in angles) <= limit + slack
    assert min(angles) < -limit / 2 and max(angles) > limit / 2, "angles do not span the range"


@pytest.mark.parametrize("max_shift, shape", [(2, (5, 2, 9, 7)), (1, (3, 1, 4, 4)), (0, (2, 1, 3, 3))])
def test_shifts_match_a_loop_of_rolled_images_bit_for_bit(backend, max_shift, shape):
    x = np.random.default_rng(3).random(shape, dtype=np.float32)
    key = (5, 1, 640)
    out = gn.to_numpy(random_shift(backend.asarray(x), max_shift, rng_key=key))
    u = keyed_uniform(key, (shape[0], 3))
    bg = x.min()
    for i in range(shape[0]):
        dy, dx = (int(np.floor(u[i, k] * np.float32(2 * max_shift + 1))) - max_shift
                  for k in (0, 1))
        want = np.full(shape[1:], bg, np.float32)
        h, w = shape[2:]
        want[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[i, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        np.testing.assert_array_equal(out[i], want, err_msg=f"image {i}, shift ({dy}, {dx})")


def test_zooms_scale_about_the_centre_within_the_limit(backend):
    n, size, radius, limit = 300, 41, 12, 0.2  # odd size: the centre is pixel (20, 20)
    x = np.zeros((n, 1, size, size), dtype=np.float32)
    x[:, 0, 19:22, 19 + radius:22 + radius] = 1.0  # a 3x3 spot on the centre row
    out = gn.to_numpy(random_shift(backend.asarray(x), max_shift=0, image_shape=(1, size, size),
                                   zoom=limit, rng_key=(7, 0, 0)))
    radii = []
    for img in out[:, 0]:
        rows, cols = np.nonzero(img)
        assert rows.mean() == pytest.approx(20, abs=0.5), "a zoom moved the spot off its row"
        radii.append(cols.mean() - 20)
    factors = np.array(radii) / radius
    assert factors.min() >= 1 - limit - 1 / radius and factors.max() <= 1 + limit + 1 / radius
    assert factors.min() < 1 - limit / 2 and factors.max() > 1 + limit / 2, "factors do not span"


def test_no_zoom_draws_what_it_drew_before_zooms_existed(backend):
    x = backend.asarray(np.random.default_rng(1).random((6, 1, 12, 12), dtype=np.float32))
    plain = gn.to_numpy(random_shift(x, 2, rotate=10.0, rng_key=(1, 2, 3)))
    assert np.array_equal(plain, gn.to_numpy(random_shift(x, 2, rotate=10.0, rng_key=(1, 2, 3),
                                                           zoom=0.0)))
    assert not np.array_equal(plain, gn.to_numpy(random_shift(x, 2, rotate=10.0,
                                                              rng_key=(1, 2, 3), zoom=0.1)))


@pytest.mark.parametrize("kwargs, names", [
    (dict(max_shift=-1), "max_shift"), (dict(max_shift=1.5), "max_shift"),
    (dict(max_shift=True), "max_shift"), (dict(rotate=-5.0), "rotate"),
    (dict(rotate=float("nan")), "rotate"), (dict(rotate=200), "rotate"),
    (dict(zoom=1.0), "zoom"), (dict(zoom=-0.1), "zoom"), (dict(zoom="0.1"), "zoom"),
    (dict(zoom=float("inf")), "zoom")])
def test_augmentation_ranges_are_refused_by_name(numpy_backend, kwargs, names):
    x = gn.backend().asarray(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=rf"^{names} must be .* got "):
        random_shift(x, **{"max_shift": 1, **kwargs})


# --- python -m graphnet -------------------------------------------------------------------
def test_python_m_graphnet_lists_only_backends_that_run():
    usable = []
    for name in gn.backend_names():
        try:
            gn.get_backend(name)
            usable.append(name)
        except gn.BackendUnavailableError:
            pass
    assert gn.available_backends() == usable
    env = {"PATH": "/usr/bin:/bin", "GRAPHNET_BACKEND": "numpy"}
    # a forced dry run on the CuPy emulation (benchmarks/gpu_check.sh) must reach the child too
    env.update({k: os.environ[k] for k in ("PYTHONPATH", "GRAPHNET_CUPY_EMULATION") if k in os.environ})
    res = subprocess.run([sys.executable, "-m", "graphnet"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    listed = next(l for l in lines if l.startswith("available backends:"))
    assert listed == "available backends: " + ", ".join(usable)
    for name in set(gn.backend_names()) - set(usable):
        assert any(l.startswith(f"unavailable: {name}: ") for l in lines), name
