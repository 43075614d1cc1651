"""Shared fixtures: one ``backend`` fixture over every registered backend."""
from __future__ import annotations

import pytest

import graphnet as gn


def _backend_params() -> list:
    params = []
    for name in gn.backend_names():
        marks = [pytest.mark.gpu] if name == "cupy" else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=_backend_params())
def backend(request):
    """Each backend in turn, active for the test; unavailable ones are skipped with the reason."""
    try:
        b = gn.get_backend(request.param)
    except gn.BackendUnavailableError as exc:
        pytest.skip(f"{request.param} backend unavailable: {exc}")
    with gn.use_backend(b):
        gn.seed(0)
        yield b


@pytest.fixture
def numpy_backend():
    """The NumPy backend, active for the test (the float64 reference)."""
    with gn.use_backend("numpy") as b:
        gn.seed(0)
        yield b
