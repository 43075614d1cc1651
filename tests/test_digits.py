"""Pictures of digits -> MNIST-like 28x28 images (examples/mnist/digits.py) and predict.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graphnet as gn
from graphnet import nn
from graphnet.datasets import mnist

from examples.mnist import digits, predict
from mnist_model import EXAMPLES, small_mnist_model


ROOT = EXAMPLES.parent.parent


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    img = img.astype(np.float64)
    rows, cols = np.mgrid[:img.shape[0], :img.shape[1]]
    return float((img * rows).sum() / img.sum()), float((img * cols).sum() / img.sum())


def ink_box(img: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def l_shape(dark_on_light: bool) -> np.ndarray:
    """A 120x90 picture with an L of ink 60 tall and 30 wide, off-centre."""
    img = np.zeros((120, 90))
    img[10:70, 50:58] = 255
    img[62:70, 50:80] = 255
    return 255 - img if dark_on_light else img


def test_geometry_matches_mnist_box_and_centre():
    out = digits.to_mnist(l_shape(False))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    h, w = ink_box(out)
    assert 20 <= h <= 22 and 9 <= w <= 13  # 60x30 scaled by 1/3 (+ resampling fringe)
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert out.max() >= 250 and out[0].max() == 0 and out[:, 0].max() == 0


def test_dark_on_light_is_inverted_to_the_same_digit():
    np.testing.assert_array_equal(digits.to_mnist(l_shape(True)), digits.to_mnist(l_shape(False)))


def test_grey_background_and_faint_ink_are_stretched():
    img = 180 - 0.5 * l_shape(False)  # ink at 52.5 on paper at 180
    np.testing.assert_allclose(digits.to_mnist(img).astype(float),
                               digits.to_mnist(l_shape(False)).astype(float), atol=2)


def render(image28: np.ndarray, style: str, path: Path) -> Path:
    """A real MNIST digit drawn as a user's picture would be: larger, maybe inverted or coloured."""
    big = Image.fromarray(image28).resize((150, 150), Image.Resampling.BICUBIC)
    if style == "white-on-black":
        img = big
    elif style == "black-on-white":
        img = Image.fromarray(255 - np.asarray(big))
    elif style == "blue-on-yellow":  # colour, a wide canvas, the digit off-centre
        ink = np.asarray(big, dtype=np.float64)[..., None] / 255
        paper, pen = np.array([250, 240, 120]), np.array([20, 40, 200])
        rgb = np.full((200, 320, 3), paper, dtype=np.float64)
        rgb[30:180, 150:300] = paper * (1 - ink) + pen * ink
        img = Image.fromarray(rgb.astype(np.uint8))
    else:  # "transparent": black ink whose opacity is the digit
        rgba = np.zeros((150, 150, 4), np.uint8)
        rgba[..., 3] = np.asarray(big)
        img = Image.fromarray(rgba)
    img.save(path)
    return path


STYLES = ["white-on-black", "black-on-white", "blue-on-yellow", "transparent"]


@pytest.mark.parametrize("style", STYLES)
def test_real_digits_come_back_close_to_the_originals(tmp_path, style):
    _, _, x, _ = mnist.load()
    corr = []
    for i in range(40):
        seen = digits.to_mnist(digits.load_image(render(x[i], style, tmp_path / f"{i}.png")))
        corr.append(np.corrcoef(seen.ravel(), x[i].ravel())[0, 1])
    assert np.median(corr) > 0.9, corr


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"not an image at all", "not an image Pillow can read"),
])
def test_unreadable_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(digits.DigitError, match=f"{path}.*{message}"):
        digits.load_image(path)


