"""Installs the CPU emulation of CuPy at interpreter start when GRAPHNET_CUPY_EMULATION=force.

Put this folder first on PYTHONPATH (``python -m tests.cupy_emulation.run`` does) so that a script
and every Python subprocess it starts see the emulation as ``cupy``. EMULATED: not GPU evidence.
"""
import os
import sys

if os.environ.get("GRAPHNET_CUPY_EMULATION") == "force":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import cupy_emulation  # noqa: E402  (tests/ is on the path now)

    cupy_emulation.install()
    if not os.environ.get("GRAPHNET_CUPY_EMULATION_QUIET"):
        sys.stderr.write("[graphnet] `cupy` is the CPU EMULATION of CuPy (tests/cupy_emulation): "
                         "a dry run, not GPU evidence\n")
