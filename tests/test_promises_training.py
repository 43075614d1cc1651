"""README promises about training, each observed from outside the Trainer: Ctrl-C keeps the
current position, a second Ctrl-C stops at once, data reshuffled every epoch, schedules
stepped per batch with their warm-up, ``evaluate`` against NumPy, dropout really there."""
from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, optim
from graphnet.training import CHECKPOINT, Trainer, TrainingInterrupted

import numpy_reference as ref
from helpers import blobs, tiny_model

N, BATCH = 200, 32  # 7 batches per epoch (the last one of 8)
BATCHES = math.ceil(N / BATCH)


def _trainer(tmp_path=None, schedule=None, **kw) -> Trainer:
    model = tiny_model(layers=(24, 10), seed=5)
    model.fit_preprocessing(blobs(N)[0])
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Trainer(model, opt, schedule, batch_size=BATCH, progress=False,
                   checkpoint_dir=tmp_path, **kw)


class Recorder:
    """An ``augment`` hook that records each batch and can send SIGINT at given batches."""

    def __init__(self, sigint_at=(), times: int = 1) -> None:
        self.batches: list[np.ndarray] = []
        self.sigint_at, self.times = set(sigint_at), times

    def __call__(self, xb):
        self.batches.append(gn.to_numpy(xb).copy())
        if len(self.batches) in self.sigint_at:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)
        return xb


def _count_steps(trainer: Trainer) -> list:
    """Wrap the optimizer's ``minimize`` to log the learning rate of every step taken."""
    lrs, inner = [], trainer.optimizer.minimize

    def minimize(*a, **k):
        lrs.append(trainer.optimizer.lr)
        return inner(*a, **k)
    trainer.optimizer.minimize = minimize
    return lrs


# --- Ctrl-C ----------------------------------------------------------------------------
def test_ctrl_c_saves_the_current_position_and_resume_continues_from_it(tmp_path):
    x, y = blobs(N)
    stopped = _trainer(tmp_path, augment=Recorder(sigint_at={BATCHES + 3}))
    with pytest.raises(TrainingInterrupted):
        stopped.fit(x, y, epochs=2)
    resumed = _trainer(tmp_path)
    resumed.load_checkpoint(tmp_path / CHECKPOINT)
    assert resumed.history.epoch == [1]
    steps = _count_steps(resumed)
    resumed.fit(x, y, epochs=2)
    # 3 batches of epoch 2 were done before Ctrl-C: only the remaining ones run again
    assert len(steps) == BATCHES - 3, f"resumed run took {len(steps)} steps, not {BATCHES - 3}"
    assert resumed.history.epoch == [1, 2]


def test_second_ctrl_c_stops_at_once(tmp_path):
    x, y = blobs(N)
    trainer = _trainer(tmp_path, augment=Recorder(sigint_at={3}, times=2))
    steps = _count_steps(trainer)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit(x, y, epochs=2)
    assert not isinstance(info.value, TrainingInterrupted), "the second Ctrl-C waited for the batch"
    assert len(steps) == 2, f"{len(steps)} steps ran: the third batch should not have finished"
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


# --- shuffling -----------------------------------------------------------------------------
def test_data_is_reshuffled_every_epoch():
    x, y = blobs(N)
    rec = Recorder()
    trainer = _trainer(augment=rec)
    trainer.fit(x, y, epochs=3)
    rows = {r.tobytes(): i for i, r in enumerate(gn.to_numpy(trainer.model.prepare(x)))}
    assert len(rows) == N
    seen = np.array([rows[r.tobytes()] for b in rec.batches for r in b]).reshape(3, N)
    for epoch in seen:
        assert sorted(epoch) == list(range(N)), "an epoch must visit every image exactly once"
        assert (epoch != np.arange(N)).mean() > 0.9, "the epoch is not shuffled"
    assert (seen[0] != seen[1]).mean() > 0.9 and (seen[1] != seen[2]).mean() > 0.9, \
        "every epoch must have its own order"


# --- schedules -------------------------------------------------------------------------
def test_cosine_schedule_is_stepped_every_batch():
    x, y = blobs(N)
    trainer = _trainer(schedule=optim.CosineLR(2))
    lrs = _count_steps(trainer)
    trainer.fit(x, y, epochs=2)
    lrs = np.array(lrs).reshape(2, BATCHES) / 0.05
    assert lrs[0, 0] == pytest.approx(1.0)
    assert (np.diff(lrs.ravel()) < 0).all(), f"the rate must fall at every batch: {lrs}"
    # each step's rate lies on the half cosine between the ends of its epoch
    assert lrs[0].min() >= 0.5 - 1e-9 and lrs[1].max() <= 0.5 + 1e-9


