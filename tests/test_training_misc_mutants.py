"""Mutation survivors of graphnet/training/signals.py, order.py, strategy.py and history.py.

Each test pins a behaviour a user relies on that the rest of the suite left open (see
docs/testing.md, Mutation testing).
"""
from __future__ import annotations

import io
import signal
import threading
from types import SimpleNamespace

import numpy as np
import pytest

import graphnet as gn
from graphnet import optim
from graphnet.training import Trainer, epoch_permutation
from graphnet.training.order import _stable_order, checked_seed, default_seed, is_int
from graphnet.training.signals import sigint_finishes_batch
from graphnet.training.strategy import Batches, SingleProcess

from helpers import blobs, tiny_model

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


# --- order.py: the keyed epoch order and the seed ------------------------------------------

KEY_MAX = 2**64 - 1


@pytest.mark.parametrize("seed, epoch", [(0, 0), (KEY_MAX, 0), (0, KEY_MAX), (2**63, 5)])
def test_epoch_permutation_takes_every_key_in_range(seed, epoch):
    order = epoch_permutation(seed, epoch, 50)
    assert order.dtype == np.int64
    assert sorted(order.tolist()) == list(range(50))



def test_epoch_permutation_is_the_same_for_the_same_key_and_differs_for_another():
    first = epoch_permutation(11, 2, 200)
    assert first.tolist() == epoch_permutation(11, 2, 200).tolist()
    assert first.tolist() != epoch_permutation(11, 3, 200).tolist()
    assert first.tolist() != epoch_permutation(12, 2, 200).tolist()

@pytest.mark.parametrize("name, args", [
    ("seed", (-1, 0, 5)), ("seed", (2**64, 0, 5)), ("seed", ("1", 0, 5)), ("seed", (True, 0, 5)),
    ("seed", (1.0, 0, 5)), ("epoch", (0, -1, 5)), ("epoch", (0, 2**64, 5)), ("epoch", (0, "0", 5)),
])
def test_epoch_permutation_refuses_a_key_out_of_range_naming_it(name, args):
    with pytest.raises(ValueError) as err:
        epoch_permutation(*args)
    bad = args[0] if name == "seed" else args[1]
    assert str(err.value) == f"{name} must be an integer in [0, 2**64), got {bad!r}"


@pytest.mark.parametrize("n", [-1, "5", 5.0, None, False])
def test_epoch_permutation_refuses_a_bad_size_naming_it(n):
    with pytest.raises(ValueError) as err:
        epoch_permutation(0, 0, n)
    assert str(err.value) == f"n must be an integer >= 0, got {n!r}"


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_epoch_permutation_of_tiny_sets(n):
    assert sorted(epoch_permutation(7, 1, np.int64(n)).tolist()) == list(range(n))


@pytest.mark.parametrize("lowest", [None, "unique"])
def test_tied_keys_of_a_long_order_keep_their_order(lowest):
    keys = np.random.default_rng(0).integers(1, 40, size=5000).astype(np.uint64)
    if lowest:  # ties only above a unique smallest key
        keys[1234] = 0
    order = _stable_order(keys)
    assert order.dtype == np.int64
    assert order.tolist() == sorted(range(5000), key=lambda i: (int(keys[i]), i))


@pytest.mark.parametrize("v", [0, 1, KEY_MAX, np.uint64(KEY_MAX), np.int32(3)])
def test_checked_seed_takes_every_key_as_a_python_int(v):
    out = checked_seed(v)
    assert out == int(v) and type(out) is int


@pytest.mark.parametrize("v", [-1, 2**64, True, np.bool_(True), 1.0, "3", None])
def test_checked_seed_refuses_the_rest_naming_it(v):
    with pytest.raises(ValueError) as err:
        checked_seed(v)
    assert str(err.value) == f"seed must be an integer in [0, 2**64), got {v!r}"