def test_truncated_and_missing_files_are_named(tmp_path):
    good = render(np.eye(28, dtype=np.uint8) * 255, "white-on-black", tmp_path / "g.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(digits.DigitError, match="cut.png: .*(damaged|cannot)"):
        digits.load_image(cut)
    with pytest.raises(digits.DigitError, match="nope.png: cannot be read"):
        digits.load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("grey", [np.zeros((50, 40)), np.full((9, 9), 255.0),
                                  np.full((30, 30), 128.0) + np.eye(30) * 10])
def test_blank_pictures_are_refused(grey):
    with pytest.raises(digits.DigitError, match="me.png: is blank"):
        digits.to_mnist(grey, "me.png")


def untrained_model(path: Path) -> Path:
    with gn.use_backend("numpy"):
        gn.seed(0)
        model = nn.Classifier(nn.MLP([16, 10], 784, "tanh"), (784,))
        model.save(path)
    return path


def test_predict_cli_answers_good_files_and_names_bad_ones(tmp_path, capsys):
    model = untrained_model(tmp_path / "m.npz")
    _, _, x, _ = mnist.load()
    good = [render(x[i], s, tmp_path / f"{s}.png") for i, s in enumerate(STYLES[:2])]
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 255).save(blank)
    junk = tmp_path / "junk.jpg"
    junk.write_text("hello")
    code = predict.main(["--model", str(model), str(good[0]), str(blank), str(junk),
                         str(good[1]), "--show", str(tmp_path / "seen")])
    out, err = capsys.readouterr()
    assert code == 1
    lines = [ln for ln in out.splitlines() if not ln.startswith(" ")]
    assert [ln.split(":")[0] for ln in lines] == [str(g) for g in good]
    for ln in lines:
        ranked = ln.split(": ", 1)[1].split(", ")
        assert len(ranked) == 3
        probs = [float(r.split("(")[1].rstrip("%)")) for r in ranked]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.1
    assert f"{blank}: is blank" in err and f"{junk}: is not an image" in err
    shown = sorted(p.name for p in (tmp_path / "seen").iterdir())
    assert shown == ["black-on-white-28x28.png", "white-on-black-28x28.png"]
    seen = np.asarray(Image.open(tmp_path / "seen" / "white-on-black-28x28.png"))
    assert seen.shape == (280, 280)
    np.testing.assert_array_equal(seen[::10, ::10], digits.to_mnist(digits.load_image(good[0])))
    assert predict.main(["--model", str(model), str(good[0])]) == 0


@pytest.mark.parametrize("args, message", [
    (["--model", "MISSING"], "does not exist"),
    (["--model", "MODEL", "--show", "one.png"], "a .png names one image"),
    (["--model", "MODEL", "--backend", "cupy"], "cupy"),
])
def test_predict_cli_setup_errors_exit_2(tmp_path, capsys, args, message):
    if "cupy" in args and "cupy" in gn.available_backends():
        pytest.skip("cupy is available here")
    model = untrained_model(tmp_path / "m.npz")
    args = [str(tmp_path / "missing.npz") if a == "MISSING" else str(model) if a == "MODEL"
            else a for a in args]
    assert predict.main(args + ["a.png", "b.png"]) == 2
    assert message in capsys.readouterr().err


def test_predict_script_runs_as_a_command(tmp_path):
    model = untrained_model(tmp_path / "m.npz")
    img = render(np.eye(28, dtype=np.uint8) * 255, "black-on-white", tmp_path / "d.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRAPHNET_BACKEND": "numpy"}
    res = subprocess.run([sys.executable, str(EXAMPLES / "predict.py"), "--model", str(model),
                          str(img)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{img}: ") and res.stdout.count("%") == 3


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_a_trained_model_reads_rendered_test_digits(tmp_path, capsys, style):
    _, _, x, y = mnist.load()
    idx = range(100, 150)
    files = [str(render(x[i], style, tmp_path / f"{i}.png")) for i in idx]
    assert predict.main(["--model", str(small_mnist_model()), "--backend", "numpy"] + files) == 0
    lines = capsys.readouterr().out.splitlines()
    got = [int(ln.split(": ", 1)[1].split(" ")[0]) for ln in lines]
    accuracy = np.mean(np.array(got) == y[list(idx)])
    assert accuracy >= 0.85, (style, accuracy)


def test_sixteen_bit_pictures_are_rescaled_not_clipped(tmp_path):
    _, _, x, _ = mnist.load()
    eight = render(x[7], "black-on-white", tmp_path / "8bit.png")
    grey = np.asarray(Image.open(eight), dtype=np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "16bit.png")
    assert Image.open(tmp_path / "16bit.png").mode.startswith("I")
    np.testing.assert_allclose(digits.load_image(tmp_path / "16bit.png"),
                               digits.load_image(eight), atol=1e-9)
