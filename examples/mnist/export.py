"""Write a trained model as ONNX, to run it without graphnet (ONNX Runtime, browsers, phones).

    python examples/mnist/export.py --model runs/fast/model.npz --out model.onnx

The ONNX model takes raw MNIST pixels, float32 of shape (N, 28, 28) with grey levels
0..255 (the scaling and centring are inside it), and returns the class probabilities
(N, 10) as output "probabilities". Needs the onnx extra: pip install "graphnet[onnx]".

Exit status: 0 written, 2 for a bad flag, an unreadable model or an unwritable --out
(one line on stderr, nothing written).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

if __package__:  # part of the package: python -m examples.mnist.export, or imported
    from . import digits
    from .train import _Parser
else:  # run by path (python examples/mnist/export.py): this folder is on the path
    import digits
    from train import _Parser

EXIT_BAD_SETUP = 2


def check_out(out: str) -> Path:
    """``--out`` as a path that can be written: not a folder, in an existing writable folder."""
    path = Path(out)
    if path.is_dir():
        raise digits.SetupError(f"--out {out}: is a folder; name the .onnx file to write")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise digits.SetupError(f"--out {out}: {folder} {why}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise digits.SetupError(f"--out {out}: cannot be written (permission denied)")
    return path


def main(argv: Optional[list[str]] = None) -> int:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model.npz written by train.py (or its folder)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    args = p.parse_args(argv)
    try:
        from graphnet import onnx as gx
        gx.support.require_onnx()
        out = check_out(args.out)
        model = digits.load_model(args.model, "numpy")
        path = gx.export(model, out)
    except (digits.SetupError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETUP
    except OSError as exc:
        print(f"error: --out {args.out}: cannot be written ({exc.strerror or exc})", file=sys.stderr)
        return EXIT_BAD_SETUP
    print(f"wrote {path} (ONNX opset {gx.OPSET}): input 'images' float32 (N, 28, 28) raw "
          f"pixels 0-255, output 'probabilities' (N, {model.num_classes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
