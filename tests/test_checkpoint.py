"""Nothing lost: model save/load, training checkpoints, resume, Ctrl-C, SIGKILL, divergence."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
from graphnet import nn, optim
from graphnet.io import CheckpointError, atomic_write_npz
from graphnet.training import CHECKPOINT, DivergenceError, Trainer, TrainingInterrupted

from helpers import blobs, interrupt_at_batch, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _trainer(tmp_path=None, dropout=0.25, **kw) -> Trainer:
    model = tiny_model(layers=(24, 10), dropout=dropout, seed=5)
    x, _ = blobs(200)
    model.fit_preprocessing(x)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    return Trainer(model, opt, optim.CosineLR(3), batch_size=32, progress=False,
                   checkpoint_dir=tmp_path, **kw)




def _params(trainer):
    return [gn.to_numpy(p.value) for p in trainer.model.parameters()]


def test_model_save_load_roundtrip(backend, tmp_path):
    x, y = blobs(64)
    model = tiny_model(layers=(12, 10))
    model.fit_preprocessing(x)
    model.save(tmp_path / "m.npz")
    loaded = nn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(gn.to_numpy(loaded.predict(x)), gn.to_numpy(model.predict(x)))
    assert loaded.config() == model.config()
    assert backend.is_array(model.mean.value)  # saving left the live model where it was


@pytest.mark.gpu
def test_model_moves_between_backends(tmp_path):
    try:
        gn.get_backend("cupy")
    except gn.BackendUnavailableError as exc:
        pytest.skip(str(exc))
    x, _ = blobs(64)
    with gn.use_backend("cupy"):
        model = tiny_model(layers=(12, 10))
        model.fit_preprocessing(x)
        model.save(tmp_path / "gpu.npz")
        gpu_pred = gn.to_numpy(model.predict(x))
    with gn.use_backend("numpy"):
        cpu_pred = gn.to_numpy(nn.load(tmp_path / "gpu.npz").predict(x))
    np.testing.assert_array_equal(cpu_pred, gpu_pred)


def test_resume_gives_identical_parameters(tmp_path):
    x, y = blobs(200)
    straight = _trainer()
    straight.fit(x, y, epochs=3)

    first = _trainer(tmp_path)
    first.fit(x, y, epochs=1)
    again = _trainer(tmp_path)
    gn.seed(12345)  # a resumed run must not depend on the seed in force
    again.load_checkpoint(tmp_path / CHECKPOINT)
    assert again.state.epoch == 1
    again.fit(x, y, epochs=3)
    for a, b in zip(_params(straight), _params(again)):
        np.testing.assert_array_equal(a, b)
    assert again.history.epoch == [1, 2, 3]


def test_ctrl_c_finishes_batch_saves_and_resumes_exactly(tmp_path):
    x, y = blobs(200)
    straight = _trainer()
    straight.fit(x, y, epochs=2)

    stopped = _trainer(tmp_path, augment=interrupt_at_batch(10))
    with pytest.raises(TrainingInterrupted, match="resume with --resume"):
        stopped.fit(x, y, epochs=2)
    assert stopped.state.epoch == 1 and stopped.state.sample == 3 * 32  # 7 batches per epoch
    resumed = _trainer(tmp_path)
    resumed.load_checkpoint(tmp_path / CHECKPOINT)
    resumed.fit(x, y, epochs=2)
    for a, b in zip(_params(straight), _params(resumed)):
        np.testing.assert_array_equal(a, b)
    assert resumed.history.train_loss == pytest.approx(straight.history.train_loss, rel=1e-6)


def test_divergence_names_epoch_and_batch_and_keeps_checkpoint(tmp_path):
    x, y = blobs(200)
    calls = {"n": 0}

    def poison_batch_3_of_epoch_2(xb):
        calls["n"] += 1
        return xb * np.inf if calls["n"] == 10 else xb

    trainer = _trainer(tmp_path, augment=poison_batch_3_of_epoch_2)
    with pytest.raises(DivergenceError, match=r"epoch 2, batch 3"):
        trainer.fit(x, y, epochs=3)
    check = _trainer()
    check.load_checkpoint(tmp_path / CHECKPOINT)
    assert check.state.epoch == 1
    assert all(np.isfinite(p).all() for p in _params(check))


def test_sigkill_loses_at_most_the_epoch_in_progress(tmp_path):
    """``kill -9`` mid-training: the checkpoint holds every epoch the child reported done,
    loads, and a resumed run finishes the remaining epochs."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        from helpers import blobs, tiny_model
        from graphnet import optim
        from graphnet.training import Trainer
        x, y = blobs(400)
        m = tiny_model(layers=(24, 10))
        m.fit_preprocessing(x)
        def done(t):
            print("done", t.history.epoch[-1], flush=True)
        t = Trainer(m, optim.SGD(m.parameters(), lr=0.05), batch_size=8, progress=False,
                    checkpoint_dir={str(tmp_path)!r}, on_epoch_end=done,
                    augment=lambda xb: (time.sleep(0.002), xb)[1])
        t.fit(x, y, epochs=1000)
    """)
    log = tmp_path / "child.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=out)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and log.read_text().count("done") < 2:
            assert proc.poll() is None, "the child exited early"
            time.sleep(0.05)
        time.sleep(0.1)  # somewhere inside the next epoch (or its checkpoint write)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    reported = [int(line.split()[1]) for line in log.read_text().splitlines()]
    assert len(reported) >= 2, f"the child did not finish two epochs in time: {reported}"
    model = tiny_model(layers=(24, 10))
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.05), batch_size=8, progress=False)
    trainer.load_checkpoint(tmp_path / CHECKPOINT)  # complete and readable
    saved = list(trainer.history.epoch)
    assert saved == list(range(1, len(saved) + 1))
    assert len(saved) >= reported[-1], f"epochs {reported} were reported done, the checkpoint has {saved}"
    assert trainer.state.epoch == len(saved) and trainer.state.sample == 0
    x, y = blobs(400)
    trainer.fit(x, y, epochs=len(saved) + 1)  # resumes: one more epoch, not a restart
    assert trainer.history.epoch == list(range(1, len(saved) + 2))


def _write_model(tmp_path) -> Path:
    model = tiny_model(layers=(12, 10))
    model.save(tmp_path / "m.npz")
    return tmp_path / "m.npz"


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = _write_model(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.npz.*(truncated|corrupted)"):
        nn.load(path)


def test_not_a_graphnet_checkpoint(tmp_path):
    np.savez(tmp_path / "other.npz", w=np.ones(3))
    with pytest.raises(CheckpointError, match="other.npz: not a graphnet checkpoint"):
        nn.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"hello, world")
    with pytest.raises(CheckpointError, match="junk.npz"):
        nn.load(tmp_path / "junk.npz")


def test_pickled_objects_are_never_loaded(tmp_path):
    path = _write_model(tmp_path)
    with zipfile.ZipFile(path, "a") as z:
        with z.open("evil.npy", "w") as f:
            np.lib.format.write_array(f, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="m.npz"):
        nn.load(path)


def test_checkpoint_from_other_architecture(tmp_path):
    path = _write_model(tmp_path)
    model = tiny_model(layers=(20, 10))
    from graphnet.io import read_npz
    arrays, _ = read_npz(path)
    with pytest.raises(CheckpointError, match=r"'net.0.W' has shape \(784, 12\)"):
        model.load_host_arrays(arrays, str(path))
    trainer = _trainer(tmp_path / "t")
    trainer.save_checkpoint()
    wide = tiny_model(layers=(30, 10))
    other = Trainer(wide, optim.SGD(wide.parameters()), progress=False)
    with pytest.raises(CheckpointError, match="different architecture"):
        other.load_checkpoint(tmp_path / "t" / CHECKPOINT)


def test_interrupted_write_leaves_previous_file(tmp_path, monkeypatch):
    path = _write_model(tmp_path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_npz(path, {"a": np.ones(2)}, {})
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_out_of_memory_is_reported_with_batch_size(tmp_path, monkeypatch):
    class OutOfMemoryError(Exception):  # what cupy raises, by name
        pass

    def fail(self, *batch):
        raise OutOfMemoryError("out of memory allocating 1,073,741,824 bytes")
    trainer = _trainer(tmp_path)
    monkeypatch.setattr(Trainer, "_step", fail)
    from graphnet.training import OutOfMemory
    x, y = blobs(64)
    with pytest.raises(OutOfMemory, match=r"batch size 32.*smaller batch size"):
        trainer.fit(x, y, epochs=1)


def test_resume_on_another_training_set_is_refused(tmp_path):
    """A mid-epoch checkpoint's position counts samples of its training set: it must be the same size."""
    x, y = blobs(200)
    with pytest.raises(TrainingInterrupted):
        _trainer(tmp_path, augment=interrupt_at_batch(3)).fit(x, y, epochs=1)
    again = _trainer(tmp_path)
    again.load_checkpoint(tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="epoch of 200 training images, but is resumed on 150"):
        again.fit(x[:150], y[:150], epochs=1)


def test_batches_are_gathered_without_copying_the_data(numpy_backend):
    """Each batch is gathered into arrays reused from step to step: no shuffled data copy."""
    import tracemalloc
    trainer = _trainer()
    X = np.random.default_rng(0).random((20000, 784), dtype=np.float32)  # 63 MB
    Y = np.arange(20000)
    perm = np.random.default_rng(1).permutation(20000)
    trainer._batch(X, Y, perm[:32])  # allocates the buffers
    tracemalloc.start()
    trainer._batch(X, Y, perm[32:64])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 * 784 * 4 // 2, f"one batch allocated {peak} bytes"
    for i in range(0, 20000, 30):  # 666 batches of 30, then one of 20
        xb, yb = trainer._batch(X, Y, perm[i:i + 30])
        np.testing.assert_array_equal(xb, X[perm[i:i + 30]])
        np.testing.assert_array_equal(yb, Y[perm[i:i + 30]])
    assert xb.shape == (20, 784)
