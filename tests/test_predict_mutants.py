"""predict.py as its user meets it (issue 25, the survivors of a mutmut run): the --help text,
required and restricted options, exact percentages, exit codes when several failures combine,
--show names, nested folders and write errors.

Each test reads only what a user sees: the exit status, stdout, stderr and the files written.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

import graphnet as gn
from graphnet import nn

from examples.mnist import digits, predict
from helpers import help_lines
from test_predict_doors import digit_png, model_file, run_predict


def _help(monkeypatch, capsys) -> list[str]:
    return help_lines(predict.main, "predict.py", monkeypatch, capsys)


def test_help_names_every_argument_and_keeps_the_description_as_written(monkeypatch, capsys):
    lines = _help(monkeypatch, capsys)
    assert lines[0] == ("usage: predict.py [-h] --model MODEL [--show DIR_OR_PNG] "
                        "[--backend {numpy,cupy}] IMAGE [IMAGE ...]")
    # the module docstring, its examples still one per line and indented (not refilled)
    for line in ["Read pictures of digits and print what a trained model thinks they are.",
                 "    python examples/mnist/predict.py --model runs/fast/model.npz my_digit.png",
                 "    python examples/mnist/predict.py --model runs/fast/model.npz *.jpg --show seen/",
                 "Exit status: 0 when every file got an answer, 1 when some could not be read (the",
                 "others still get theirs), 2 for a bad model, backend or option."]:
        assert line in lines, line
    options = [" ".join(ln.split()) for ln in lines[lines.index("positional arguments:"):]]
    for line in ["IMAGE picture files (PNG, JPEG, ...)",
                 "--model MODEL a model.npz written by train.py (or its folder)",
                 "--show DIR_OR_PNG write the 28x28 image the model saw: into this folder, "
                 "or this .png",
                 "--backend {numpy,cupy}",
                 "where the model runs (default: GRAPHNET_BACKEND or numpy)"]:
        assert line in options, (line, options)


def test_model_is_a_required_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        predict.main([str(digit_png(tmp_path / "d.png"))])
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1].endswith("error: the following arguments are required: --model")


def test_backend_is_numpy_or_cupy(tmp_path, capsys):
    model, png = str(model_file(tmp_path / "m.npz")), str(digit_png(tmp_path / "d.png"))
    with pytest.raises(SystemExit) as stop:
        predict.main(["--model", model, "--backend", "tpu", png])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --backend: invalid choice: 'tpu'" in err
    assert "numpy" in err.splitlines()[-1] and "cupy" in err.splitlines()[-1]
    assert run_predict(["--model", model, "--backend", "numpy", png]) == 0
    assert capsys.readouterr().out.startswith(f"{png}: ")


def test_the_three_percentages_are_the_models_probabilities(tmp_path, capsys):
    model_path = model_file(tmp_path / "m.npz")
    png = str(digit_png(tmp_path / "d.png"))
    assert run_predict(["--model", str(model_path), png]) == 0
    with gn.use_backend("numpy"):
        probs = gn.to_numpy(nn.load(model_path).predict_proba(
            digits.to_mnist(digits.load_image(png))[None]))[0]
    top = np.argsort(-probs, kind="stable")[:3]
    want = ", ".join(f"{c} ({100 * probs[c]:.1f}%)" for c in top)
    assert capsys.readouterr().out == f"{png}: {want}\n"


def _junk(path) -> str:
    path.write_text("hello")
    return str(path)


@pytest.mark.parametrize("n_good", [1, 2])
def test_an_unreadable_file_and_an_overflowing_model_still_exit_1(tmp_path, capsys, n_good):
    """Two different failures (a file that is no picture, then probabilities that overflow on
    each good picture) add up to exit status 1, and every picture that failed is named."""
    model = str(model_file(tmp_path / "m.npz", overflow=True))
    junk = _junk(tmp_path / "junk.png")
    good = [str(digit_png(tmp_path / f"{k}.png")) for k in ("one", "two")[:n_good]]
    assert run_predict(["--model", model, junk, *good]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"error: {junk}: is not an image Pillow can read"
    assert [ln.split(": the model's")[0] for ln in lines[1:]] == [f"error: {g}" for g in good]


@pytest.mark.parametrize("with_junk", [False, True])
def test_a_show_image_that_cannot_be_written_is_named_and_exits_1(tmp_path, capsys, with_junk):
    """--show into a folder that cannot be made (its parent is a file): the answer is printed,
    the write error is one line on stderr, and the exit status is 1, alone or together with an
    unreadable picture."""
    model = str(model_file(tmp_path / "m.npz"))
    png = str(digit_png(tmp_path / "d.png"))
    (tmp_path / "notes.txt").write_text("mine")
    show = tmp_path / "notes.txt" / "seen"
    junk = [_junk(tmp_path / "junk.png")] if with_junk else []
    assert run_predict(["--model", model, *junk, png, "--show", str(show)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and out.startswith(f"{png}: ")  # no "the model saw"
    want = [f"error: cannot write {show / 'd-28x28.png'}: Not a directory"]
    if with_junk:
        want.insert(0, f"error: {junk[0]}: is not an image Pillow can read")
    assert err.splitlines() == want
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("show", ["deep/er/seen.png", "deep/er/seen"])
def test_show_creates_nested_folders(tmp_path, capsys, show):
    """--show naming a .png writes that very file for the one picture; naming a folder, one
    file in it; missing folders on the way are made."""
    model = str(model_file(tmp_path / "m.npz"))
    png = str(digit_png(tmp_path / "d.png"))
    target = tmp_path / show
    assert run_predict(["--model", model, png, "--show", str(target)]) == 0
    written = target if show.endswith(".png") else target / "d-28x28.png"
    assert capsys.readouterr().out.splitlines()[1] == f"  the model saw {written}"
    assert sorted(p.name for p in written.parent.iterdir()) == [written.name]
    np.testing.assert_array_equal(np.asarray(Image.open(written))[::10, ::10],
                                  digits.to_mnist(digits.load_image(png)))


def test_show_png_for_two_pictures_is_a_setup_error_saying_what_to_do(tmp_path, capsys):
    model = str(model_file(tmp_path / "m.npz"))
    files = [str(digit_png(tmp_path / f"{k}.png")) for k in "ab"]
    target = tmp_path / "seen.png"
    assert run_predict(["--model", model, *files, "--show", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and not target.exists()
    assert err == (f"error: --show {target}: a .png names one image, but 2 files were given; "
                   "name a folder instead\n")


def test_show_names_for_same_named_files_and_a_repeated_path(tmp_path, capsys):
    """``a/7.png a/7.png b/7.png c/7.png``: the repeated path shows once, the others are made
    unique by their place on the command line: 7-28x28.png, 7-3-28x28.png, 7-4-28x28.png."""
    model = str(model_file(tmp_path / "m.npz"))
    a, b, c = (digit_png((tmp_path / d).mkdir() or tmp_path / d / "7.png") for d in "abc")
    show = tmp_path / "seen"
    assert run_predict(["--model", model, str(a), str(a), str(b), str(c), "--show", str(show)],
                       seconds=10) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split(": ")[0] for ln in out if not ln.startswith(" ")] == \
        [str(a), str(a), str(b), str(c)]
    names = ["7-28x28.png", "7-28x28.png", "7-3-28x28.png", "7-4-28x28.png"]
    assert [ln for ln in out if ln.startswith(" ")] == \
        [f"  the model saw {show / n}" for n in names]
    assert sorted(p.name for p in show.iterdir()) == sorted(set(names))
