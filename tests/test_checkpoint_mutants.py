"""Mutation survivors of graphnet/training/checkpoint.py: what a checkpoint restores, and the
errors a damaged one gives (each naming the file, the field and what was expected)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

import graphnet as gn
from graphnet import optim
from graphnet.io import CheckpointError, atomic_write_npz, read_npz
from graphnet.testing import assert_close
from graphnet.training import (CHECKPOINT, Trainer, checkpoint_position, resume_model,
                               schedule_from_config)

from helpers import blobs, tiny_model


class UnkeyedSGD(optim.SGD):
    """An optimizer whose step takes no ``rng_key``: dropout draws from the backend's generator."""

    def minimize(self, graph, feed, gradients=None):  # type: ignore[override]
        return super().minimize(graph, feed, gradients=gradients)


def _trainer(tmp_path: Path, schedule: Any = None, dropout: float = 0.0, opt=optim.SGD) -> Trainer:
    model = tiny_model(layers=(8, 10), dropout=dropout, seed=3)
    x, _ = blobs(48)
    model.fit_preprocessing(x)
    return Trainer(model, opt(model.parameters(), lr=0.05, momentum=0.9), schedule,
                   batch_size=16, progress=False, checkpoint_dir=tmp_path)


def _written(tmp_path: Path, schedule: Any = None) -> Path:
    """A checkpoint after one epoch of a small run."""
    x, y = blobs(48)
    _trainer(tmp_path, schedule).fit(x, y, epochs=1)
    return tmp_path / CHECKPOINT


def _rewrite(path: Path, change: Callable[[dict], None]) -> Path:
    arrays, meta = read_npz(path)
    change(meta)
    atomic_write_npz(path, arrays, meta)
    return path


