"""Meta-tests: the shared checkers can fail, and say where."""
from __future__ import annotations

import numpy as np
import pytest

from graphnet.node import Node, as_node
from graphnet.testing import assert_close, check_gradients


class WrongSquare(Node):
    """``x ** 2`` with a deliberately wrong gradient (``x`` instead of ``2 x``)."""

    op = "wrong_square"

    def __init__(self, x):
        x = as_node(x)
        super().__init__((x,), shape=x.shape)

    def forward(self, ctx, x):
        return x * x

    def backward(self, ctx, g, xs, y):
        return (g * xs[0],)


class RightSquare(WrongSquare):
    op = "right_square"

    def backward(self, ctx, g, xs, y):
        return (2 * g * xs[0],)


def test_check_gradients_catches_a_wrong_backward(numpy_backend):
    x = np.random.default_rng(0).standard_normal((3, 2))
    check_gradients(RightSquare, [x])
    with pytest.raises(AssertionError, match=r"gradient of input 0 \(shape \(3, 2\)\)"):
        check_gradients(WrongSquare, [x])


def test_assert_close_reports_the_worst_element():
    expected = np.zeros((3, 4))
    actual = expected.copy()
    actual[1, 2], actual[2, 0] = 0.5, 0.1
    with pytest.raises(AssertionError) as err:
        assert_close(actual, expected, what="grid")
    msg = str(err.value)
    assert "grid" in msg and "2 of 12 elements differ" in msg
    assert "worst at index (1, 2)" in msg and "got 0.5" in msg


@pytest.mark.parametrize("actual,expected,needle", [
    (np.zeros(3), np.zeros(4), "shape (3,), expected (4,)"),
    (np.zeros(3), np.array([0, np.nan, 0]), "index (1,)"),
    (np.array([np.inf]), np.array([-np.inf]), "index (0,)"),
    (np.float64(2.0), 3.0, "index ()"),
])
def test_assert_close_fails_on_shape_nan_inf_and_scalars(actual, expected, needle):
    with pytest.raises(AssertionError) as err:
        assert_close(actual, expected)
    assert needle in str(err.value)


def test_assert_close_accepts_equal_specials_and_checks_dtype():
    specials = np.array([np.inf, -np.inf, np.nan, 1.0])
    assert_close(specials, specials.copy())
    with pytest.raises(AssertionError, match="dtype float64, expected float32"):
        assert_close(np.zeros(2), np.zeros(2), check_dtype="float32")