def test_cosine_warmup_rises_then_follows_the_cosine():
    s = optim.CosineLR(10, warmup=2)  # values from the formulas, written out here
    assert s(0.5) == pytest.approx(0.5 / 2, abs=2e-3)
    assert s(1.0) == pytest.approx(1.0 / 2, abs=2e-3)
    assert s(2.0) == pytest.approx(1.0)
    assert s(6.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert s(10.0) == pytest.approx(0.0, abs=1e-12)
    x, y = blobs(N)
    trainer = _trainer(schedule=optim.CosineLR(3, warmup=1))
    lrs = _count_steps(trainer)
    trainer.fit(x, y, epochs=2)
    lrs = np.array(lrs).reshape(2, BATCHES) / 0.05
    assert lrs[0, 0] < 0.05 and (np.diff(lrs[0]) > 0).all(), f"no warm-up: {lrs[0]}"
    assert lrs[1, 0] == pytest.approx(1.0) and (np.diff(lrs[1]) < 0).all()


def test_step_schedule_changes_at_its_epoch():
    x, y = blobs(N)
    trainer = _trainer(schedule=optim.StepLR(1, 0.5))
    lrs = _count_steps(trainer)
    trainer.fit(x, y, epochs=2)
    np.testing.assert_allclose(np.array(lrs) / 0.05, [1.0] * BATCHES + [0.5] * BATCHES)


# --- evaluate ---------------------------------------------------------------------------
def test_evaluate_is_mean_cross_entropy_and_accuracy_from_numpy(backend):
    x, y = blobs(300, seed=3)
    model = tiny_model(layers=(16, 10), seed=1)
    model.fit_preprocessing(x[:200])
    params = [gn.to_numpy(p.value).astype(np.float64) for p in model.parameters()]
    xr = x.reshape(300, -1).astype(np.float64) / 255
    xr -= xr[:200].mean(axis=0)
    logits, _ = ref.mlp_forward(params, xr)
    got = model.evaluate(x, y, batch_size=128)  # batches of unequal size
    assert got["loss"] == pytest.approx(ref.cross_entropy(logits, y), rel=1e-4)
    assert got["accuracy"] == pytest.approx(float((logits.argmax(1) == y).mean()))


# --- dropout --------------------------------------------------------------------------
def test_mlp_dropout_builds_dropout_layers_that_act_in_training():
    net = nn.MLP([32, 16, 10], 784, "tanh", dropout=0.5)
    drops = [layer for layer in net.layers if isinstance(layer, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.5 for d in drops)
    x, y = blobs(64)
    model = tiny_model(layers=(32, 16, 10), dropout=0.5)
    model.fit_preprocessing(x)
    feed = {model.images: model.prepare(x), model.labels: gn.asarray(y)}
    costs = {float(model.train_graph.gradients(feed, return_cost=True)[0]) for _ in range(4)}
    assert len(costs) == 4, "training runs with dropout 0.5 gave repeated losses"
    evals = {float(model.eval_graph.values(feed, [model.loss])[0]) for _ in range(3)}
    assert len(evals) == 1
    plain = tiny_model(layers=(32, 16, 10), dropout=0.0)
    for a, b in zip(plain.parameters(), model.parameters()):
        b.value = a.value  # same weights: evaluation must agree exactly, training must not
    plain.mean.value = model.mean.value
    plain_feed = {plain.images: feed[model.images], plain.labels: feed[model.labels]}
    assert float(plain.eval_graph.values(plain_feed, [plain.loss])[0]) == evals.pop()


# --- memory ---------------------------------------------------------------------------
def test_a_training_step_allocates_almost_nothing(numpy_backend):
    """README: activations and gradients live in arrays reused from step to step."""
    import tracemalloc
    x, y = blobs(64)
    model = tiny_model(layers=(64, 10))
    model.fit_preprocessing(x)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    feed = {model.images: model.prepare(x[:32]), model.labels: gn.asarray(y[:32])}
    last_layer_only = optim.SGD(model.parameters()[2:], lr=0.05)  # fine-tuning the head
    first_weight = 784 * 64 * 4  # bytes of the first weight matrix's gradient (float32)
    for o in (opt, last_layer_only):
        for _ in range(3):
            o.minimize(model.train_graph, feed)  # buffers and plans settle
        tracemalloc.start()
        o.minimize(model.train_graph, feed)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < first_weight // 4, f"one step allocated {peak} bytes"
