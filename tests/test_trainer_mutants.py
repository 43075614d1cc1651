"""Mutation survivors of graphnet/training/trainer.py: replan's checks and its notes, the
learning rate it reports, the curve points, and what an interruption or a divergence says."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from graphnet import optim
from graphnet.errors import ArgumentTypeError
from graphnet.training import CHECKPOINT, DivergenceError, Trainer, TrainingInterrupted, fit
from graphnet.training.strategy import SingleProcess

from helpers import blobs, interrupt_at_batch, tiny_model

N, BATCH, LR = 48, 16, 0.05


def _trainer(checkpoint_dir: Any = None, schedule: Any = None, **kw: Any) -> Trainer:
    model = tiny_model(layers=(8, 10), seed=3)
    model.fit_preprocessing(blobs(N)[0])
    return Trainer(model, optim.SGD(model.parameters(), lr=LR), schedule, batch_size=BATCH,
                   progress=False, checkpoint_dir=checkpoint_dir, **kw)


def _stopped_after_one_batch(checkpoint_dir: Any = None) -> Trainer:
    """A trainer stopped by Ctrl-C after the first batch of epoch 2."""
    x, y = blobs(N)
    t = _trainer(checkpoint_dir)
    t.fit(x, y, epochs=1)
    t.augment = interrupt_at_batch(1)
    with pytest.raises(TrainingInterrupted):
        t.fit(x, y, epochs=2)
    return t


# --- replan -------------------------------------------------------------------------------

def test_replan_names_the_position_of_a_fresh_run_without_a_data_size():
    t = _trainer()
    assert t.replan(batch_size=8) == ["batch size 16 -> 8 from epoch 1, sample 0"]
    assert t.batch_size == 8


def test_replan_names_the_position_part_way_through_an_epoch():
    t = _stopped_after_one_batch()
    assert t.replan(batch_size=32) == ["batch size 16 -> 32 from epoch 2, sample 16 of 48"]


def test_replan_of_the_batch_size_alone_keeps_the_learning_rate_plan():
    t = _trainer(schedule=optim.StepLR(1, 0.5))
    t.replan(batch_size=BATCH)  # the same size: nothing to note
    assert t.replan(batch_size=BATCH) == []
    t.state.epoch = 1
    assert len(t.replan(batch_size=8)) == 1
    assert (t.base_lr, t.schedule_from) == (LR, 0.0)
    assert t.current_lr() == pytest.approx(LR * 0.5)


def test_replan_of_the_rate_alone_keeps_the_batch_size_and_schedule():
    t = _trainer(schedule=optim.StepLR(1, 0.5))
    t.state.epoch = 2
    notes = t.replan(lr=0.2)
    assert len(notes) == 1 and notes[0].startswith("learning rate re-planned from epoch 3")
    assert (t.batch_size, t.base_lr, t.schedule_from) == (BATCH, 0.2, 2.0)
    assert t.current_lr() == pytest.approx(0.2)


def test_replan_of_the_schedule_alone_keeps_the_base_rate():
    t = _trainer()
    t.state.epoch = 1
    notes = t.replan(schedule=optim.StepLR(3, 0.25))
    assert notes == ["learning rate re-planned from epoch 2, sample 0 (after 1 epochs): "
                     "0.05 x x0.25 every 3 epochs from here (the rate there was 0.05)"]
    assert (t.base_lr, t.schedule_from) == (LR, 1.0)


def test_replan_refuses_a_bad_batch_size_by_name():
    with pytest.raises(ValueError, match="batch_size must be an integer > 0, got 0"):
        _trainer().replan(batch_size=0)


@pytest.mark.parametrize("lr", [0, 0.0, -1, math.inf, math.nan, "0.1", [0.1]])
def test_replan_refuses_a_rate_that_is_not_a_finite_positive_number(lr):
    t = _trainer()
    with pytest.raises(ValueError) as err:
        t.replan(lr=lr)
    assert str(err.value) == f"lr must be a finite number > 0, got {lr!r}"
    assert t.base_lr == LR


@pytest.mark.parametrize("schedule, words", [
    (optim.CosineLR(7, 0.1, 2), "cosine to 0.1 over 7 epochs"),
    (optim.StepLR(3, 0.25), "x0.25 every 3 epochs"),
    (optim.Schedule(), "constant"),
])
def test_replan_describes_each_built_in_schedule(schedule, words):
    notes = _trainer(schedule=optim.StepLR(9)).replan(schedule=schedule)
    assert notes == [f"learning rate re-planned from epoch 1, sample 0 (after 0 epochs): "
                     f"0.05 x {words} from here (the rate there was 0.05)"]


def test_replan_describes_a_schedule_of_its_own_by_its_config():
    class Halving(optim.Schedule):
        def __call__(self, epoch: float) -> float:
            return 0.5 ** epoch

        def config(self) -> dict:
            return {"type": "halving"}

    notes = _trainer().replan(schedule=Halving())
    assert notes[0].endswith("0.05 x {'type': 'halving'} from here (the rate there was 0.05)")


# --- the learning rate --------------------------------------------------------------------

def test_current_lr_is_the_base_rate_times_the_schedule_since_its_start():
    x, y = blobs(N)
    t = _trainer(schedule=optim.StepLR(1, 0.5))
    assert t.current_lr() == pytest.approx(LR)  # before any step: schedule(0)
    t.fit(x, y, epochs=1)
    assert t.current_lr() == pytest.approx(LR * 0.5)
    t.replan(lr=0.2)  # a new segment from epoch 1: schedule(0) again
    assert t.current_lr() == pytest.approx(0.2)
    t.fit(x, y, epochs=2)
    assert t.current_lr() == pytest.approx(0.1)
    assert t.history.lr == pytest.approx([LR, 0.2])


# --- the learning curve -------------------------------------------------------------------

def test_curve_points_are_the_models_metrics_at_that_batch():
    x, y = blobs(N)
    xt, yt = blobs(24, seed=1)
    t = _trainer(eval_every=N // BATCH, curve_subset=20)
    h = t.fit(x, y, xt, yt, epochs=1)  # one point, after the epoch's last step
    m = t.model
    train, test = m.evaluate(x[:20], y[:20]), m.evaluate(xt[:20], yt[:20])
    assert h.curve_batches == [N // BATCH]
    assert h.curve_train_accuracy == pytest.approx([train["accuracy"]])
    assert h.curve_train_loss == pytest.approx([train["loss"]])
    assert h.curve_test_accuracy == pytest.approx([test["accuracy"]])
    assert h.curve_test_loss == pytest.approx([test["loss"]])


# --- interruptions and divergence ---------------------------------------------------------

def test_ctrl_c_without_a_checkpoint_directory_saves_nothing_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = blobs(N)
    t = _trainer(augment=interrupt_at_batch(2))
    with pytest.raises(TrainingInterrupted) as err:
        t.fit(x, y, epochs=1)
    assert str(err.value) == ("interrupted at epoch 1, sample 32 of 48 "
                              "(no checkpoint directory, nothing saved)")
    assert err.value.checkpoint is None
    assert list(Path(tmp_path).iterdir()) == []


def test_ctrl_c_names_the_checkpoint_it_saved_and_how_to_resume(tmp_path):
    t = _trainer(tmp_path)
    x, y = blobs(N)
    t.fit(x, y, epochs=1)
    t.augment = interrupt_at_batch(1)
    with pytest.raises(TrainingInterrupted) as err:
        t.fit(x, y, epochs=2)
    path = tmp_path / CHECKPOINT
    assert err.value.checkpoint == path
    assert str(err.value) == (f"interrupted at epoch 2, sample 16 of 48; saved {path}: "
                              f"resume with --resume {tmp_path}")


def _poisoned(xb):
    return xb * np.inf


@pytest.mark.parametrize("with_dir", [True, False])
def test_divergence_mentions_the_kept_checkpoint_only_when_there_is_one(tmp_path, with_dir):
    x, y = blobs(N)
    t = _trainer(tmp_path if with_dir else None, augment=_poisoned)
    with pytest.raises(DivergenceError) as err:
        t.fit(x, y, epochs=1)
    message = str(err.value)
    assert "at epoch 1, batch 1 (samples 0-15) (lr=0.05); lower the learning rate" in message
    kept = f"; the last good checkpoint ({tmp_path / CHECKPOINT}) is untouched"
    assert message.endswith(kept if with_dir else "lower the learning rate")


# --- fit ----------------------------------------------------------------------------------

def test_fit_trains_ten_epochs_by_default():
    model = tiny_model(layers=(4, 10), seed=3)
    x, y = blobs(8)
    model.fit_preprocessing(x)
    h = fit(model, optim.SGD(model.parameters(), lr=LR), x, y, batch_size=8, progress=False)
    assert h.epoch == list(range(1, 11))


# --- construction, settings history, where checkpoints go ----------------------------------

class _Partial:
    """A strategy with a plain ``writes`` flag whose ``step`` is not callable."""

    writes = True
    step = 3

    def attach(self, trainer): ...
    def sampler(self, batch_size): ...
    def evaluate(self, model, x, y): ...
    def end_epoch(self, model): ...


def test_a_strategy_is_refused_naming_exactly_what_it_lacks():
    with pytest.raises(TypeError, match=r"got _Partial, which lacks step$"):
        _trainer(strategy=_Partial())
    ok = _Partial()
    ok.step = lambda *a: None
    assert _trainer(strategy=ok).strategy is ok


@pytest.mark.parametrize("kw, message", [
    ({"batch_size": 0}, "batch_size must be an integer > 0, got 0"),
    ({"curve_subset": 0}, "curve_subset must be an integer > 0, got 0"),
    ({"optimizer": None}, "optimizer: expected a graphnet.optim.Optimizer"),
])
def test_trainer_settings_are_refused_by_name(kw, message):
    model = tiny_model(layers=(4, 10))
    args = {"optimizer": optim.SGD(model.parameters(), lr=LR), **kw}
    with pytest.raises(ValueError, match=message):
        Trainer(model, **args)


def test_a_model_without_the_training_members_is_refused_naming_them():
    with pytest.raises(TypeError, match=r"model: expected a TrainableModel .* got object, which "
                                        r"lacks .*train_graph"):
        Trainer(object(), optim.SGD(tiny_model(layers=(4, 10)).parameters(), lr=LR))


def test_augment_gets_the_key_when_it_takes_one():
    calls: list = []
    x, y = blobs(N)
    for hook, keyed in ((lambda xb: calls.append("plain") or xb, False),
                        (lambda xb, rng_key: calls.append(rng_key) or xb, True),
                        (lambda xb, **kw: calls.append(kw["rng_key"]) or xb, True)):
        calls.clear()
        t = _trainer(augment=hook, seed=4)
        t.fit(x, y, epochs=1)
        assert calls == ([(4, 0, 0), (4, 0, 16), (4, 0, 32)] if keyed else ["plain"] * 3)


def test_segments_record_each_change_of_settings_once():
    x, y = blobs(N)
    t = _trainer()
    t.fit(x, y, epochs=1)
    t.fit(x, y, epochs=2)  # nothing changed: no new segment
    assert [s["from_epoch"] for s in t.history.segments] == [0.0]
    t.replan(batch_size=8)
    t.replan(lr=0.2)  # at the same position: replaces the one before
    t.fit(x, y, epochs=3)
    segs = t.history.segments
    assert segs[0] == {"from_epoch": 0.0, "batch_size": BATCH, "lr": LR,
                       "schedule": optim.Schedule().config(), "schedule_from": 0.0}
    assert segs[1:] == [{"from_epoch": 2.0, "batch_size": 8, "lr": 0.2,
                         "schedule": optim.Schedule().config(), "schedule_from": 2.0}]


def test_save_checkpoint_writes_where_asked_and_only_from_the_writing_process(tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = _trainer()
    assert t.save_checkpoint() == Path(CHECKPOINT) and Path(CHECKPOINT).is_file()
    assert t.save_checkpoint(tmp_path / "x.npz") == tmp_path / "x.npz"
    t = _trainer(tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    t.strategy.writes = False  # e.g. rank 1 of a data-parallel run
    assert t.save_checkpoint() == tmp_path / "runs" / CHECKPOINT
    assert not (tmp_path / "runs" / CHECKPOINT).exists()


class _Unreadable:
    """A callable whose signature Python cannot read (as some C extensions' are)."""

    __signature__ = "not a signature"

    def __call__(self, xb, *args, **kw):
        if args or kw:
            raise TypeError("this augment takes the batch only")
        return xb


def test_an_augment_with_an_unreadable_signature_gets_the_batch_only():
    x, y = blobs(N)
    t = _trainer(augment=_Unreadable())
    assert t.fit(x, y, epochs=1).epoch == [1]


# --- found by the 2026-12-07 (session 9) mutation run -------------------------------------
def test_the_documented_defaults():
    model = tiny_model(layers=(8, 10), seed=3)
    t = Trainer(model, optim.SGD(model.parameters(), lr=LR))
    assert (t.batch_size, t.eval_every, t.checkpoint_dir, t.progress, t.eval_subset,
            t.curve_subset, t.check_every) == (128, None, None, True, 10000, 2000, 25)


class _RecordingStrategy(SingleProcess):
    def attach(self, trainer: Any) -> None:
        self.attached = trainer
        super().attach(trainer)


class _FakeWorld:
    """What ``Trainer(distributed=...)`` needs of a World: ``data_parallel()``."""

    def __init__(self) -> None:
        self.made = _RecordingStrategy()

    def data_parallel(self) -> Any:
        return self.made


def test_the_strategy_is_attached_to_its_trainer():
    strategy = _RecordingStrategy()
    t = _trainer(strategy=strategy)
    assert t.strategy is strategy and strategy.attached is t


def test_distributed_world_is_deprecated_for_its_data_parallel_strategy():
    model = tiny_model(layers=(8, 10), seed=3)
    world = _FakeWorld()
    with pytest.warns(DeprecationWarning) as caught:
        t = Trainer(model, optim.SGD(model.parameters(), lr=LR), distributed=world)
    assert [str(w.message) for w in caught] == [
        "Trainer(distributed=world) is deprecated: pass "
        "strategy=graphnet.distributed.DataParallel(world)"]
    assert t.strategy is world.made and world.made.attached is t
    mine = _RecordingStrategy()
    with pytest.warns(DeprecationWarning):
        t = Trainer(model, optim.SGD(model.parameters(), lr=LR), distributed=_FakeWorld(),
                    strategy=mine)
    assert t.strategy is mine  # an explicit strategy wins


def test_a_world_without_data_parallel_is_named_by_its_type():
    model = tiny_model(layers=(8, 10), seed=3)
    with pytest.warns(DeprecationWarning), pytest.raises(
            ArgumentTypeError, match=r"^distributed: expected a graphnet.distributed.World, "
                                     r"got int$"):
        Trainer(model, optim.SGD(model.parameters(), lr=LR), distributed=3)


def test_a_model_lacking_members_is_told_which_comma_separated():
    with pytest.raises(TypeError, match=r"got object, which lacks backend, train_graph, inputs,"):
        Trainer(object(), optim.SGD(tiny_model(layers=(8, 10)).parameters(), lr=LR))


def test_a_larger_batch_after_replan_gets_larger_buffers():
    x, y = blobs(N)
    t = _trainer()
    t.fit(x, y, epochs=1)
    t.replan(batch_size=2 * BATCH)
    t.fit(x, y, epochs=2)
    assert t.history.epoch == [1, 2] and t.state.batches_seen == 3 + 2  # 48 in 16s, then in 32 + 16
    assert t._buffers[0].shape[0] >= 2 * BATCH


def test_an_epochs_training_accuracy_is_the_models_on_the_first_eval_subset_images():
    x, y = blobs(N)
    t = _trainer(eval_subset=20)
    t.fit(x, y, epochs=1)
    assert t.history.train_accuracy == [t.model.evaluate(x[:20], y[:20])["accuracy"]]
