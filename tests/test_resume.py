"""Trainer semantics: keyed randomness, position in samples, resume with changed settings."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import graphnet as gn
from graphnet import optim
from graphnet.augment import random_shift
from graphnet.io import CheckpointError, atomic_write_npz, read_npz
from graphnet.training import (CHECKPOINT, CHECKPOINT_VERSION, OutOfMemory, Trainer,
                                TrainingInterrupted, epoch_permutation)
from graphnet.training.order import _stable_order

from helpers import blobs, interrupt_at_batch, tiny_model

N, BATCH = 200, 32


def _trainer(tmp_path=None, batch_size=BATCH, schedule=None, **kw) -> Trainer:
    model = tiny_model(layers=(24, 10), seed=5)
    model.fit_preprocessing(blobs(N)[0])
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Trainer(model, opt, schedule or optim.CosineLR(3), batch_size=batch_size,
                   progress=False, checkpoint_dir=tmp_path, **kw)




def _record_rows(trainer: Trainer, log: list) -> None:
    """Log ``(epoch, rows)`` for every batch the trainer gathers."""
    gather = trainer._batch

    def batch(X, Y, rows):
        log.append((trainer.state.epoch, gn.to_numpy(rows).copy()))
        return gather(X, Y, rows)
    trainer._batch = batch


def _rows_by_epoch(log: list) -> dict[int, np.ndarray]:
    out: dict[int, list] = {}
    for epoch, rows in log:
        out.setdefault(epoch, []).append(rows)
    return {e: np.concatenate(r) for e, r in out.items()}


def _params(trainer):
    return [gn.to_numpy(p.value) for p in trainer.model.parameters()]


# --- the epoch permutation -------------------------------------------------------------
def test_epoch_permutation_is_a_pure_function_of_seed_epoch_n():
    p = epoch_permutation(3, 1, 1000)
    assert p.dtype == np.int64 and np.array_equal(np.sort(p), np.arange(1000))
    assert np.array_equal(p, epoch_permutation(3, 1, 1000))
    assert not np.array_equal(p, epoch_permutation(3, 2, 1000))
    assert not np.array_equal(p, epoch_permutation(4, 1, 1000))
    assert epoch_permutation(0, 0, 0).shape == (0,)
    # pinned: a NumPy upgrade must not reorder a resumed epoch (raw Philox bits, stable sort)
    assert epoch_permutation(0, 0, 10).tolist() == [0, 2, 9, 1, 8, 5, 4, 3, 6, 7]


@pytest.mark.parametrize("seed, epoch, n", [(0, 0, 60000), (7, 3, 60000), (2**64 - 1, 9, 1001),
                                           (1, 1, 1), (5, 2, 2)])
def test_epoch_permutation_is_the_stable_sort_of_its_bits(seed, epoch, n):
    bits = np.random.Philox(key=np.array([seed, epoch], dtype=np.uint64)).random_raw(n)
    np.testing.assert_array_equal(epoch_permutation(seed, epoch, n),
                                  np.argsort(bits, kind="stable"))


def test_stable_order_keeps_tied_keys_in_their_order():
    """The fast (unstable) sort is used only when no two keys are equal."""
    rng = np.random.default_rng(0)
    for keys in (rng.integers(0, 4, 5000).astype(np.uint64),
                 np.concatenate([rng.integers(0, 2**63, 3000, dtype=np.uint64)] * 2),
                 np.zeros(3, np.uint64), np.zeros(0, np.uint64)):
        got = _stable_order(keys)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("args", [(-1, 0, 5), (0, -1, 5), (0, 0, -1), (1.5, 0, 5), (0, 0, "5"),
                                  (2**64, 0, 5), (True, 0, 5)])
def test_epoch_permutation_refuses_bad_arguments(args):
    with pytest.raises(ValueError, match="seed|epoch|n must"):
        epoch_permutation(*args)


def test_trainer_follows_the_epoch_permutation_of_its_seed():
    x, y = blobs(N)
    trainer = _trainer(seed=11)
    log: list = []
    _record_rows(trainer, log)
    trainer.fit(x, y, epochs=2)
    for epoch, rows in _rows_by_epoch(log).items():
        np.testing.assert_array_equal(rows, epoch_permutation(11, epoch, N))
    assert [len(r) for _, r in log[:7]] == [32] * 6 + [8]


def test_seed_defaults_to_gn_seed_and_travels_in_the_checkpoint(tmp_path):
    gn.seed(7)
    model = tiny_model(seed=7)
    assert Trainer(model, optim.SGD(model.parameters()), progress=False).seed == 7
    trainer = _trainer(tmp_path, seed=123)
    trainer.save_checkpoint()
    other = _trainer(seed=5)
    other.load_checkpoint(tmp_path / CHECKPOINT)
    assert other.seed == 123
    with pytest.raises(ValueError, match="seed must be"):
        _trainer(seed=-1)


def test_each_step_gets_the_key_seed_epoch_sample_offset():
    x, y = blobs(N)
    trainer = _trainer(seed=9)
    keys, minimize = [], trainer.optimizer.minimize

    def keyed_minimize(graph, feed, rng_key=None):
        keys.append(rng_key)
        return minimize(graph, feed)
    trainer.optimizer.minimize = keyed_minimize
    trainer = Trainer(trainer.model, trainer.optimizer, batch_size=BATCH, progress=False, seed=9)
    trainer.fit(x, y, epochs=2)
    assert keys == [(9, e, s) for e in range(2) for s in range(0, N, BATCH)]


# --- resume: exact, and with changed settings --------------------------------------------
def test_resume_equals_uninterrupted_whenever_checkpoints_are_written(tmp_path, monkeypatch):
    """Keyed shuffles and augmentation: a generator that a checkpoint disturbs changes nothing."""
    x, y = blobs(N)
    augment = lambda xb, rng_key=None: random_shift(xb, 2, (28, 28), rng_key=rng_key)  # noqa: E731
    straight = _trainer(augment=augment)
    straight.fit(x, y, epochs=3)

    b = gn.backend()
    reseed = lambda: (b.seed(12345), {})[1]  # noqa: E731  (what CupyBackend.rng_state does)
    monkeypatch.setattr(b, "rng_state", reseed)
    monkeypatch.setattr(b, "set_rng_state", lambda state: b.seed(999))
    first = _trainer(tmp_path, augment=augment)
    first.fit(x, y, epochs=1)
    first.save_checkpoint()  # an extra checkpoint write
    stop = {"n": 0}

    def interrupt_then_augment(xb, rng_key=None):
        stop["n"] += 1
        if stop["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return augment(xb, rng_key=rng_key)
    second = _trainer(tmp_path, augment=interrupt_then_augment)
    second.load_checkpoint(tmp_path / CHECKPOINT)
    with pytest.raises(TrainingInterrupted):
        second.fit(x, y, epochs=3)
    b.seed(4321)
    last = _trainer(tmp_path, augment=augment)
    last.load_checkpoint(tmp_path / CHECKPOINT)
    assert (last.state.epoch, last.state.sample) == (1, 3 * BATCH)
    last.fit(x, y, epochs=3)
    for p, q in zip(_params(straight), _params(last)):
        np.testing.assert_array_equal(p, q)
    assert last.history.train_loss == pytest.approx(straight.history.train_loss, rel=1e-6)


@pytest.mark.parametrize("new_batch", [50, 7, 256])
def test_ctrl_c_then_another_batch_size_sees_every_sample_of_every_epoch_once(tmp_path, new_batch):
    x, y = blobs(N)
    log: list = []
    stopped = _trainer(tmp_path, augment=interrupt_at_batch(10))  # epoch 2, batch 3
    _record_rows(stopped, log)
    with pytest.raises(TrainingInterrupted, match="sample 96 of 200"):
        stopped.fit(x, y, epochs=3)
    resumed = _trainer(tmp_path)
    resumed.load_checkpoint(tmp_path / CHECKPOINT)
    resumed.batch_size = new_batch  # as a caller may, after loading
    _record_rows(resumed, log)
    resumed.fit(x, y, epochs=3)
    seen = _rows_by_epoch(log)
    assert sorted(seen) == [0, 1, 2]
    for epoch, rows in seen.items():
        assert np.array_equal(np.sort(rows), np.arange(N)), f"epoch {epoch + 1}"
    assert {len(r) for e, r in log[10:] if e == 1} <= {new_batch, (N - 96) % new_batch}
    segs = resumed.history.segments
    assert [s["batch_size"] for s in segs] == [BATCH, new_batch]
    assert segs[1]["from_epoch"] == pytest.approx(1 + 96 / N)


def test_replan_changes_lr_and_schedule_from_the_resume_point(tmp_path):
    x, y = blobs(N)
    with pytest.raises(TrainingInterrupted):
        _trainer(tmp_path, augment=interrupt_at_batch(10)).fit(x, y, epochs=3)
    resumed = _trainer(tmp_path)
    resumed.load_checkpoint(tmp_path / CHECKPOINT)
    t0 = 1 + 96 / N
    notes = resumed.replan(batch_size=64, lr=0.01, schedule=optim.CosineLR(4 - t0))
    assert any("batch size 32 -> 64" in n for n in notes)
    assert any("re-planned" in n and "0.01" in n for n in notes)
    rates, minimize = [], resumed.optimizer.minimize
    resumed.optimizer.minimize = lambda g, f, **kw: (rates.append(resumed.optimizer.lr), minimize(g, f, **kw))[1]
    resumed.fit(x, y, epochs=4)
    assert rates[0] == pytest.approx(0.01)
    assert rates[-1] < 0.01 * 0.05  # the new cosine runs out at epoch 4
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    last = resumed.history.segments[-1]
    assert (last["lr"], last["batch_size"], last["schedule_from"]) == (0.01, 64, pytest.approx(t0))
    again = _trainer()
    again.load_checkpoint(tmp_path / CHECKPOINT)
    assert again.history.segments == resumed.history.segments
    assert (again.batch_size, again.base_lr) == (64, 0.01)


def test_a_finished_run_does_not_train_again_and_epochs_cannot_go_back(tmp_path):
    x, y = blobs(N)
    trainer = _trainer(tmp_path)
    trainer.fit(x, y, epochs=2)
    again = _trainer(tmp_path)
    again.load_checkpoint(tmp_path / CHECKPOINT)
    before = again.optimizer.steps
    again.fit(x, y, epochs=2)
    assert again.optimizer.steps == before and again.history.epoch == [1, 2]
    stopped = _trainer(tmp_path, augment=interrupt_at_batch(2))
    stopped.load_checkpoint(tmp_path / CHECKPOINT)
    with pytest.raises(TrainingInterrupted):
        stopped.fit(x, y, epochs=3)
    mid = _trainer(tmp_path)
    mid.load_checkpoint(tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match="part-way through epoch 3: give epochs >= 3"):
        mid.fit(x, y, epochs=2)


# --- checkpoint versions -----------------------------------------------------------------
def _as_version_1(path, batch: int) -> None:
    arrays, meta = read_npz(path)
    run, state = meta.pop("run"), meta.pop("state")
    meta.pop("checkpoint_version")
    meta.update(base_lr=run["base_lr"], schedule=run["schedule"],
                state={"epoch": state["epoch"], "batch": batch, "loss_sum": 0.0,
                       "batches_seen": state["batches_seen"]},
                rng={"backend": "numpy", "device": {}, "host": {}})
    for key in ("format", "version"):
        meta.pop(key)
    atomic_write_npz(path, arrays, meta)


def test_version_1_checkpoints_convert_at_epoch_ends_and_are_refused_mid_epoch(tmp_path):
    x, y = blobs(N)
    trainer = _trainer(tmp_path)
    trainer.fit(x, y, epochs=1)
    _as_version_1(tmp_path / CHECKPOINT, batch=0)
    old = _trainer(seed=5)
    old.load_checkpoint(tmp_path / CHECKPOINT)
    assert (old.state.epoch, old.state.sample, old.seed) == (1, 0, 5)
    old.fit(x, y, epochs=2)
    assert old.history.epoch == [1, 2]
    old.save_checkpoint(tmp_path / CHECKPOINT)
    _as_version_1(tmp_path / CHECKPOINT, batch=3)
    with pytest.raises(CheckpointError, match=r"version-1 checkpoint written part-way through"):
        _trainer().load_checkpoint(tmp_path / CHECKPOINT)


def test_newer_or_malformed_checkpoint_versions_are_refused(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.save_checkpoint()
    path = tmp_path / CHECKPOINT
    arrays, meta = read_npz(path)
    for bad, message in [(CHECKPOINT_VERSION + 1, "newer than this graphnet"),
                         ("2", "bad checkpoint_version")]:
        for key in ("format", "version"):
            meta.pop(key, None)
        atomic_write_npz(path, arrays, {**meta, "checkpoint_version": bad})
        with pytest.raises(CheckpointError, match=message):
            _trainer().load_checkpoint(path)
    for key in ("format", "version"):
        meta.pop(key, None)
    atomic_write_npz(path, arrays, {**meta, "state": {"epoch": 1}})
    with pytest.raises(CheckpointError, match="malformed checkpoint metadata"):
        _trainer().load_checkpoint(path)


# --- inputs and failures -----------------------------------------------------------------
@pytest.mark.parametrize("labels, message", [
    (lambda y: np.where(y == 3, 10, y), r"y_train: labels must be in 0\.\.9, found 10"),
    (lambda y: np.where(y == 3, -1, y), r"y_train: labels must be in 0\.\.9, found -1"),
    (lambda y: y.astype(float), "must be integers"),
    (lambda y: y.astype(bool), "must be integers"),
    (lambda y: y[:-1], r"expected 200 labels"),
    (lambda y: y[:, None], r"expected 200 labels .* got shape \(200, 1\)"),
])
def test_labels_are_checked_once_at_the_start(labels, message, backend):
    x, y = blobs(N)
    trainer = _trainer()
    with pytest.raises(ValueError, match=message):
        trainer.fit(x, labels(y), epochs=1)
    assert trainer.optimizer.steps == 0
    with pytest.raises(ValueError, match=message.replace("y_train", "y_test")):
        trainer.fit(x, y, x, labels(y), epochs=1)


def test_out_of_memory_inside_a_graph_run_names_the_batch_size(monkeypatch):
    class OutOfMemoryError(Exception):  # what CuPy raises, by name
        pass

    trainer = _trainer(batch_size=64)
    op = type(trainer.model.loss)

    def fail(self, *args, **kwargs):
        raise OutOfMemoryError("out of memory allocating 1,073,741,824 bytes")
    monkeypatch.setattr(op, "forward", fail)
    x, y = blobs(N)
    with pytest.raises(OutOfMemory, match=r"batch size 64 .*1,073,741,824 bytes.*smaller batch"):
        trainer.fit(x, y, epochs=1)


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path):
    x, y = blobs(N)
    calls = {"n": 0}

    def ctrl_c_twice(xb):
        calls["n"] += 1
        if calls["n"] == 10:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return xb
    trainer = _trainer(tmp_path, augment=ctrl_c_twice)
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit(x, y, epochs=3)
    assert not isinstance(info.value, TrainingInterrupted)
    assert calls["n"] == 10  # not one batch more
    kept = _trainer()
    kept.load_checkpoint(tmp_path / CHECKPOINT)
    assert (kept.state.epoch, kept.state.sample) == (1, 0)  # the last checkpoint, untouched
