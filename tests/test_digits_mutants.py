"""examples/mnist/digits.py against hand-computed expectations (issue 25, the survivors and
unreached mutants of a mutmut run): reading and decoding pictures (errors named, pixel caps,
EXIF turns, 16- and 32-bit grey, transparency), the polarity and background steps, the
digit's geometry and grey levels in the 28x28 field, and the model side (load_model,
top_classes, save_png).

Where a picture is built so that every step is exact (a background of exact zeros, a patch
whose long side is already 20 pixels, so resampling is the identity), the whole 28x28 result
is written out by hand.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import graphnet as gn
from graphnet import nn
from graphnet.testing import assert_close

from examples.mnist import digits
from test_digits import ink_box


def png_bytes(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


# --- reading pictures -----------------------------------------------------------------------
def test_empty_data_is_named_with_the_default_name_or_the_given_one():
    with pytest.raises(digits.DigitError) as err:
        digits.decode_image(b"")
    assert str(err.value) == "image: is empty (0 bytes)"
    with pytest.raises(digits.DigitError) as err:
        digits.decode_image(b"", "me.png")
    assert str(err.value) == "me.png: is empty (0 bytes)"


def test_the_pixel_cap_is_checked_on_width_times_height_and_allows_the_cap_itself():
    data = png_bytes(Image.new("L", (20, 5), 255))  # 100 pixels, 4 times wider than tall
    assert digits.decode_image(data).shape == (5, 20)  # no cap
    assert digits.decode_image(data, "p", 100).shape == (5, 20)
    with pytest.raises(digits.DigitError) as err:
        digits.decode_image(data, "p", 99)
    assert str(err.value) == "p: is 20x5 pixels, more than the 99 allowed"


def test_a_file_over_the_pixel_cap_is_refused_naming_the_path(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    path.write_bytes(png_bytes(Image.new("L", (20, 5), 255)))
    monkeypatch.setattr(digits, "MAX_FILE_PIXELS", 99)
    with pytest.raises(digits.DigitError) as err:
        digits.load_image(path)
    assert str(err.value) == f"{path}: is 20x5 pixels, more than the 99 allowed"
    monkeypatch.setattr(digits, "MAX_FILE_PIXELS", 100)
    got = digits.load_image(path)
    assert got.dtype == np.float64 and got.shape == (5, 20) and (got == 255).all()


def test_a_file_over_the_byte_cap_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "d.png"
    path.write_bytes(png_bytes(Image.new("L", (20, 5), 255)))
    monkeypatch.setattr(digits, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(digits.DigitError, match=f"{path}: is {path.stat().st_size} bytes"):
        digits.load_image(path)


def test_decode_errors_name_the_picture():
    with pytest.raises(digits.DigitError) as err:
        digits.decode_image(b"hello", "h.png")
    assert str(err.value) == "h.png: is not an image Pillow can read"
    good = png_bytes(Image.new("L", (40, 40), 255))
    with pytest.raises(digits.DigitError) as err:
        digits.decode_image(good[:60], "cut.png")
    assert str(err.value).startswith("cut.png: the image data is damaged (")


def test_a_decompression_bomb_is_named(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above twice this
    with pytest.raises(digits.DigitError) as err:
        digits.decode_image(png_bytes(Image.new("L", (20, 20), 255)), "bomb.png")
    assert str(err.value).startswith("bomb.png: is too large to decode (")


def test_exif_orientation_is_applied_and_large_pictures_are_shrunk():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    img = Image.new("L", (20, 10), 0)
    img.putpixel((0, 0), 255)  # top left as stored ...
    grey = digits.decode_image(png_bytes(img, exif=exif))
    assert grey.shape == (20, 10) and grey[0, -1] == 255 and grey.sum() == 255  # ... top right
    big = digits.decode_image(png_bytes(Image.new("L", (2048, 100), 7)))
    assert big.shape == (50, 1024) and (big == 7).all()


# --- grey levels ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(0, 5), (5, 0)])
def test_a_picture_without_pixels_is_named(size):
    with pytest.raises(digits.DigitError) as err:
        digits.grey_levels(Image.new("L", size))
    assert str(err.value) == "image: has no pixels"
    with pytest.raises(digits.DigitError) as err:
        digits.grey_levels(Image.new("L", size), "me.png")
    assert str(err.value) == "me.png: has no pixels"


def test_a_one_pixel_wide_or_tall_picture_has_grey_levels():
    for size in [(1, 5), (5, 1)]:
        got = digits.grey_levels(Image.new("L", size, 9))
        assert got.shape == size[::-1] and got.dtype == np.float64 and (got == 9).all()


def test_varying_transparency_is_the_ink():
    rgba = np.zeros((4, 5, 4), np.uint8)  # black everywhere; the opacity draws the digit
    rgba[..., 3] = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    got = digits.grey_levels(Image.fromarray(rgba))
    assert got.dtype == np.float64
    assert_close(got, np.arange(20.0).reshape(4, 5) * 10, rtol=0, atol=0)
    la = Image.fromarray(rgba[..., 3]).convert("L")
    la.putalpha(Image.fromarray(rgba[..., 3]))  # mode LA: the same opacity
    assert_close(digits.grey_levels(la), np.arange(20.0).reshape(4, 5) * 10, rtol=0, atol=0)


def test_a_transparent_colour_key_makes_the_paper_transparent():
    grey = np.full((4, 4), 255, np.uint8)
    grey[1:3, 1:3] = 0  # black ink on white paper, white declared transparent
    img = Image.fromarray(grey)
    img.info["transparency"] = 255
    want = np.zeros((4, 4))
    want[1:3, 1:3] = 255  # the opaque ink
    assert_close(digits.grey_levels(img), want, rtol=0, atol=0)


def test_an_opaque_picture_with_an_alpha_channel_is_its_luminance():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, :, :3] = 200
    got = digits.grey_levels(Image.fromarray(rgba))
    assert_close(got, np.array([[200.0] * 3, [0.0] * 3]), rtol=0, atol=0)


def test_colour_is_luminance_and_eight_bit_grey_is_as_is():
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    got = digits.grey_levels(Image.fromarray(rgb))
    assert got.shape == (1, 3) and got.dtype == np.float64
    assert_close(got, np.array([[76.0, 150.0, 29.0]]), rtol=0, atol=0)  # ITU-R 601-2, rounded
    grey = digits.grey_levels(Image.fromarray(np.array([[0, 7, 255]], np.uint8)))
    assert grey.dtype == np.float64 and grey.tolist() == [[0.0, 7.0, 255.0]]


def test_sixteen_bit_grey_is_scaled_by_65535():
    img = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
    assert img.mode == "I;16"
    got = digits.grey_levels(img)
    assert got.dtype == np.float64
    assert_close(got, np.array([[0.0, 100.0, 255.0]]), rtol=0, atol=1e-12)
    grey = Image.fromarray(np.array([[0, 257 * 100, 257 * 200]], np.uint16))  # no full white
    assert grey.mode == "I;16"
    assert_close(digits.grey_levels(grey), np.array([[0.0, 100.0, 200.0]]), rtol=0, atol=1e-12)


def test_thirty_two_bit_grey_is_scaled_by_its_maximum_when_above_255_and_clipped_at_0():
    img = Image.fromarray(np.array([[-50, 0, 500, 1000]], np.int32))
    assert img.mode == "I"
    assert_close(digits.grey_levels(img), np.array([[0.0, 0.0, 127.5, 255.0]]), rtol=0,
                 atol=1e-12)
    low = Image.fromarray(np.array([[0, 100, 200]], np.int32))  # within 0..255: as it is
    assert_close(digits.grey_levels(low), np.array([[0.0, 100.0, 200.0]]), rtol=0, atol=1e-12)


def test_float_grey_is_kept_or_scaled_like_thirty_two_bit():
    img = Image.fromarray(np.array([[-1.0, 0.5, 100.0]], np.float32))
    assert img.mode == "F"
    assert_close(digits.grey_levels(img), np.array([[0.0, 0.5, 100.0]]), rtol=0, atol=1e-6)
    img = Image.fromarray(np.array([[0.0, 255.0, 510.0]], np.float32))
    assert_close(digits.grey_levels(img), np.array([[0.0, 127.5, 255.0]]), rtol=0, atol=1e-6)


# --- polarity and background ------------------------------------------------------------------
def _frame(n: int = 21, rows: bool = True) -> np.ndarray:
    """Black, with a white first and last row (or column) and a white blob in the middle:
    the median of the border pixels is white (2n + 4 of 4n), but would be black if one of
    the two white edges were replaced by the line next to it."""
    img = np.zeros((n, n))
    img[[0, -1], :] = 255
    img[n // 2 - 1:n // 2 + 2, n // 2 - 1:n // 2 + 2] = 255
    return img if rows else img.T


@pytest.mark.parametrize("rows", [True, False])
def test_polarity_is_the_median_of_the_four_border_lines(rows):
    """Light border: dark is the ink, so the white blob is paper (0) and the black inside is
    ink (bright); read as a dark background, the blob would be the ink."""
    img = _frame(rows=rows)
    got = digits.light_on_dark(img) if rows else digits.light_on_dark(img).T
    assert got[9:12, 9:12].max() < 1      # the white blob: paper
    assert got[1:-1, :8].min() > 200 and got[1:-1, 13:].min() > 200  # the black: ink


@pytest.mark.parametrize("paper, ink, want", [(128.0, 0.0, 128.0), (127.5, 255.0, 127.5)])
def test_a_border_median_of_127_5_is_a_dark_background(paper, ink, want):
    img = np.full((30, 30), paper)
    img[10:20, 12:16] = ink
    got = digits.light_on_dark(img)
    assert_close(got[10:20, 12:16], np.full((10, 4), want), rtol=0, atol=1e-6)
    assert np.abs(got[:10]).max() < 1e-6


def test_light_on_dark_is_never_negative():
    dark = np.full((30, 30), 50.0)
    dark[10:20, 12:16] = 255
    dark[2, 2] = 0  # darker than the background
    got = digits.light_on_dark(dark)
    assert got.min() == 0 and got[2, 2] == 0
    light = np.full((30, 30), 200.0)
    light[10:20, 12:16] = 0
    light[2, 2] = 255  # lighter than the paper (a glare)
    got = digits.light_on_dark(light)
    assert got.min() == 0 and got[2, 2] == 0


def test_ink_in_the_shade_weighs_as_ink_in_the_light():
    """Paper lit from 150 (left) to 250 (right), ink passing a fifth of the light: each ink
    pixel is (paper - grey) * mean(paper) / paper = 0.8 * 200 = 160, the paper 0."""
    h, w = 40, 41
    paper = np.tile(np.linspace(150, 250, w), (h, 1))
    img = paper.copy()
    ink = np.zeros((h, w), bool)
    ink[5:35, 3:7] = ink[5:35, 34:38] = True  # one stroke in the shade, one in the light
    img[ink] = 0.2 * paper[ink]
    got = digits.light_on_dark(img)
    assert_close(got, np.where(ink, 160.0, 0.0), rtol=0, atol=1e-6)


def _quadratic(h: int, w: int) -> np.ndarray:
    """A lighting surface using all six quadratic terms, on coordinates of any scale."""
    y, x = np.mgrid[:h, :w]
    x, y = x / (w - 1), y / (h - 1)
    return 100 + 20 * x - 15 * y + 25 * x * x - 30 * x * y + 10 * y * y


@pytest.mark.parametrize("h, w", [(40, 52), (130, 200), (201, 70)])
def test_the_background_is_the_quadratic_under_the_ink(h, w):
    """A quadratic lighting surface with strokes standing out by 60: the background is the
    surface itself, ink left out (also on pictures fitted on every 3rd pixel)."""
    surface = _quadratic(h, w)
    img = surface.copy()
    img[h // 4:3 * h // 4, w // 3:w // 3 + max(3, w // 12)] += 60
    img[h // 2:h // 2 + max(3, h // 12), w // 4:3 * w // 4] += 60
    assert_close(digits.background_levels(img), surface, rtol=0, atol=1e-6)


@pytest.mark.parametrize("h, w", [(50, 37), (150, 200)])
def test_without_ink_the_background_is_the_least_squares_quadratic_on_the_grid(h, w):
    """Faint noise (under the 12 levels that make ink): the background is the least-squares
    quadratic through every step-th pixel, step = max(1, longest side // 64)."""
    rng = np.random.default_rng(1)
    img = _quadratic(h, w) + rng.uniform(-5, 5, (h, w))
    step = max(1, max(h, w) // 64)
    y, x = np.mgrid[:h, :w]
    x, y = x / (w - 1), y / (h - 1)
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)
    coef = np.linalg.lstsq(basis[::step, ::step].reshape(-1, 6), img[::step, ::step].ravel(),
                           rcond=None)[0]
    assert_close(digits.background_levels(img), basis @ coef, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bump, left_out", [(30, True), (10, False)])
def test_pixels_12_levels_above_the_fit_are_left_out_of_it(bump, left_out):
    """A flat 100 with a patch 30 above it: the patch is ink, the background stays 100. A
    patch only 10 above is background: the fit takes it in (a little above 100 there)."""
    img = np.full((40, 40), 100.0)
    img[10:30, 10:30] += bump
    bg = digits.background_levels(img)
    if left_out:
        assert_close(bg, np.full((40, 40), 100.0), rtol=0, atol=1e-6)
    else:
        assert bg.max() > 101 and bg.min() < 100


# --- the digit in its field -------------------------------------------------------------------
def _exact_picture() -> tuple[np.ndarray, np.ndarray]:
    """A picture on a background of exact zeros whose ink box is 20 tall (so fit_box keeps
    it as it is), and the 20x8 patch of grey levels to_mnist must make of it."""
    patch = np.zeros((20, 8))
    patch[:, :2] = 200      # an L: a stroke down the left ...
    patch[18:, :] = 200     # ... and along the bottom
    patch[5, 1] = 99        # a fainter pixel: 99 * 255 / 200 = 126.2
    patch[0, 7] = 20        # exactly a tenth of the strongest: kept, 25.5
    patch[10, 5] = 15       # under a tenth: dropped
    img = np.zeros((45, 33))
    img[9:29, 17:25] = patch
    want = np.where(patch >= 20, patch * 255 / 200, 0.0)
    want[10, 5] = 0
    return img, want


def test_the_digit_is_scaled_to_255_cropped_and_centred_by_its_centre_of_mass():
    img, patch = _exact_picture()
    # centre of mass of the scaled patch, rounded: where its top left corner goes
    rows, cols = np.mgrid[:20, :8]
    cy, cx = (patch * rows).sum() / patch.sum(), (patch * cols).sum() / patch.sum()
    top, left = round(14 - cy), round(14 - cx)
    assert (top, left) == (2, 13)
    want = np.zeros((28, 28))
    want[top:top + 20, left:left + 8] = patch
    got = digits.to_mnist(img)
    assert got.dtype == np.uint8
    assert got.tolist() == np.rint(want).astype(np.uint8).tolist()
    assert got[top + 5, left + 1] == 126 and got[top, left + 7] == 26 and got[top + 10, left + 5] == 0


def test_a_digit_wider_than_tall_is_placed_the_same_way_turned():
    """The exact picture turned a quarter (transposed): its ink box is 8x20, its long side
    the width; the result is the first one transposed."""
    img, patch = _exact_picture()
    rows, cols = np.mgrid[:20, :8]
    cy, cx = (patch * rows).sum() / patch.sum(), (patch * cols).sum() / patch.sum()
    top, left = round(14 - cy), round(14 - cx)
    want = np.zeros((28, 28))
    want[top:top + 20, left:left + 8] = patch
    assert digits.to_mnist(img.T).tolist() == np.rint(want.T).astype(np.uint8).tolist()


def test_the_same_digit_on_white_paper_is_the_same():
    img, _ = _exact_picture()
    img[img == 20] = 21  # off the exact tenth: no rounding at the boundary
    light = 255 - img
    assert digits.to_mnist(light).tolist() == digits.to_mnist(img).tolist()
    # as 8-bit grey levels (as a decoded file gives them), white paper reads the same
    assert digits.to_mnist(light.astype(np.uint8)).tolist() == digits.to_mnist(img).tolist()


def test_a_resampled_digit_keeps_its_strokes_bright_and_the_rest_dark():
    """An L 60x30 scaled by 1/3: resampling rings (above 255 along the strokes, below 0
    beside them); the result is clipped, not wrapped round."""
    img = np.zeros((80, 50))
    img[10:70, 10:16] = 255
    img[64:70, 10:40] = 255
    got = digits.to_mnist(img)
    assert ink_box(got) in {(20, 10), (21, 10), (20, 11), (21, 11)}
    rows = np.flatnonzero(got.any(axis=1))
    cols = np.flatnonzero(got.any(axis=0))
    top, left = rows[0], cols[0]
    assert (got[top:top + 15, left] >= 250).all()           # the stroke
    assert (got[top:top + 15, left + 3:left + 10] <= 20).all()  # beside it
    assert got.max() == 255


@pytest.mark.parametrize("shape", [(60, 1), (1, 60)])
def test_a_one_pixel_line_stays_one_pixel_wide(shape):
    img = np.zeros((80, 80))
    img[10:10 + shape[0], 10:10 + shape[1]] = 255
    got = digits.to_mnist(img)
    h, w = ink_box(got)
    assert (min(h, w), 20 <= max(h, w) <= 22) == (1, True), (h, w)


@pytest.mark.parametrize("grey, message", [
    (np.zeros((2, 3, 4)), "me.png: expected a 2-D grey image, got shape (2, 3, 4)"),
    (np.zeros(7), "me.png: expected a 2-D grey image, got shape (7,)"),
    (np.zeros((0, 5)), "me.png: expected a 2-D grey image, got shape (0, 5)"),
    (np.array([[0.0, np.nan]]), "me.png: holds NaN or infinite grey levels"),
    (np.full((1, 1), 200.0), "me.png: is blank (no ink stands out from the background by 24 "
                             "grey levels or more)"),
])
def test_pictures_that_are_no_digit_are_named(grey, message):
    with pytest.raises(digits.DigitError) as err:
        digits.to_mnist(grey, "me.png")
    assert str(err.value) == message
    with pytest.raises(digits.DigitError) as err:
        digits.to_mnist(grey)
    assert str(err.value) == message.replace("me.png", "image")


def test_ink_24_levels_above_the_background_is_enough():
    img = np.zeros((30, 30))
    img[5:25, 10:14] = 24
    got = digits.to_mnist(img)
    assert got.max() == 255 and ink_box(got) == (20, 4)
    img[5:25, 10:14] = 23.9
    with pytest.raises(digits.DigitError, match="is blank"):
        digits.to_mnist(img)


def test_to_mnist_takes_nested_lists_and_integer_arrays():
    img, _ = _exact_picture()
    want = digits.to_mnist(img)
    assert digits.to_mnist(img.astype(np.uint8)).tolist() == want.tolist()
    assert digits.to_mnist(img.tolist()).tolist() == want.tolist()


@pytest.mark.parametrize("mass_row, want_top", [(0, 8), (19, 0)])
def test_the_centre_is_kept_wholly_inside_the_field(mass_row, want_top):
    """A 20x3 patch whose mass is all in its first (last) row: centring it by its centre of
    mass would put it 14 rows down (5 rows up); it stops at the field's edge."""
    patch = np.zeros((20, 3))
    patch[mass_row, :] = 255
    patch[:, 0] = np.where(np.arange(20) == mass_row, 255, 1e-9)  # the patch is 20 tall
    got = digits.centre_in_field(patch)
    assert got.dtype == np.uint8 and got.shape == (28, 28)
    assert np.argwhere(got).tolist() == [[want_top + mass_row, c] for c in (13, 14, 15)]


@pytest.mark.parametrize("mass_col, want_left", [(0, 8), (19, 0)])
def test_the_centre_is_kept_wholly_inside_the_field_across(mass_col, want_left):
    patch = np.zeros((3, 20))
    patch[:, mass_col] = 255
    patch[0, :] = np.where(np.arange(20) == mass_col, 255, 1e-9)  # the patch is 20 wide
    got = digits.centre_in_field(patch)
    assert np.argwhere(got).tolist() == [[r, want_left + mass_col] for r in (13, 14, 15)]


def test_centre_in_field_places_a_lopsided_patch_by_rows_and_columns():
    patch = np.zeros((4, 6))
    patch[3, 0] = 100.0  # all the mass in the bottom left corner
    patch[0, 5] = 1e-9   # (the patch's far corner, too faint to count)
    got = digits.centre_in_field(patch)
    assert np.argwhere(got).tolist() == [[14, 14]] and got[14, 14] == 100
    square = np.zeros((5, 5))
    square[1, 3] = 50.0
    assert np.argwhere(digits.centre_in_field(square)).tolist() == [[14, 14]]
    # a field of another size and centre
    assert np.argwhere(digits.centre_in_field(square, side=9, centre=4.0)).tolist() == [[4, 4]]


# --- the model side ---------------------------------------------------------------------------
def _model(path, inputs: int = 784) -> str:
    with gn.use_backend("numpy"):
        gn.seed(0)
        nn.Classifier(nn.MLP([10], inputs, "tanh"), (inputs,)).save(path)
    return str(path)


def test_load_model_takes_a_file_or_its_folder_and_a_backend_by_name(tmp_path):
    path = _model(tmp_path / "model.npz")
    for where in (path, tmp_path, str(tmp_path)):
        model = digits.load_model(where, "numpy")
        assert (28, 28) in model.image_shapes()
    assert gn.backend().name == "numpy"
    with pytest.raises(digits.SetupError, match="unknown graphnet backend 'tpu'"):
        digits.load_model(path, "tpu")


def test_a_folder_without_model_npz_is_named(tmp_path):
    with pytest.raises(digits.SetupError) as err:
        digits.load_model(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'model.npz'} does not exist "
                              "(train a model with examples/mnist/train.py)")


def test_a_model_for_other_images_is_refused_naming_its_shapes(tmp_path):
    path = _model(tmp_path / "m.npz", inputs=256)
    with pytest.raises(digits.SetupError) as err:
        digits.load_model(path)
    assert str(err.value) == f"{path}: the model takes images of shape (256,) or (16, 16), " \
                             "not 28x28 digits"


def test_top_classes_ranks_ties_by_the_lower_class_and_names_overflow():
    assert digits.top_classes([0.1, 0.5, 0.2, 0.2]) == [(1, 0.5), (2, 0.2), (3, 0.2)]
    rng = np.random.default_rng(0)
    scores = rng.integers(1, 3, 1000).astype(np.float64)  # 1000 classes, many tied
    first = [int(c) for c in np.flatnonzero(scores == 2)[:3]]
    assert [c for c, _ in digits.top_classes(scores / scores.sum())] == first
    counts = np.array([0, 200, 100], np.uint8)  # votes, not probabilities: still ranked as numbers
    assert digits.top_classes(counts, 2) == [(1, 200.0), (2, 100.0)]
    with pytest.raises(digits.DigitError) as err:
        digits.top_classes([np.nan, 1.0])
    assert str(err.value) == ("the model's probabilities hold NaN or inf ([nan, 1.0]); "
                              "its weights overflow on this picture")


def test_save_png_writes_each_pixel_as_a_square_of_any_numeric_input(tmp_path):
    image = np.arange(28 * 28, dtype=np.float64).reshape(28, 28) % 256
    digits.save_png(image, tmp_path / "a.png", scale=3)
    got = Image.open(tmp_path / "a.png")
    assert got.mode == "L" and got.size == (84, 84)
    arr = np.asarray(got)
    assert arr[::3, ::3].tolist() == image.astype(np.uint8).tolist()
    assert (arr[1::3, 2::3] == arr[::3, ::3]).all()
