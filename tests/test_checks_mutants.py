"""graphnet.checks directly: the cases its mutation run (docs/testing.md) showed untested.

Every door's argument check goes through these helpers, so a message that names the wrong
argument, or a check that lets a wrong type through, reaches every public function.
"""
from __future__ import annotations

import re

import pytest

from graphnet import checks
from graphnet.errors import ArgumentError, ArgumentTypeError


def refused(error: type, message: str):
    """pytest.raises for ``error`` whose text starts with ``message`` exactly."""
    return pytest.raises(error, match="^" + re.escape(message))


# --- int_pair: both elements checked, each under its own name, against the minimum ----------
def test_int_pair_names_the_second_element_and_applies_the_minimum_to_it():
    with refused(ArgumentError, "kernel_size[1] must be >= 1, got 0"):
        checks.int_pair((3, 0), "kernel_size")
    with refused(ArgumentTypeError, "stride[1] must be an integer, got float 1.5"):
        checks.int_pair((2, 1.5), "stride")
    with refused(ArgumentError, "padding[1] must be >= 0, got -1"):
        checks.int_pair([0, -1], "padding", minimum=0)
    assert checks.int_pair((2, 3), "kernel_size") == (2, 3)


# --- axes: the default name, and each element's message ----------------------------------------
def test_axes_names_the_argument_axis_by_default():
    with refused(ArgumentTypeError, "axis must be an integer, got float 1.5"):
        checks.axes(1.5)
    with refused(ArgumentTypeError, "axis must be an integer, got 'x'"):
        checks.axes((0, "x"))


def test_axes_names_the_given_argument_for_each_element():
    with refused(ArgumentTypeError, "dims must be an integer, got float 1.5"):
        checks.axes((0, 1.5), "dims")
    with refused(ArgumentError, "dims repeats an axis: (1, 1)"):
        checks.axes((1, 1), "dims")
    assert checks.axes([0, -1], "dims") == (0, -1)


# --- sizes: only a sequence of integers ------------------------------------------------------
@pytest.mark.parametrize("value, shown", [(5, "int 5"), ({3, 4}, "set {3, 4}"),
                                          ("34", "str '34'"), (b"34", "bytes b'34'")])
def test_sizes_refuses_what_is_not_a_sequence_of_integers_as_a_whole(value, shown):
    with refused(ArgumentTypeError, f"layers must be a list of integers, got {shown}"):
        checks.sizes(value, "layers")


def test_sizes_applies_the_minimum_to_every_element_under_its_index():
    with refused(ArgumentError, "layers[1] must be >= 1, got 0"):
        checks.sizes([3, 0], "layers")
    with refused(ArgumentError, "shape[2] must be >= 0, got -1"):
        checks.sizes((4, 0, -1), "shape", minimum=0)
    assert checks.sizes((4, 0), "shape", minimum=0) == [4, 0]


# --- memory: unknown size, and the limit itself ------------------------------------------------
@pytest.mark.parametrize("failure", [ValueError, OSError, AttributeError])
def test_host_memory_is_zero_where_the_system_cannot_say(monkeypatch, failure):
    def sysconf(name):
        raise failure(name)
    monkeypatch.setattr(checks.os, "sysconf", sysconf)
    assert checks.host_memory_bytes() == 0


def test_an_array_of_exactly_the_machine_memory_is_allowed_and_one_byte_more_is_not(monkeypatch):
    monkeypatch.setattr(checks, "host_memory_bytes", lambda: 120)
    checks.fits_in_memory((3, 5), 8, "x")  # 120 bytes
    checks.fits_in_memory((), 120, "x")  # a scalar: one element
    with refused(ArgumentError, "x of shape (4, 4) would need 128 bytes, more than this "
                                "machine's memory (120 bytes)"):
        checks.fits_in_memory((4, 4), 8, "x")
    with refused(ArgumentError, "x of shape (11, 11) would need 121 bytes"):
        checks.fits_in_memory((11, 11), 1, "x")
    monkeypatch.setattr(checks, "host_memory_bytes", lambda: 0)  # unknown: nothing refused
    checks.fits_in_memory((10**6, 10**6), 8, "x")


# --- real: closed ends by default, each message form -------------------------------------------
def test_real_includes_both_ends_unless_told_otherwise():
    assert checks.real(1, "p", low=0.0, high=1.0) == 1.0
    assert checks.real(0, "p", low=0.0, high=1.0) == 0.0
    with refused(ArgumentError, "p must be in [0, 1), got 1"):
        checks.real(1.0, "p", low=0.0, high=1.0, high_open=True)
    with refused(ArgumentError, "p must be in (0, 1], got 0"):
        checks.real(0.0, "p", low=0.0, high=1.0, low_open=True)


@pytest.mark.parametrize("kwargs, value, message", [
    (dict(low=0.0, high=1.0), 2.0, "p must be in [0, 1], got 2"),
    (dict(high=1.0), 2.0, "p must be <= 1, got 2"),
    (dict(high=1.0, high_open=True), 1.0, "p must be < 1, got 1"),
    (dict(low=0.0), -1.0, "p must be >= 0, got -1"),
    (dict(low=0.0, low_open=True), 0.0, "p must be > 0, got 0"),
])
def test_real_says_which_range_was_expected(kwargs, value, message):
    with refused(ArgumentError, message):
        checks.real(value, "p", **kwargs)


def test_real_names_the_type_it_refuses():
    with refused(ArgumentTypeError, "lr must be a real number, got str '0.1'"):
        checks.real("0.1", "lr")
    with refused(ArgumentTypeError, "lr must be a real number, got bool True"):
        checks.real(True, "lr")


def test_choice_lists_the_options_in_its_message():
    with refused(ArgumentError, "mode must be one of 'a', 'b', got 'x'"):
        checks.choice("x", "mode", ["a", "b"])
    assert checks.choice("b", "mode", ("a", "b")) == "b"


def test_flag_takes_numpy_bools_as_python_bools():
    """Found by the mutation run: flag() looked for the type name 'bool_', which NumPy 2
    calls 'bool', so NumPy bools were refused although the docstring accepts them."""
    import numpy as np
    for value in (np.bool_(True), np.bool_(False), True, False):
        got = checks.flag(value, "shuffle")
        assert type(got) is bool and got == bool(value)
    with refused(ArgumentTypeError, "shuffle must be True or False, got int 1"):
        checks.flag(1, "shuffle")
