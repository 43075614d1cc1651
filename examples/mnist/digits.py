"""Any picture of a digit -> a 28x28 image made as MNIST's were (for predict.py and serve.py).

MNIST digits are light ink on a black background, grey levels 0..255, the ink's
bounding box scaled to fit 20x20 (keeping its aspect ratio, with anti-aliasing)
and placed in a 28x28 field so that its centre of mass is at the field's centre.
:func:`to_mnist` does the same to a grey image of any size or polarity;
:func:`load_image` and :func:`decode_image` read files and bytes with Pillow.
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from graphnet.io import read_regular

SIDE = 28           #: the field MNIST digits live in
BOX = 20            #: the ink's bounding box is scaled to fit BOX x BOX
CENTRE = 14.0       #: where the centre of mass lands (row and column; MNIST's test mean is 14.0)
MIN_CONTRAST = 24   #: grey levels the ink must stand out from the background by
INK_FRACTION = 0.1  #: pixels fainter than this share of the strongest ink count as background
FIT_SIDE = 64       #: the background is fitted on a grid of at most FIT_SIDE x FIT_SIDE pixels
FIT_ROUNDS = 6      #: fits of the background, each leaving out the ink the last one found
MAX_SIDE = 1024     #: larger pictures are first shrunk to this (keeps big photos cheap)
MAX_FILE_BYTES = 64 << 20      #: a picture file may have at most this many bytes
MAX_FILE_PIXELS = 50_000_000   #: ... and at most this many pixels (a 48 Mpx photo fits)


class DigitError(ValueError):
    """A picture that cannot be turned into a digit (unreadable, empty, or blank)."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """The grey levels (float64, 0..255, 2-D) of the PNG/JPEG/... file at ``path``: a regular
    file of at most MAX_FILE_BYTES holding at most MAX_FILE_PIXELS (checked before decoding)."""
    data = read_regular(path, MAX_FILE_BYTES, DigitError)
    return decode_image(data, str(path), MAX_FILE_PIXELS)


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """The grey levels (float64, 0..255, 2-D) of an encoded image; ``name`` goes in errors.

    ``max_pixels``: refuse (before decoding) pictures with more pixels than this.
    """
    if not data:
        raise DigitError(f"{name}: is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise DigitError(f"{name}: is {img.width}x{img.height} pixels, more than the "
                                 f"{max_pixels} allowed")
            img = ImageOps.exif_transpose(img)
            img.thumbnail((MAX_SIDE, MAX_SIDE))
            return grey_levels(img, name)
    except DigitError:
        raise
    except UnidentifiedImageError:
        raise DigitError(f"{name}: is not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise DigitError(f"{name}: is too large to decode ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise DigitError(f"{name}: the image data is damaged ({exc})") from None


def grey_levels(img: Image.Image, name: str = "image") -> np.ndarray:
    """A Pillow image as grey levels (float64, 0..255, 2-D).

    Where transparency varies (a digit drawn on a transparent background) the
    opacity is the ink; otherwise the luminance.
    """
    if img.width == 0 or img.height == 0:
        raise DigitError(f"{name}: has no pixels")
    if "A" in img.getbands() or "transparency" in img.info:
        alpha = np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.float64)
        if alpha.min() < alpha.max():
            return alpha
    if img.mode.startswith("I") or img.mode == "F":  # 16- or 32-bit grey: rescale, not clip
        grey = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(grey.max()), 255.0)
        return np.clip(grey * (255.0 / top), 0, 255)
    return np.asarray(img.convert("L"), dtype=np.float64)


def light_on_dark(grey: np.ndarray) -> np.ndarray:
    """Ink as light levels on a background near 0: inverted when the background is light
    (judged by the median of the border pixels), then the background subtracted, pixel by
    pixel (:func:`background_levels`), so uneven lighting is not taken for ink. Dark ink on
    light paper is also divided by the paper's light (relative to its mean), so ink in the
    shade weighs as much as ink in the light."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if float(np.median(border)) <= 127.5:
        return np.clip(grey - background_levels(grey), 0, None)
    paper = np.clip(-background_levels(-grey), 1.0, None)
    return np.clip(paper - grey, 0, None) * (float(paper.mean()) / paper)


