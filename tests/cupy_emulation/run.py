"""Run a command with the CPU emulation of CuPy standing in for ``cupy`` (a dry run, not a GPU).

    python -m tests.cupy_emulation.run examples/mnist/train.py --preset fast --epochs 1
    python -m tests.cupy_emulation.run -m pytest -q tests/test_ops.py

The command runs under this Python with ``GRAPHNET_BACKEND=cupy`` (unless set) and
``GRAPHNET_CUPY_EMULATION=force``; Python subprocesses it starts get the emulation too.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parent / "site"
REPO = Path(__file__).resolve().parents[2]


def emulation_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with the emulation switched on for every Python child."""
    env = dict(os.environ if env is None else env)
    path = [str(SITE), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(PYTHONPATH=os.pathsep.join(path), GRAPHNET_CUPY_EMULATION="force")
    env.setdefault("GRAPHNET_BACKEND", "cupy")
    return env


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    cmd = [sys.executable, *argv] if argv[0].endswith(".py") or argv[0].startswith("-") else argv
    os.execvpe(cmd[0], cmd, emulation_env())


if __name__ == "__main__":
    main(sys.argv[1:])
