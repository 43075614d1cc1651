"""Pictures the rest of the suite rarely meets (issue 25, item 3): digits on uneven
backgrounds (a lighting gradient, a vignette, either polarity, a small digit off-centre) and
several inputs of the predict CLI with the same file name.

The digit conversion must give the digit it gives on an even background, where MNIST puts
it; the CLI must keep each input's answer and --show image with its own path.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import Image

import graphnet as gn
from graphnet import nn, optim
from graphnet.datasets import mnist
from graphnet.training import fit

from examples.mnist import digits, predict
from helpers import needs_cached_mnist
from test_digits import centre_of_mass, ink_box, l_shape, untrained_model


# --- uneven backgrounds -----------------------------------------------------------------------
def _ramp(h: int, w: int, lo: float, hi: float, axis: str) -> np.ndarray:
    """A background going from ``lo`` to ``hi`` along ``axis`` (x, y or both: diagonal)."""
    ys, xs = np.mgrid[:h, :w]
    t = {"x": xs / (w - 1), "y": ys / (h - 1), "xy": (xs / (w - 1) + ys / (h - 1)) / 2}[axis]
    return lo + (hi - lo) * t


def _vignette(h: int, w: int, centre: float, corner: float) -> np.ndarray:
    """Light in the middle, falling off towards the corners (a lens or a desk lamp)."""
    ys, xs = np.mgrid[:h, :w]
    r2 = ((ys - (h - 1) / 2) / (h / 2)) ** 2 + ((xs - (w - 1) / 2) / (w / 2)) ** 2
    return centre + (corner - centre) * r2 / 2


BACKGROUNDS = {  # (background, ink level): dark ink on light paper unless the paper is dark
    "light grey to white, across": (lambda h, w: _ramp(h, w, 190, 255, "x"), 30),
    "white to light grey, down": (lambda h, w: _ramp(h, w, 255, 185, "y"), 30),
    "diagonal": (lambda h, w: _ramp(h, w, 170, 250, "xy"), 20),
    "vignette": (lambda h, w: _vignette(h, w, 245, 150), 25),
    "light ink on a dark gradient": (lambda h, w: _ramp(h, w, 0, 70, "x"), 240),
    "light ink in a dark vignette": (lambda h, w: _vignette(h, w, 80, 5), 250),
}


def _on(background: np.ndarray, ink: np.ndarray, level: float) -> np.ndarray:
    """``ink`` (0..1 coverage) drawn at grey ``level`` over ``background``."""
    return background * (1 - ink) + level * ink


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The best correlation of ``a`` and ``b`` moved by at most a pixel each way: where the
    centre of mass lands is rounded to a pixel, so a faint shift may move a digit by one."""
    return max(np.corrcoef(np.roll(a, (dy, dx), axis=(0, 1)).ravel(), b.ravel())[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def _assert_like_mnist(out: np.ndarray, even: np.ndarray, what: str) -> None:
    """``out`` is the digit ``even`` (its conversion on an even background), where MNIST puts it."""
    assert out.shape == (28, 28) and out.dtype == np.uint8
    box, want = ink_box(out), ink_box(even)
    assert max(abs(a - b) for a, b in zip(box, want)) <= 1, f"{what}: ink box {box}, not {want}"
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5, f"{what}: centre of mass {(cy, cx)}"
    sim = _similarity(out, even)
    assert sim > 0.95, f"{what}: correlation {sim:.3f} with the even-background digit"


@pytest.mark.parametrize("name", list(BACKGROUNDS))
def test_an_uneven_background_gives_the_digit_of_an_even_one(name):
    ink = l_shape(False) / 255
    make, level = BACKGROUNDS[name]
    even = digits.to_mnist(l_shape(False))
    _assert_like_mnist(digits.to_mnist(_on(make(*ink.shape), ink, level)), even, name)


def test_dark_on_light_and_light_on_dark_under_the_same_gradient_agree():
    ink = l_shape(False) / 255
    light = _ramp(*ink.shape, 175, 255, "xy")
    dark_ink = digits.to_mnist(_on(light, ink, 20))
    light_ink = digits.to_mnist(255 - _on(light, ink, 20))
    _assert_like_mnist(light_ink, dark_ink, "the same picture inverted")


@pytest.mark.parametrize("name", ["light grey to white, across", "vignette"])
def test_a_small_digit_off_centre_on_an_uneven_background_is_scaled_and_centred(name):
    ink = np.zeros((240, 320))
    ink[20:44, 250:254] = 1   # an L 24 pixels tall near the top right corner
    ink[40:44, 250:262] = 1
    make, level = BACKGROUNDS[name]
    out = digits.to_mnist(_on(make(*ink.shape), ink, level))
    even = digits.to_mnist(ink * 255)
    _assert_like_mnist(out, even, name)
    assert ink_box(out)[0] in (20, 21)  # scaled up to MNIST's 20-pixel box


@functools.lru_cache(maxsize=None)
def _small_model() -> nn.Classifier:
    """A [32, 10] tanh MLP trained for two epochs on 6000 MNIST images (about a second)."""
    with gn.use_backend("numpy"):
        gn.seed(0)
        x, y, _, _ = mnist.load()
        model = nn.Classifier(nn.MLP([32, 10], 784, "tanh"), (784,))
        model.fit_preprocessing(x[:6000])
        fit(model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9), x[:6000], y[:6000],
            epochs=2, batch_size=64, progress=False)
    return model


@needs_cached_mnist
@pytest.mark.parametrize("name", ["light grey to white, across", "diagonal", "vignette",
                                  "light ink on a dark gradient"])
def test_real_digits_on_uneven_backgrounds_are_read_as_on_even_ones(name):
    """MNIST test digits drawn larger on an uneven background: close to the same drawings on
    an even one, and a small trained model reads them alike."""
    _, _, x, y = mnist.load()
    make, level = BACKGROUNDS[name]
    idx = list(range(200, 230))
    seen, even, corr = [], [], []
    for i in idx:
        ink = np.asarray(Image.fromarray(x[i]).resize((150, 150), Image.Resampling.BICUBIC),
                         dtype=np.float64) / 255
        ink = np.pad(ink, ((10, 20), (30, 20)))
        seen.append(digits.to_mnist(_on(make(*ink.shape), ink, level)))
        even.append(digits.to_mnist(ink * 255))
        corr.append(_similarity(seen[-1], even[-1]))
    # (light ink on a dark gradient is fainter where the background is lighter: 0.93 at worst)
    assert min(corr) > 0.9 and np.median(corr) > 0.99, (name, corr)
    with gn.use_backend("numpy"):
        model = _small_model()
        assert np.mean(gn.to_numpy(model.predict(x[idx])) == y[idx]) >= 0.85  # it reads MNIST
        on_even = gn.to_numpy(model.predict(np.stack(even)))
        on_pictures = gn.to_numpy(model.predict(np.stack(seen)))
    assert np.mean(on_pictures == on_even) >= 0.9, (name, on_pictures, on_even)


# --- several inputs with the same file name ---------------------------------------------------
def _digit_picture(path, rows: slice, cols: slice) -> str:
    """A black-on-white picture with one bar of ink (its place and shape tell pictures apart)."""
    img = np.full((60, 60), 255, np.uint8)
    img[rows, cols] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return str(path)


def _answers(out: str) -> list[tuple[str, str]]:
    return [tuple(ln.split(": ", 1)) for ln in out.splitlines() if not ln.startswith(" ")]


def test_same_file_names_in_two_folders_keep_their_own_answers_and_shows(tmp_path, capsys):
    model = str(untrained_model(tmp_path / "m.npz"))
    a = _digit_picture(tmp_path / "a" / "7.png", slice(5, 55), slice(28, 34))  # a tall bar
    b = _digit_picture(tmp_path / "b" / "7.png", slice(27, 33), slice(5, 55))  # a wide one
    alone = {}
    for f in (a, b):
        assert predict.main(["--model", model, f]) == 0
        alone[f] = _answers(capsys.readouterr().out)[0][1]
    assert alone[a] != alone[b]  # the model tells the two pictures apart
    show = tmp_path / "seen"
    assert predict.main(["--model", model, a, b, "--show", str(show)]) == 0
    out = capsys.readouterr().out
    assert _answers(out) == [(a, alone[a]), (b, alone[b])]
    written = sorted(show.iterdir())
    assert len(written) == 2, written
    for f in (a, b):  # each --show file holds its own picture, named on the answer's line
        shown = [ln.split("the model saw ", 1)[1] for ln in out.splitlines() if "saw" in ln]
        mine = shown[[a, b].index(f)]
        np.testing.assert_array_equal(np.asarray(Image.open(mine))[::10, ::10],
                                      digits.to_mnist(digits.load_image(f)))


def test_the_same_path_twice_answers_twice_and_shows_one_file(tmp_path, capsys):
    model = str(untrained_model(tmp_path / "m.npz"))
    a = _digit_picture(tmp_path / "7.png", slice(5, 55), slice(28, 34))
    show = tmp_path / "seen"
    assert predict.main(["--model", model, a, a, "--show", str(show)]) == 0
    answers = _answers(capsys.readouterr().out)
    assert len(answers) == 2 and answers[0] == answers[1] and answers[0][0] == a
    assert [p.name for p in show.iterdir()] == ["7-28x28.png"]


def test_show_names_made_unique_never_collide_with_a_later_file(tmp_path):
    """``a/7.png, q/7-3.png, b/7.png``: b's show name must not take q's ``7-3-28x28.png``."""
    files = [str(tmp_path / d / n) for d, n in (("a", "7.png"), ("q", "7-3.png"), ("b", "7.png"),
                                                 ("c", "7.png"))]
    paths = predict.show_paths(str(tmp_path / "seen"), files)
    assert sorted(paths) == sorted(files)
    names = [paths[f].name for f in files]
    assert len(set(names)) == len(files), names
    assert names[:2] == ["7-28x28.png", "7-3-28x28.png"]
