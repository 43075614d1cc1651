"""Shared fixtures: one ``backend`` fixture over every registered backend.

The CuPy cases run on real CuPy where a CUDA device is present (id ``cupy``). Elsewhere they run
on the CPU emulation of CuPy in ``tests/cupy_emulation`` (id ``cupy-emulated``): that executes the
CuPy backend's code with CuPy's semantics, but is not GPU evidence. ``GRAPHNET_CUPY_EMULATION=0``
turns the emulation off (the CuPy cases then skip with the reason, as before);
``GRAPHNET_CUPY_EMULATION=forbid`` (the GPU check) stops the session at once unless real CuPy
runs on a CUDA device, so a GPU run can never pass on the emulation.
"""
from __future__ import annotations

import functools
import os
import sys

import pytest

import graphnet as gn
from graphnet import backends as _backends

import cupy_emulation

if os.environ.get("MUTANT_UNDER_TEST") == "stats":
    # mutmut's traced run (tools/mutation.py) records which tests call which functions, in
    # this process only. A child process (a test that runs a script) cannot record, and
    # from another folder it fails to find mutmut's setup.cfg: children run unmutated.
    from mutmut.mutation import trampoline as _trampoline
    _trampoline._mutant_under_test = "stats"
    del os.environ["MUTANT_UNDER_TEST"]


@functools.lru_cache(maxsize=None)
def cupy_mode() -> tuple[str, str]:
    """``("real", "")``, ``("emulated", why)`` or ``("skip", why)`` for the CuPy cases here."""
    try:
        b = gn.get_backend("cupy")
        if cupy_emulation.is_emulated(b):  # forced by GRAPHNET_CUPY_EMULATION=force (a dry run)
            return "emulated", "GRAPHNET_CUPY_EMULATION=force"
        return "real", ""
    except gn.BackendUnavailableError as exc:
        why = str(exc)
    if os.environ.get("GRAPHNET_CUPY_EMULATION", "1") == "0":
        return "skip", f"cupy backend unavailable: {why} (emulation off: GRAPHNET_CUPY_EMULATION=0)"
    if cupy_emulation._kernels.compiler() is None:
        return "skip", f"cupy backend unavailable: {why}; no C++ compiler for the emulation"
    return "emulated", why


@functools.lru_cache(maxsize=None)
def emulated_cupy_backend() -> gn.Backend:
    """graphnet's real CupyBackend class, built on the emulated ``cupy`` module (one per session)."""
    from graphnet.backends.cupy_backend import CupyBackend
    with cupy_emulation.emulated():
        return CupyBackend()


def _backend_params() -> list:
    params = []
    for name in gn.backend_names():
        marks, ident = [], name
        if name == "cupy":
            marks = [pytest.mark.gpu]
            if cupy_mode()[0] == "emulated":
                ident = cupy_emulation.LABEL
                marks.append(pytest.mark.emulated)
        params.append(pytest.param(name, marks=marks, id=ident))
    return params


def pytest_sessionstart(session) -> None:
    if os.environ.get("GRAPHNET_CUPY_EMULATION") == "forbid" and cupy_mode()[0] != "real":
        pytest.exit("GRAPHNET_CUPY_EMULATION=forbid: real CuPy on a CUDA device is required, but "
                    f"{cupy_mode()[1] or 'cupy is the emulation'}", returncode=4)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (item.get_closest_marker("gpu") and "backend" not in params
                and cupy_mode()[0] == "emulated"):
            item.add_marker(pytest.mark.emulated)  # runs on the emulation via the autouse fixture


def pytest_report_header(config) -> str:
    mode, why = cupy_mode()
    if mode == "emulated":
        return ("cupy: EMULATED on the CPU (tests/cupy_emulation; not GPU evidence) because the "
                f"real backend is unavailable: {why}")
    return "cupy: real CuPy on a CUDA device" if mode == "real" else f"cupy: skipped ({why})"


def _use_emulation(request, monkeypatch) -> gn.Backend:
    """Run this test against the emulation: ``import cupy`` and ``get_backend('cupy')`` give it."""
    if request.node.get_closest_marker("gpu_hardware"):
        pytest.skip("needs a real CUDA device (timings or device memory): "
                    "the CuPy emulation cannot stand in for it")
    b = emulated_cupy_backend()
    for name, mod in cupy_emulation.modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setitem(_backends._instances, "cupy", b)
    return b


@pytest.fixture(params=_backend_params())
def backend(request, monkeypatch):
    """Each backend in turn, active for the test; unavailable ones are skipped with the reason."""
    if request.param == "cupy" and cupy_mode()[0] == "emulated":
        b = _use_emulation(request, monkeypatch)
    else:
        try:
            b = gn.get_backend(request.param)
        except gn.BackendUnavailableError as exc:
            pytest.skip(f"{request.param} backend unavailable: {exc}")
    with gn.use_backend(b):
        gn.seed(0)
        yield b


@pytest.fixture
def cupy_backend():
    """The CuPy backend (the emulation where no GPU is present), active for the test (which
    is marked ``gpu``)."""
    if cupy_mode()[0] == "skip":
        pytest.skip(cupy_mode()[1])
    with gn.use_backend("cupy") as b:
        gn.seed(0)
        yield b


@pytest.fixture(autouse=True)
def _emulate_cupy_for_gpu_tests(request, monkeypatch):
    """``gpu`` tests that ask for CuPy by name (not via ``backend``) also run on the emulation."""
    if ("backend" not in request.fixturenames and request.node.get_closest_marker("gpu")
            and cupy_mode()[0] == "emulated"):
        _use_emulation(request, monkeypatch)
    yield


@pytest.fixture
def numpy_backend():
    """The NumPy backend, active for the test (the float64 reference)."""
    with gn.use_backend("numpy") as b:
        gn.seed(0)
        yield b
