"""Read pictures of digits and print what a trained model thinks they are.

    python examples/mnist/predict.py --model runs/fast/model.npz my_digit.png
    python examples/mnist/predict.py --model runs/fast/model.npz *.jpg --show seen/
    python examples/mnist/predict.py --model runs/fast/model.npz digit.png --backend cupy

Any size or colour of PNG/JPEG/... is turned into a 28x28 digit the way MNIST's were
made (see digits.py): grey levels, dark-on-light inverted, cropped to the ink,
scaled to fit 20x20, centred by centre of mass. For each file it prints the three
most probable classes; --show writes the 28x28 images the model saw (enlarged).

Exit status: 0 when every file got an answer, 1 when some could not be read (the
others still get theirs), 2 for a bad model, backend or option.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from graphnet import ArgumentError, to_numpy
from graphnet.io import check_path

if __package__:  # part of the package: python -m examples.mnist.predict, or imported
    from . import digits
else:  # run by path (python examples/mnist/predict.py): this folder is on the path
    import digits

EXIT_SOME_FAILED, EXIT_BAD_SETUP = 1, 2


def show_paths(show: Optional[str], files: list[str]) -> dict[str, Path]:
    """Where --show writes each file's 28x28 image: the PNG named, or one per file in a folder."""
    if show is None:
        return {}
    target = Path(show)
    if target.suffix.lower() == ".png" and not target.is_dir():
        if len(files) != 1:
            raise digits.SetupError(f"--show {show}: a .png names one image, but {len(files)} "
                                    "files were given; name a folder instead")
        return {files[0]: target}
    if target.exists() and not target.is_dir():
        raise digits.SetupError(f"--show {show}: is not a folder; name a folder or a .png")
    out: dict[str, Path] = {}
    used: set[str] = set()
    for i, f in enumerate(files):
        if f in out:  # the same file again: the same image, shown once
            continue
        name, k = f"{Path(f).stem}-28x28.png", i
        while name in used:  # a later file may be named like an earlier one made unique
            k += 1
            name = f"{Path(f).stem}-{k}-28x28.png"
        used.add(name)
        out[f] = target / name
    return out


def write_show(image: np.ndarray, path: Path) -> bool:
    """Write one --show image; report a failure on stderr instead of stopping."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        digits.save_png(image, path)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return False
    print(f"  the model saw {path}")
    return True


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="picture files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, help="a model.npz written by train.py (or its folder)")
    p.add_argument("--show", metavar="DIR_OR_PNG",
                   help="write the 28x28 image the model saw: into this folder, or this .png")
    p.add_argument("--backend", choices=["numpy", "cupy"],
                   help="where the model runs (default: GRAPHNET_BACKEND or numpy)")
    args = p.parse_args(argv)
    try:
        check_path(args.model, "--model")
        if args.show is not None:
            check_path(args.show, "--show")
    except ArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETUP
    try:
        shows = show_paths(args.show, args.images)
        model = digits.load_model(args.model, args.backend)
    except digits.SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETUP

    images, names, failed = [], [], 0
    for name in args.images:
        try:
            images.append(digits.to_mnist(digits.load_image(name), name))
            names.append(name)
        except digits.DigitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    if images:
        probs = to_numpy(model.predict_proba(np.stack(images)))
        for name, image, row in zip(names, images, probs):
            try:
                ranked = ", ".join(f"{c} ({100 * q:.1f}%)" for c, q in digits.top_classes(row))
            except digits.DigitError as exc:
                print(f"error: {name}: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"{name}: {ranked}")
            if name in shows and not write_show(image, shows[name]):
                failed += 1
    return EXIT_SOME_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