def _load_error(tmp_path: Path, path: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        _trainer(tmp_path / "other").load_checkpoint(path)
    return str(err.value)


# --- what loading restores ----------------------------------------------------------------

def test_loading_replaces_the_trainers_schedule_with_the_saved_one(tmp_path):
    path = _written(tmp_path, optim.StepLR(1, 0.5))
    fresh = _trainer(tmp_path / "other", optim.CosineLR(3))
    fresh.load_checkpoint(path)
    assert fresh.schedule.config() == optim.StepLR(1, 0.5).config()
    assert fresh.current_lr() == pytest.approx(0.05 * 0.5)


def test_a_trainer_with_the_saved_schedule_keeps_its_own_object(tmp_path):
    path = _written(tmp_path, optim.CosineLR(3))
    mine = optim.CosineLR(3)
    fresh = _trainer(tmp_path / "other", mine)
    fresh.load_checkpoint(path)
    assert fresh.schedule is mine


def test_an_unkeyed_optimizer_resumes_its_dropout_draws_exactly(tmp_path, backend):
    x, y = blobs(48)
    straight = _trainer(tmp_path / "a", dropout=0.5, opt=UnkeyedSGD)
    assert not straight.keyed_step
    straight.fit(x, y, epochs=1)
    saved = (tmp_path / "a" / CHECKPOINT).rename(tmp_path / "epoch1.npz")
    straight.fit(x, y, epochs=2)
    resumed = _trainer(tmp_path / "b", dropout=0.5, opt=UnkeyedSGD)
    resumed.load_checkpoint(saved)
    assert resumed.state.epoch == 1
    resumed.fit(x, y, epochs=2)
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        assert_close(p.value, q.value, rtol=0, atol=0, what=p.name)



@pytest.mark.gpu
def test_a_generator_state_saved_by_another_backend_is_left_alone(tmp_path, cupy_backend):
    x, y = blobs(48)
    with gn.use_backend("numpy"):
        _trainer(tmp_path / "a", dropout=0.5, opt=UnkeyedSGD).fit(x, y, epochs=1)
    here = _trainer(tmp_path / "b", dropout=0.5, opt=UnkeyedSGD)
    before = cupy_backend.rng_state()
    here.load_checkpoint(tmp_path / "a" / CHECKPOINT)
    assert cupy_backend.rng_state() == before
    assert here.state.epoch == 1

def test_resume_model_rebuilds_the_saved_architecture(tmp_path):
    path = _written(tmp_path)
    model = resume_model(path)
    assert model.config() == _trainer(tmp_path / "other").model.config()


def test_resume_model_names_the_file_whose_model_cannot_be_rebuilt(tmp_path):
    path = _written(tmp_path)
    run = path.rename(tmp_path / "run.npz")
    _rewrite(run, lambda m: m.update(model={"network": {"type": "nonsense"}}))
    with pytest.raises(CheckpointError, match=f"^{run}: the model config cannot be rebuilt"):
        resume_model(run)


# --- damaged run settings and positions ---------------------------------------------------

def test_a_saved_batch_size_of_zero_is_refused_by_name(tmp_path):
    path = _rewrite(_written(tmp_path), lambda m: m["run"].update(batch_size=0))
    assert "batch_size must be an integer > 0, got 0" in _load_error(tmp_path, path)


def test_a_negative_schedule_start_is_refused_by_name(tmp_path):
    path = _rewrite(_written(tmp_path), lambda m: m["run"].update(schedule_from=-0.5))
    assert "schedule_from must be >= 0, got -0.5" in _load_error(tmp_path, path)


def test_an_unknown_saved_schedule_names_the_file_and_what_to_do(tmp_path):
    path = _rewrite(_written(tmp_path), lambda m: m["run"].update(schedule={"type": "poly"}))
    message = _load_error(tmp_path, path)
    assert message.startswith(f"{path}: unknown schedule {{'type': 'poly'}}; pass the same "
                              "schedule object to the Trainer that wrote it")


@pytest.mark.parametrize("field, value, expected", [
    ("sample", -1, "sample must be >= 0, got -1"),
    ("n", -1, "n must be >= 0, got -1"),
    ("batches_seen", -3, "batches_seen must be >= 0, got -3"),
    ("sample", 49, "position epoch 1, sample 49 of 48"),
])
def test_a_damaged_position_is_refused_naming_the_field(tmp_path, field, value, expected):
    path = _rewrite(_written(tmp_path), lambda m: m["state"].update({field: value}))
    assert expected in _load_error(tmp_path, path)
    with pytest.raises(CheckpointError, match=f"^{path}: malformed checkpoint metadata") as err:
        checkpoint_position(path)
    assert expected in str(err.value)


def test_checkpoint_position_reads_where_the_run_stands(tmp_path):
    assert checkpoint_position(_written(tmp_path)) == (1, 0, 48)


@pytest.mark.parametrize("read", [checkpoint_position,
                                  lambda p: _trainer(p.parent / "t").load_checkpoint(p)],
                         ids=["checkpoint_position", "load_checkpoint"])
def test_a_saved_model_is_refused_as_a_checkpoint_saying_what_it_is(tmp_path, read):
    model = tiny_model(layers=(8, 10))
    model.fit_preprocessing(blobs(16)[0])
    model.save(tmp_path / "m.npz")
    with pytest.raises(CheckpointError,
                       match=f"^{tmp_path / 'm.npz'}: is a saved model, not a training checkpoint$"):
        read(tmp_path / "m.npz")


def test_checkpoint_position_names_the_file_of_a_newer_version(tmp_path):
    path = _rewrite(_written(tmp_path), lambda m: m.update(checkpoint_version=99))
    with pytest.raises(CheckpointError, match=f"^{path}: training checkpoint version 99 is newer"):
        checkpoint_position(path)


# --- schedule_from_config -----------------------------------------------------------------

@pytest.mark.parametrize("schedule", [optim.Schedule(), optim.StepLR(3, 0.25),
                                      optim.CosineLR(7, 0.1, 2)], ids=repr)
def test_schedule_from_config_rebuilds_each_built_in_schedule(schedule):
    rebuilt = schedule_from_config(schedule.config())
    assert type(rebuilt) is type(schedule)
    assert rebuilt.config() == schedule.config()
    for epoch in (0.0, 1.0, 2.5, 6.0, 9.0):
        assert rebuilt(epoch) == schedule(epoch)


@pytest.mark.parametrize("cfg", ["cosine", None, ["type", "step"], {"type": "poly"}, {}])
def test_schedule_from_config_refuses_what_no_schedule_wrote(cfg):
    with pytest.raises(CheckpointError) as err:
        schedule_from_config(cfg, "run.npz")
    assert str(err.value) == (f"run.npz: unknown schedule {cfg!r}; pass the same schedule "
                              "object to the Trainer that wrote it")


def test_schedule_from_config_names_a_bad_field_and_the_default_source():
    cfg = {"type": "step", "step_size": 0, "gamma": 0.5}
    with pytest.raises(CheckpointError) as err:
        schedule_from_config(cfg)
    assert str(err.value).startswith(f"checkpoint: bad schedule {cfg!r}: ")
    assert "step_size" in str(err.value)
    with pytest.raises(CheckpointError, match=r"^run.npz: bad schedule .*'cosine'.*: .*epochs"):
        schedule_from_config({"type": "cosine", "floor": 0.0, "warmup": 0}, "run.npz")


# --- version 1 ----------------------------------------------------------------------------

def _as_version_1(meta: dict) -> None:
    run, state = meta.pop("run"), meta.pop("state")
    for key in ("checkpoint_version", "format", "version"):
        meta.pop(key, None)
    meta.update(base_lr=run["base_lr"], schedule=run["schedule"],
                state={"epoch": state["epoch"], "batch": 0, "loss_sum": 0.0,
                       "batches_seen": state["batches_seen"]})


def test_a_version_1_checkpoint_starts_its_schedule_at_epoch_0(tmp_path):
    path = _rewrite(_written(tmp_path, optim.StepLR(1, 0.5)), _as_version_1)
    assert checkpoint_position(path) == (1, 0, 0)  # version 1 did not record the set's size
    old = _trainer(tmp_path / "other", optim.StepLR(1, 0.5))
    old.load_checkpoint(path)
    assert (old.state.epoch, old.schedule_from) == (1, 0.0)
    assert old.current_lr() == pytest.approx(0.05 * 0.5)


def test_a_malformed_version_1_checkpoint_is_named_as_such(tmp_path):
    path = _rewrite(_written(tmp_path), lambda m: (_as_version_1(m), m.pop("base_lr")))
    assert _load_error(tmp_path, path).startswith(
        f"{path}: malformed version-1 checkpoint (KeyError('base_lr'))")


def test_a_mid_epoch_version_1_checkpoint_is_refused_naming_where_it_stopped(tmp_path):
    def mid_epoch(meta: dict) -> None:
        _as_version_1(meta)
        meta["state"]["batch"] = 2

    path = _rewrite(_written(tmp_path), mid_epoch)
    assert _load_error(tmp_path, path).startswith(
        f"{path}: a version-1 checkpoint written part-way through epoch 2 (batch 2) cannot be "
        "continued exactly")
    assert _load_error(tmp_path, path).endswith(  # what to do instead
        "Resume it with the graphnet that wrote it, or start the run again; version-1 "
        "checkpoints written at the end of an epoch are converted")


# --- found by the 2026-12-07 (session 9) mutation run -------------------------------------
def test_a_keyed_run_leaves_the_backend_generator_alone_on_resume(tmp_path, backend):
    """Keyed steps draw nothing from the backend's generator, so loading does not rewind it."""
    x, y = blobs(48)
    trainer = _trainer(tmp_path / "a")
    assert trainer.keyed_step
    trainer.fit(x, y, epochs=1)
    resumed = _trainer(tmp_path / "b")  # (building the model seeds the generator)
    backend.uniform((5,), "float32")  # the generator moves on from the state saved
    before = backend.rng_state()
    resumed.load_checkpoint(tmp_path / "a" / CHECKPOINT)
    assert backend.rng_state() == before


def test_another_architecture_is_named_both_ways(tmp_path):
    path = _written(tmp_path)
    other = tiny_model(layers=(12, 10), seed=3)
    other.fit_preprocessing(blobs(48)[0])
    trainer = Trainer(other, optim.SGD(other.parameters(), lr=0.05), batch_size=16,
                      progress=False)
    saved = _trainer(tmp_path / "x").model.config()["network"]
    with pytest.raises(CheckpointError) as err:
        trainer.load_checkpoint(path)
    assert str(err.value) == (f"{path}: was written for a different architecture: "
                              f"{saved} vs {other.config()['network']}")
    assert saved != other.config()["network"]


def _rewrite_arrays(path: Path, change: Callable[[dict], None]) -> Path:
    arrays, meta = read_npz(path)
    change(arrays)
    atomic_write_npz(path, arrays, meta)
    return path


def test_a_model_array_that_does_not_fit_names_the_file(tmp_path):
    path = _written(tmp_path)

    def shrink(arrays):
        key = next(k for k in arrays if k.startswith("model/"))
        arrays[key] = arrays[key][..., :1]
    _rewrite_arrays(path, shrink)
    assert _load_error(tmp_path, path).startswith(f"{path}")


def test_an_optimizer_state_that_does_not_fit_names_the_file(tmp_path):
    path = _written(tmp_path)

    def shrink(arrays):
        arrays["optim/velocity.0"] = arrays["optim/velocity.0"][..., :1]
    _rewrite_arrays(path, shrink)
    assert _load_error(tmp_path, path).startswith(f"{path}: optimizer state does not fit: "
                                                  "optimizer slot velocity.0 has shape ")


def test_a_version_1_checkpoint_resumes_from_a_fresh_epoch_and_its_own_generator_state(tmp_path,
                                                                                        backend):
    """Converted at an epoch's end: no loss summed yet, and the generator state it carried
    (written for version 1's draws) is not restored."""
    x, y = blobs(48)
    _trainer(tmp_path / "a", dropout=0.5, opt=UnkeyedSGD).fit(x, y, epochs=1)
    path = _rewrite(tmp_path / "a" / CHECKPOINT, _as_version_1)
    assert read_npz(path)[1].get("rng")  # the state is in the file
    resumed = _trainer(tmp_path / "b", dropout=0.5, opt=UnkeyedSGD)
    backend.uniform((5,), "float32")
    before = backend.rng_state()
    resumed.load_checkpoint(path)
    assert resumed.state.loss_sum == 0.0 and resumed.state.sample == 0
    assert backend.rng_state() == before