def background_levels(levels: np.ndarray) -> np.ndarray:
    """The background under ``levels`` (ink the higher ones): a quadratic surface (a flat
    sheet, a lighting gradient, a vignette) fitted to the pixels that are not ink."""
    h, w = levels.shape
    step = max(1, max(h, w) // FIT_SIDE)  # fitted on a grid of at most FIT_SIDE^2 pixels
    y, x = _unit_coords(h, step)[:, None], _unit_coords(w, step)[None, :]
    basis = np.stack(np.broadcast_arrays(1.0, x, y, x * x, x * y, y * y), axis=-1).reshape(-1, 6)
    sample = levels[::step, ::step].ravel()
    keep = np.ones(sample.shape, dtype=bool)
    for _ in range(FIT_ROUNDS):
        coef = np.linalg.lstsq(basis[keep], sample[keep], rcond=None)[0]
        ink = sample - basis @ coef >= MIN_CONTRAST / 2  # stands out: left out of the next fit
        if np.array_equal(~ink, keep) or ink.all():
            break
        keep = ~ink
    y, x = _unit_coords(h)[:, None], _unit_coords(w)[None, :]
    c0, cx, cy, cxx, cxy, cyy = coef
    return c0 + cy * y + cyy * y * y + x * (cx + cxx * x + cxy * y)


def _unit_coords(n: int, step: int = 1) -> np.ndarray:
    """Every ``step``-th of ``n`` pixel positions, scaled to [-1, 1]."""
    return np.arange(0, n, step) * (2.0 / max(n - 1, 1)) - 1.0


def to_mnist(grey: Any, name: str = "image") -> np.ndarray:
    """A 28x28 uint8 digit, light on black, made from grey levels of any size and polarity.

    Raises :class:`DigitError` (naming ``name``) when no ink stands out from the background.
    """
    grey = np.asarray(grey, dtype=np.float64)
    if grey.ndim != 2 or grey.size == 0:
        raise DigitError(f"{name}: expected a 2-D grey image, got shape {grey.shape}")
    if not np.isfinite(grey).all():
        raise DigitError(f"{name}: holds NaN or infinite grey levels")
    ink = light_on_dark(grey)
    strongest = float(ink.max())
    if strongest < MIN_CONTRAST:
        raise DigitError(f"{name}: is blank (no ink stands out from the background by "
                         f"{MIN_CONTRAST} grey levels or more)")
    ink = np.where(ink >= INK_FRACTION * strongest, ink * (255.0 / strongest), 0.0)
    return centre_in_field(fit_box(crop_to_ink(ink)))


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The smallest rectangle holding every non-zero pixel."""
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """``ink`` resampled (anti-aliased) so its longer side is ``box``, aspect ratio kept."""
    h, w = ink.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(ink.astype(np.float32))  # mode F
    out = np.asarray(img.resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    return np.clip(out, 0, 255)


def centre_in_field(patch: np.ndarray, side: int = SIDE, centre: float = CENTRE) -> np.ndarray:
    """``patch`` placed in a ``side`` x ``side`` black field with its centre of mass at
    ``centre`` (to the nearest pixel, kept wholly inside), as uint8."""
    h, w = patch.shape
    total = patch.sum()
    rows, cols = np.arange(h), np.arange(w)
    cy = (patch.sum(axis=1) @ rows) / total
    cx = (patch.sum(axis=0) @ cols) / total
    top = min(max(int(round(centre - cy)), 0), side - h)
    left = min(max(int(round(centre - cx)), 0), side - w)
    field = np.zeros((side, side))
    field[top:top + h, left:left + w] = patch
    return np.rint(field).astype(np.uint8)


def save_png(image28: np.ndarray, path: str | os.PathLike, scale: int = 10) -> None:
    """Write a 28x28 image as a PNG, each pixel a ``scale`` x ``scale`` square."""
    img = Image.fromarray(np.asarray(image28, dtype=np.uint8))  # mode L
    img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST).save(path)


# --- the model side, shared by the two scripts ---------------------------------------
class SetupError(RuntimeError):
    """The model or backend the user named cannot be used (a one-line message)."""


def load_model(path: str | os.PathLike, backend: str | None = None) -> Any:
    """The Classifier saved at ``path`` (a model.npz or its folder) on ``backend``
    (default: GRAPHNET_BACKEND or NumPy); it must take 28x28 images."""
    import graphnet as gn
    from graphnet import nn
    from graphnet.io import CheckpointError
    try:
        if backend:
            gn.set_backend(backend)
        gn.backend()
    except (gn.BackendUnavailableError, ValueError) as exc:
        raise SetupError(str(exc)) from None
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.npz")
    if not os.path.exists(path):
        raise SetupError(f"{path} does not exist (train a model with examples/mnist/train.py)")
    try:
        model = nn.load(path)
    except (CheckpointError, OSError) as exc:
        raise SetupError(f"cannot load the model: {exc}") from None
    if (SIDE, SIDE) not in model.image_shapes():
        raise SetupError(f"{path}: the model takes images of shape "
                         f"{' or '.join(map(str, model.image_shapes()))}, not {SIDE}x{SIDE} digits")
    return model


def top_classes(probs: Any, k: int = 3) -> list[tuple[int, float]]:
    """The ``k`` most probable ``(class, probability)`` pairs of one probability vector;
    DigitError when the vector holds NaN or inf (a model whose output overflowed)."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    if not np.isfinite(p).all():
        raise DigitError(f"the model's probabilities hold NaN or inf ({p.tolist()!r:.80}); "
                         "its weights overflow on this picture")
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(c), float(p[c])) for c in order]
