"""Run a script of this folder as a module of the ``examples.mnist`` package.

``python examples/mnist/train.py`` puts this folder, not the repository, first on the import
path, so ``examples`` would not be importable and the script's relative imports would fail.
Each script's first statement hands over to :func:`run_as_module`, which registers the
``examples`` package found two folders up (the import path itself is left alone) and runs
the script's module as ``__main__``, exactly as ``python -m examples.mnist.<name>`` would.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import runpy
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[2]


def run_as_module(script: str) -> NoReturn:
    """Run ``examples/mnist/<script>.py`` as ``examples.mnist.<script>``, then exit."""
    if "examples" not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec("examples", [str(ROOT)])
        if spec is None or spec.loader is None:
            raise ImportError(f"the examples package is not in {ROOT}")
        package = importlib.util.module_from_spec(spec)
        sys.modules["examples"] = package
        spec.loader.exec_module(package)
    runpy.run_module(f"examples.mnist.{script}", run_name="__main__", alter_sys=True)
    sys.exit(0)
