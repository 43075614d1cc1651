"""predict.py as a hostile user meets it: odd files, bombs, poisoned models, long paths."""
from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graphnet as gn
from graphnet import io as gio
from graphnet import nn

from examples.mnist import digits, predict


def model_file(path: Path, overflow: bool = False) -> Path:
    """An untrained model; ``overflow``: finite weights whose logits are all +inf."""
    with gn.use_backend("numpy"):
        gn.seed(0)
        model = nn.Classifier(nn.MLP([16, 10], 784, "tanh"), (784,))
        if overflow:
            first, last = model.named_arrays()["net.0.b"], model.named_arrays()["net.2.W"]
            first.value = np.full(first.shape, 50.0)  # every hidden unit at tanh(50) = 1
            last.value = np.full(last.shape, 3e38)
        model.save(path)
    return path


def digit_png(path: Path) -> Path:
    img = np.zeros((28, 28), np.uint8)
    img[5:23, 12:16] = 255
    Image.fromarray(img).save(path)
    return path


def run_predict(args: list[str], seconds: float = 30) -> int:
    """predict.main(args), failing the test instead of hanging when it blocks."""
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("code", predict.main(args)), daemon=True)
    t.start()
    t.join(seconds)
    assert "code" in result, f"predict {args} still running after {seconds} s"
    return result["code"]


def test_a_pipe_a_device_and_a_folder_are_named_not_read(tmp_path, capsys):
    model = model_file(tmp_path / "m.npz")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = digit_png(tmp_path / "d.png")
    try:
        code = run_predict(["--model", str(model), str(fifo), "/dev/zero", str(tmp_path),
                            str(good)])
    finally:
        try:  # a reader stuck on the pipe (the guard failed) returns
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    out, err = capsys.readouterr()
    assert code == 1
    for bad in (fifo, "/dev/zero", tmp_path):
        assert f"error: {bad}: is not a regular file" in err
    assert out.startswith(f"{good}: ")


def test_a_file_over_the_byte_cap_is_refused_unread(tmp_path, capsys, monkeypatch):
    model = model_file(tmp_path / "m.npz")
    good = digit_png(tmp_path / "d.png")
    monkeypatch.setattr(digits, "MAX_FILE_BYTES", good.stat().st_size - 1)
    assert run_predict(["--model", str(model), str(good)]) == 1
    assert f"{good}: is {good.stat().st_size} bytes, more than the" in capsys.readouterr().err


def forged_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (its pixels would take gigabytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = zlib.compress(b"\0" * (width // 8 + 2))  # a sliver of the data: never decoded
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                      1, 0, 0, 0, 0))
                     + chunk(b"IDAT", row) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, capsys, monkeypatch):
    model = model_file(tmp_path / "m.npz")
    bomb = forged_png(tmp_path / "bomb.png", 13000, 13000)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    assert run_predict(["--model", str(model), str(bomb)]) == 1
    assert f"{bomb}: is 13000x13000 pixels, more than the {digits.MAX_FILE_PIXELS} allowed" \
        in capsys.readouterr().err
    assert decoded == []


def test_a_model_with_nan_weights_is_a_setup_error(tmp_path, capsys):
    path = model_file(tmp_path / "m.npz")
    arrays, meta = gio.read_npz(path)
    arrays = {k: v.copy() for k, v in arrays.items()}
    arrays["net.2.W"][3, 4] = np.nan
    gio.atomic_write_npz(path, arrays, {"kind": meta["kind"], "model": meta["model"]})
    assert run_predict(["--model", str(path), str(digit_png(tmp_path / "d.png"))]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "array 'net.2.W' holds 1 non-finite value" in err


def test_probabilities_that_overflow_are_an_error_not_class_zero(tmp_path, capsys):
    path = model_file(tmp_path / "m.npz", overflow=True)
    assert run_predict(["--model", str(path), str(digit_png(tmp_path / "d.png"))]) == 1
    out, err = capsys.readouterr()
    assert "%" not in out and "probabilities hold NaN or inf" in err


@pytest.mark.parametrize("flag", ["--model", "--show"])
def test_a_path_too_long_for_the_system_is_a_clear_exit_2(tmp_path, capsys, flag):
    model = model_file(tmp_path / "m.npz")
    long = str(tmp_path / ("x" * 300))
    args = {"--model": ["--model", long], "--show": ["--model", str(model), "--show", long]}[flag]
    assert run_predict(args + [str(digit_png(tmp_path / "d.png"))]) == 2
    err = capsys.readouterr().err
    assert f"error: {flag}: " in err and "component of 300 bytes" in err
    assert "Traceback" not in err


def test_a_picture_path_too_long_is_named(tmp_path, capsys):
    model = model_file(tmp_path / "m.npz")
    long = str(tmp_path / ("y" * 300))
    assert run_predict(["--model", str(model), long]) == 1
    assert f"error: {long}: cannot be read" in capsys.readouterr().err


def test_show_naming_an_existing_file_is_a_setup_error(tmp_path, capsys):
    model = model_file(tmp_path / "m.npz")
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert run_predict(["--model", str(model), "--show", str(taken),
                        str(digit_png(tmp_path / "d.png"))]) == 2
    assert f"--show {taken}: is not a folder" in capsys.readouterr().err
    assert taken.read_text() == "mine"
