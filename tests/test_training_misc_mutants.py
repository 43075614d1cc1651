"""Mutation survivors of graphnet/training/signals.py, history.py, order.py, strategy.py.

Each test pins a behaviour a user relies on that the rest of the suite left open (see
docs/testing.md, Mutation testing).
"""
from __future__ import annotations

import io
import signal
import threading
from types import SimpleNamespace

import pytest

from graphnet.training.signals import sigint_finishes_batch

CTRL_C_MESSAGE = ("\nCtrl-C: finishing this batch and saving a checkpoint "
                  "(Ctrl-C again stops at once)\n")


class _Stderr(io.StringIO):
    """A stderr that records the order of writes and flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def write(self, s: str) -> int:
        self.events.append("write")
        return super().write(s)

    def flush(self) -> None:
        self.events.append("flush")
        super().flush()


def _trainer(checkpoint_dir=None) -> SimpleNamespace:
    return SimpleNamespace(stop_requested=False, checkpoint_dir=checkpoint_dir)


def test_first_ctrl_c_asks_to_stop_and_says_so_on_stderr_at_once(monkeypatch, capsys, tmp_path):
    err = _Stderr()
    monkeypatch.setattr("sys.stderr", err)
    t = _trainer(tmp_path)
    with sigint_finishes_batch(t):
        signal.raise_signal(signal.SIGINT)
        assert t.stop_requested is True
    assert err.getvalue() == CTRL_C_MESSAGE  # the README's promise, in the user's words
    assert err.events[-1] == "flush"  # seen at once even when stderr is a buffered file
    assert capsys.readouterr().out == ""  # never mixed into the program's output


def test_ctrl_c_without_a_checkpoint_directory_only_sets_the_flag(monkeypatch, capsys):
    t = _trainer(None)
    with sigint_finishes_batch(t):
        signal.raise_signal(signal.SIGINT)
        assert t.stop_requested is True
    assert capsys.readouterr() == ("", "")


def test_second_ctrl_c_raises_keyboard_interrupt_and_exit_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    t = _trainer(None)
    with pytest.raises(KeyboardInterrupt):
        with sigint_finishes_batch(t):
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert t.stop_requested is False  # a later fit starts without a stale request


def test_the_handler_is_installed_only_while_active():
    before = signal.getsignal(signal.SIGINT)
    t = _trainer(None)
    guard = sigint_finishes_batch(t)
    with guard:
        installed = signal.getsignal(signal.SIGINT)
        assert installed is not before and callable(installed)
        installed(signal.SIGINT, None)
        assert t.stop_requested is True
    assert signal.getsignal(signal.SIGINT) is before
    assert t.stop_requested is False


def test_outside_the_main_thread_ctrl_c_is_left_alone_and_the_flag_still_cleared():
    before = signal.getsignal(signal.SIGINT)
    t = _trainer(None)
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with sigint_finishes_batch(t):
                t.stop_requested = True  # e.g. set by another rank's vote
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    th = threading.Thread(target=body)
    th.start()
    th.join()
    assert errors == []
    assert signal.getsignal(signal.SIGINT) is before
    assert t.stop_requested is False