def test_is_int_means_an_integer_and_not_a_bool():
    assert is_int(3) and is_int(np.int8(-2)) and is_int(np.uint64(KEY_MAX))
    assert not any(is_int(v) for v in (True, np.bool_(False), 3.0, "3", None))


def test_the_default_seed_is_the_last_gn_seed_when_it_can_key_a_shuffle(monkeypatch):
    monkeypatch.setattr(gn, "_last_seed", None)
    assert default_seed() == 0
    gn.seed(7)
    assert default_seed() == 7
    gn.seed(2**64)  # fine for the generators, too large for a shuffle key
    assert default_seed() == 0
    monkeypatch.setattr(gn, "_last_seed", KEY_MAX)
    assert default_seed() == KEY_MAX
    gn.seed(0)


# --- strategy.py: the one-process default -------------------------------------------------

def test_batches_are_consecutive_slices_of_the_order():
    order = np.arange(10)[::-1]
    b = SingleProcess().sampler(4)
    assert isinstance(b, Batches) and b.global_batch == 4
    rows, first = b.rows_at(order, 8)
    assert rows.tolist() == [1, 0] and first == 8
    assert b.rows_at(order, 4)[0].tolist() == [5, 4, 3, 2]


class _Recording(optim.SGD):
    def minimize(self, graph, feed, rng_key=None, gradients=None):
        self.keys.append(rng_key)
        return super().minimize(graph, feed, rng_key=rng_key, gradients=gradients)


def test_single_process_step_passes_the_key_and_reports_a_stop_request():
    model = tiny_model(layers=(4, 10), dropout=0.5, seed=1)
    x, y = blobs(8)
    model.fit_preprocessing(x)
    opt = _Recording(model.parameters(), lr=0.1)
    opt.keys = []
    data, targets = model.inputs
    feed = {data: model.prepare(x), targets: model.prepare_targets(y, 8, "y")}
    s = SingleProcess()
    cost, stop = s.step(opt, model.train_graph, feed, (1, 2, 3), 8, lambda: False)
    assert np.isfinite(float(cost)) and stop is False
    _, stop = s.step(opt, model.train_graph, feed, None, 8, lambda: True)
    assert stop is True
    assert opt.keys == [(1, 2, 3), None]


def test_single_process_evaluates_prepared_data_as_the_model_does():
    model = tiny_model(layers=(4, 10), seed=1)
    x, y = blobs(16)
    model.fit_preprocessing(x)
    got = SingleProcess().evaluate(model, model.prepare(x), model.prepare_targets(y, 16, "y"))
    assert got == pytest.approx(model.evaluate(x, y))


def test_a_trainer_with_the_default_strategy_trains_on_every_row():
    model = tiny_model(layers=(4, 10), seed=1)
    x, y = blobs(20)
    model.fit_preprocessing(x)
    seen = []
    t = Trainer(model, optim.SGD(model.parameters(), lr=0.1), batch_size=8, progress=False,
                augment=lambda xb: (seen.append(xb.shape[0]), xb)[1])
    h = t.fit(x, y, epochs=1)
    assert seen == [8, 8, 4] and t.state.batches_seen == 3
    assert h.to_dict()["epoch"] == [1] and len(h.to_dict()) == 13


class _Unkeyed(optim.SGD):
    def minimize(self, graph, feed, gradients=None):  # type: ignore[override]
        return super().minimize(graph, feed, gradients=gradients)


def test_single_process_step_without_a_key_calls_an_optimizer_that_takes_none():
    model = tiny_model(layers=(4, 10), seed=1)
    x, y = blobs(8)
    model.fit_preprocessing(x)
    data, targets = model.inputs
    feed = {data: model.prepare(x), targets: model.prepare_targets(y, 8, "y")}
    cost, stop = SingleProcess().step(_Unkeyed(model.parameters(), lr=0.1), model.train_graph,
                                      feed, None, 8, lambda: False)
    assert np.isfinite(float(cost)) and stop is False
