"""README promises about checkpoints, observed with real crash points: written atomically
(temporary file, fsync, rename), at the end of every epoch, read without pickle, and a
newer format refused."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from graphnet import io, nn, optim
from graphnet.io import CheckpointError, atomic_write_npz, read_npz
from graphnet.training import CHECKPOINT, Trainer

from helpers import blobs, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to name descriptors")
def test_the_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", _fd_path(fd)))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "ck.npz"
    atomic_write_npz(target, {"w": np.arange(5.0)}, {"kind": "test"})
    renames = [e for e in events if e[0] == "replace"]
    assert len(renames) == 1 and renames[0][2] == str(target), events
    tmp = renames[0][1]
    assert Path(tmp).parent == tmp_path and tmp != str(target)
    synced = [i for i, e in enumerate(events) if e == ("fsync", tmp)]
    assert synced and synced[0] < events.index(renames[0]), \
        f"the temporary file must be fsynced before it is renamed: {events}"
    assert ("fsync", str(tmp_path)) in events[events.index(renames[0]):], \
        "the directory must be fsynced after the rename"


def test_a_failing_fsync_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ck.npz"
    atomic_write_npz(target, {"w": np.zeros(3)}, {"kind": "old"})

    def broken(fd):
        raise OSError("fsync failed: I/O error")
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="fsync failed"):
        atomic_write_npz(target, {"w": np.ones(3)}, {"kind": "new"})
    monkeypatch.undo()
    arrays, meta = read_npz(target)
    assert meta["kind"] == "old" and (arrays["w"] == 0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]  # no temporary left


def test_a_process_killed_mid_write_leaves_the_old_checkpoint(tmp_path):
    """A real crash: the writing process is SIGKILLed after part of the new file is written."""
    target = tmp_path / "ck.npz"
    old = np.arange(1000.0)
    atomic_write_npz(target, {"w": old}, {"kind": "old"})
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        from graphnet.io import atomic_write_npz
        real = np.lib.format.write_array
        count = [0]
        def write_array(*a, **k):
            count[0] += 1
            if count[0] == 2:  # the first array is written, the second not yet
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        np.lib.format.write_array = write_array
        atomic_write_npz({str(target)!r}, {{"w": np.ones(200000), "v": np.ones(10)}},
                         {{"kind": "new"}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    arrays, meta = read_npz(target)
    assert meta["kind"] == "old"
    np.testing.assert_array_equal(arrays["w"], old)


def test_a_failing_rename_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ck.npz"
    atomic_write_npz(target, {"w": np.zeros(3)}, {"kind": "old"})

    def crash(src, dst):
        raise OSError("crash before the rename")
    monkeypatch.setattr(os, "replace", crash)
    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="crash"):
        atomic_write_npz(target, {"w": np.ones(3)}, {"kind": "new"})
    monkeypatch.undo()
    assert read_npz(target)[1]["kind"] == "old"


def test_a_checkpoint_is_written_at_the_end_of_every_epoch(tmp_path):
    x, y = blobs(96)
    seen = []

    def after_epoch(trainer):
        _, meta = read_npz(tmp_path / CHECKPOINT)
        seen.append(meta["history"]["epoch"])

    model = tiny_model(layers=(12, 10))
    model.fit_preprocessing(x)
    Trainer(model, optim.SGD(model.parameters(), lr=0.05), batch_size=32, progress=False,
            checkpoint_dir=tmp_path, on_epoch_end=after_epoch).fit(x, y, epochs=4)
    assert seen == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]


# --- reading ----------------------------------------------------------------------------
class _Trap:
    """Unpickling this creates ``path``: proof that something in the file was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _add_member(path: Path, name: str, array: np.ndarray) -> None:
    with zipfile.ZipFile(path, "a") as z:
        with z.open(name, "w") as f:
            np.lib.format.write_array(f, array, allow_pickle=True)


def test_the_loader_itself_refuses_pickled_objects(tmp_path):
    marker = tmp_path / "executed"
    gn_model = tiny_model(layers=(12, 10))
    gn_model.save(tmp_path / "m.npz")
    _add_member(tmp_path / "m.npz", "extra.npy", np.array([_Trap(str(marker))], dtype=object))
    for load in (read_npz, nn.load):
        with pytest.raises(CheckpointError, match=r"m\.npz.*pickle"):
            load(tmp_path / "m.npz")
    assert not marker.exists(), "a pickle in the checkpoint was executed"


def test_a_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "new.npz"
    atomic_write_npz(path, {"w": np.ones(2)}, {"version": io.VERSION + 1})
    with pytest.raises(CheckpointError, match=rf"new\.npz.*version {io.VERSION + 1}.*newer"):
        read_npz(path)
    atomic_write_npz(path, {"w": np.ones(2)}, {"version": io.VERSION})
    assert read_npz(path)[1]["version"] == io.VERSION


def test_a_file_of_another_format_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    atomic_write_npz(path, {"w": np.ones(2)}, {"format": "something-else"})
    with pytest.raises(CheckpointError, match="other.npz: not a graphnet checkpoint"):
        read_npz(path)
