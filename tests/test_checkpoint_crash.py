"""Checkpoints survive kills, full disks, NaN and garbage: a save is one atomic unit, resume verifies what it
loads and falls back to the newest complete checkpoint with a message, and nothing partial is left behind.

A tiny fake system (a few numpy arrays) drives the real Trainer save/restore; each step has its own array
values, so a mix of two checkpoints (arrays of one, metadata of another) cannot pass unnoticed."""
import contextlib
import errno
import subprocess
import json
import os
import shutil

import numpy as np
import pytest

import launch
from mindspore_impl.core import checkpoint as ckpt_mod
from mindspore_impl.core import train_state
from mindspore_impl.core.checkpoint import (CheckpointError, CheckpointWriteError, IncompleteCheckpointError,
                                            NonFiniteCheckpointError, save_params)
from mindspore_impl.core.train_state import load_training_state, resolve_resume, save_training_state
from mindspore_impl.core.trainer import Trainer
from mindspore_impl.core.trial import Trial


def _arrays(step):
    rng = np.random.default_rng(step)
    return {"model.w": rng.standard_normal((3, 4)).astype(np.float32),
            "model.h": rng.standard_normal(5).astype(np.float16),
            "optimizer.exp_avg.w": rng.standard_normal((3, 4)).astype(np.float32),
            "optimizer.optimizer_step": np.array(step, np.int32)}


class FakeSystem:
    optimizer = "configured"

    def __init__(self):
        self.arrays, self.step = _arrays(0), 0

    def set_step(self, step):
        self.step = step

    def state_dict(self):
        return {k: v.copy() for k, v in self.arrays.items()}, {"note": "fake", "step_seen": self.step}

    def load_state_dict(self, arrays, meta):
        self.arrays = {k: np.array(v) for k, v in arrays.items()}


class FakeData:
    pass


def _trainer(root, top_k=-1, save_last=True, log=None):
    return Trainer(FakeSystem(), FakeData(), Trial(str(root)), {"enable_progress_bar": False},
                   {"every_n_train_steps": 5, "save_top_k": top_k, "save_last": save_last},
                   log=log if log is not None else (lambda msg: None))


def _save(trainer, step, name=None, arrays=None):
    trainer.global_step = step
    trainer.system.arrays = arrays if arrays is not None else _arrays(step)
    return trainer.save_checkpoint(name)


def _restore(path, tmp_path, tag="resume"):
    messages = []
    t = _trainer(tmp_path / tag, log=messages.append)
    t.restore(str(path))
    assert messages[-1] == f"resumed from {t.resumed_from} at step {t.global_step}"
    return t, messages[:-1]  # what was said besides


def _assert_is_step(t, step):
    """The restored state is exactly checkpoint `step`: every array bit-identical, the step its own."""
    assert t.global_step == step
    want = _arrays(step)
    assert sorted(t.system.arrays) == sorted(want)
    for k in want:
        assert t.system.arrays[k].dtype == want[k].dtype, k
        assert np.array_equal(t.system.arrays[k], want[k]), f"{k} is not the step-{step} array: a mixed checkpoint"


def _temps(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith(".tmp_"))


# ----- kill between every pair of file operations

class Killed(BaseException):
    """The process died: nothing after it runs, not even cleanup."""


@contextlib.contextmanager
def _kill_at(monkeypatch, k):
    """Count the file operations of a save; the k-th one (and everything after it) dies.

    Writes die halfway, leaving a partial file as a real kill would."""
    state = {"n": 0, "dead": False}

    def check():
        if state["dead"]:
            raise Killed()
        state["n"] += 1
        if state["n"] == k:
            state["dead"] = True
            return True
        return False

    def plain(fn):
        def wrapped(*a, **kw):
            if check():
                raise Killed()
            return fn(*a, **kw)
        return wrapped

    real_write_bytes, real_ms_write = train_state._write_bytes, ckpt_mod._write_ms_ckpt

    def write_bytes(path, data):
        if check():
            with open(path, "wb") as f:
                f.write(data[:len(data) // 2])
            raise Killed()
        return real_write_bytes(path, data)

    def ms_write(state_, tmp):
        if check():
            with open(os.path.splitext(tmp)[0] + ".tmp", "wb") as f:  # MindSpore's own partial temp
                f.write(b"\x0a\x05partial")
            raise Killed()
        return real_ms_write(state_, tmp)

    with monkeypatch.context() as m:
        for name in ("replace", "rename", "remove", "unlink", "link", "fsync"):
            m.setattr(os, name, plain(getattr(os, name)))
        m.setattr(shutil, "copyfile", plain(shutil.copyfile))
        m.setattr(shutil, "rmtree", plain(shutil.rmtree))
        m.setattr(train_state, "_write_bytes", write_bytes)
        m.setattr(ckpt_mod, "_write_ms_ckpt", ms_write)
        yield state


def test_kill_at_every_file_operation_of_the_first_save(tmp_path, monkeypatch):
    """Nothing before it: resume gets the new checkpoint or a clean one-line error, never a traceback."""
    k = 0
    while True:
        k += 1
        root = tmp_path / f"run{k}"
        trainer = _trainer(root, 0)
        with _kill_at(monkeypatch, k):
            try:
                _save(trainer, 5)
                completed = True
            except Killed:
                completed = False
        ckpts = os.path.join(root, "ckpts")
        try:
            t, messages = _restore(ckpts, tmp_path, f"resume{k}")
            _assert_is_step(t, 5)
        except CheckpointError as exc:
            assert not completed and "\n" not in str(exc)
            assert "holds no checkpoint" in str(exc) or "no complete checkpoint to resume from" in str(exc), exc
        _trainer(root, 0)
        assert _temps(ckpts) == []
        if completed:
            assert sorted(os.listdir(ckpts)) == ["last.ckpt", "last.json"]
            break
    assert k > 10


@pytest.mark.parametrize("top_k", [-1, 0, 1, 2])
@pytest.mark.parametrize("final", [False, True], ids=["step-save", "final-last-save"])
def test_kill_at_every_file_operation(tmp_path, monkeypatch, top_k, final):
    """Two complete saves, then a save killed at its k-th file operation, for every k until one completes."""
    new_step = 13 if final else 15
    k = 0
    while True:
        k += 1
        root = tmp_path / f"run{k}"
        trainer = _trainer(root, top_k)
        _save(trainer, 5)
        _save(trainer, 10)
        with _kill_at(monkeypatch, k) as ops:
            try:
                _save(trainer, new_step, "last" if final else None)
                completed = True
            except Killed:
                completed = False
        ckpts = os.path.join(root, "ckpts")
        for path in (ckpts, os.path.join(ckpts, "last.ckpt")):
            t, messages = _restore(path, tmp_path, f"resume{k}")
            assert t.global_step in (10, new_step), (k, t.global_step, messages)
            _assert_is_step(t, t.global_step)  # bit-identical to the new or the previous checkpoint
            if completed:
                assert t.global_step == new_step and not messages
            for msg in messages:  # a fallback names what was wrong and what was loaded instead
                assert "falling back to" in msg or "is newer than" in msg, msg
        # a trainer starting on the folder removes what the killed write left, and the folder keeps working
        restarted = _trainer(root, top_k)
        assert _temps(ckpts) == [], (k, os.listdir(ckpts))
        _save(restarted, 20)
        t, messages = _restore(ckpts, tmp_path, f"after{k}")
        _assert_is_step(t, 20)
        assert not messages
        if completed:
            break
    print(f"top_k={top_k} final={final}: a save is {ops['n']} file operations; killed at each of {k - 1}")
    assert k > 10


# ----- save_top_k

@pytest.mark.parametrize("top_k, steps_kept", [(-1, [5, 10, 15, 20]), (0, []), (1, [20]), (2, [15, 20])])
def test_save_top_k(tmp_path, top_k, steps_kept):
    trainer = _trainer(tmp_path / "run", top_k)
    for step in (5, 10, 15, 20):
        _save(trainer, step)
    ckpts = os.path.join(tmp_path, "run", "ckpts")
    want = ["last.ckpt", "last.json"] + [f"step{s:06d}.{e}" for s in steps_kept for e in ("ckpt", "json")]
    assert sorted(os.listdir(ckpts)) == sorted(want)
    for path in (ckpts, os.path.join(ckpts, "last.ckpt")):
        _assert_is_step(_restore(path, tmp_path)[0], 20)
    with open(os.path.join(ckpts, "last.json")) as f:
        assert json.load(f)["params_file"] == "last.ckpt"
    # the final save of a run that does not end on a save step: `last` only, top_k untouched
    _save(trainer, 23, "last")
    assert sorted(os.listdir(ckpts)) == sorted(want)
    _assert_is_step(_restore(ckpts, tmp_path, "final")[0], 23)


def test_save_top_k_zero_without_last_keeps_the_newest(tmp_path):
    trainer = _trainer(tmp_path / "run", top_k=0, save_last=False)
    for step in (5, 10):
        _save(trainer, step)
    ckpts = os.path.join(tmp_path, "run", "ckpts")
    assert sorted(os.listdir(ckpts)) == ["step000010.ckpt", "step000010.json"]
    _assert_is_step(_restore(ckpts, tmp_path)[0], 10)


# ----- full disk

def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_enospc_in_mindspore_writer(tmp_path, monkeypatch):
    """The real MindSpore path: its own `.tmp` file exists when the disk fills up."""
    import mindspore.train.serialization as ser
    trainer = _trainer(tmp_path / "run")
    _save(trainer, 5)
    ckpts = os.path.join(tmp_path, "run", "ckpts")
    monkeypatch.setattr(ser, "_write_parameter_data", _enospc)
    monkeypatch.setattr(ser, "_write_parameter_bytes_data", _enospc)
    with pytest.raises(CheckpointWriteError) as err:
        _save(trainer, 10)
    msg = str(err.value)
    print(msg)
    assert "\n" not in msg
    assert msg.startswith(f"could not write checkpoint {os.path.join(ckpts, 'step000010.ckpt')}: "
                          "no space left on device; free space")
    assert f"the last good checkpoint is {os.path.join(ckpts, 'last.ckpt')}" in msg
    assert _temps(ckpts) == []
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "last.json", "step000005.ckpt", "step000005.json"]
    monkeypatch.undo()
    for path in (ckpts, os.path.join(ckpts, "step000005.ckpt")):
        _assert_is_step(_restore(path, tmp_path)[0], 5)


@pytest.mark.parametrize("where", ["arrays", "record", "publish-last"])
def test_enospc_anywhere_leaves_no_temp(tmp_path, monkeypatch, where):
    trainer = _trainer(tmp_path / "run")
    _save(trainer, 5)
    ckpts = os.path.join(tmp_path, "run", "ckpts")
    if where == "arrays":
        def partial(state_, tmp):
            with open(os.path.splitext(tmp)[0] + ".tmp", "wb") as f:
                f.write(b"partial")
            _enospc()
        monkeypatch.setattr(ckpt_mod, "_write_ms_ckpt", partial)
    elif where == "record":
        monkeypatch.setattr(train_state, "_write_bytes", _enospc)
    else:  # the step checkpoint is written; publishing `last` (link and copy) fails
        monkeypatch.setattr(os, "link", _enospc)
        monkeypatch.setattr(shutil, "copyfile", _enospc)
    with pytest.raises(CheckpointWriteError, match="no space left on device; free space") as err:
        _save(trainer, 10)
    assert "\n" not in str(err.value)
    assert _temps(ckpts) == []
    monkeypatch.undo()
    t = _restore(ckpts, tmp_path)[0]
    _assert_is_step(t, 10 if where == "publish-last" else 5)  # a complete step 10 is newer than last
    _assert_is_step(_restore(os.path.join(ckpts, "step000005.ckpt"), tmp_path, "s5")[0], 5)


# ----- non-finite arrays are never written

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_checkpoint_refused(tmp_path, bad):
    trainer = _trainer(tmp_path / "run")
    _save(trainer, 5)
    ckpts = os.path.join(tmp_path, "run", "ckpts")
    before = {f: os.path.getmtime(os.path.join(ckpts, f)) for f in os.listdir(ckpts)}
    arrays = _arrays(10)
    arrays["optimizer.exp_avg.w"][1, 2] = bad
    arrays["model.h"][0] = bad  # float16 too; the first offending key (in order) is named
    with pytest.raises(NonFiniteCheckpointError) as err:
        _save(trainer, 10, arrays=arrays)
    msg = str(err.value)
    print(msg)
    assert err.value.key == "model.h" and "\n" not in msg
    kind = "NaN" if np.isnan(bad) else "inf"
    assert msg.startswith(f"training stopped at step 10: model.h holds {kind} values")
    assert f"the last good checkpoint is {os.path.join(ckpts, 'last.ckpt')}" in msg
    assert {f: os.path.getmtime(os.path.join(ckpts, f)) for f in os.listdir(ckpts)} == before
    _assert_is_step(_restore(ckpts, tmp_path)[0], 5)
    with pytest.raises(NonFiniteCheckpointError, match="array optimizer.exp_avg.w holds"):
        save_training_state(ckpts, "x", {"a": np.zeros(2, np.int64), "optimizer.exp_avg.w": arrays[
            "optimizer.exp_avg.w"]}, {})
    assert not os.path.exists(os.path.join(ckpts, "x.ckpt"))


def test_non_finite_at_the_first_save(tmp_path):
    trainer = _trainer(tmp_path / "run")
    arrays = _arrays(5)
    arrays["model.w"][:] = np.nan
    with pytest.raises(NonFiniteCheckpointError, match="no checkpoint of this run was written"):
        _save(trainer, 5, arrays=arrays)
    assert os.listdir(os.path.join(tmp_path, "run", "ckpts")) == []


# ----- truncated, garbage or torn files: fall back with a message, or a clear error

def _two_checkpoints(tmp_path):
    trainer = _trainer(tmp_path / "run")
    _save(trainer, 5)
    _save(trainer, 10)
    return os.path.join(tmp_path, "run", "ckpts")


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-an-object", "no-hash", "empty"])
def test_bad_record_falls_back(tmp_path, damage):
    ckpts = _two_checkpoints(tmp_path)

    def spoil(path):
        if damage == "truncated":
            _truncate(path)
        else:
            text = {"garbage": "\x00\xff{{not json", "not-an-object": "[1, 2]", "empty": "",
                    "no-hash": json.dumps({"format": 2, "params_file": "last.ckpt", "global_step": 10})}[damage]
            with open(path, "w", encoding="latin-1") as f:
                f.write(text)

    spoil(os.path.join(ckpts, "last.json"))  # the newest is still complete as step000010
    t, messages = _restore(ckpts, tmp_path, "a")
    _assert_is_step(t, 10)
    assert len(messages) == 1 and "last.ckpt is incomplete or corrupt" in messages[0]
    assert f"falling back to {os.path.join(ckpts, 'step000010.ckpt')} (step 10)" in messages[0]
    spoil(os.path.join(ckpts, "step000010.json"))  # now the previous complete one, step 5
    for path in (ckpts, os.path.join(ckpts, "last.ckpt"), os.path.join(ckpts, "step000010.ckpt")):
        t, messages = _restore(path, tmp_path, "b")
        _assert_is_step(t, 5)
        assert "falling back to" in messages[0] and "step000005.ckpt (step 5)" in messages[0], messages
    spoil(os.path.join(ckpts, "step000005.json"))  # nothing complete left: one clear line
    with pytest.raises(IncompleteCheckpointError, match="no complete checkpoint to resume from") as err:
        _restore(ckpts, tmp_path, "c")
    assert "\n" not in str(err.value) and "last.json" in str(err.value)
    with pytest.raises(launch.LaunchError, match="no complete checkpoint to resume from"):
        launch.check_config(launch.OmegaConf.create({"resume": ckpts}), "test")


def test_torn_pair_never_loads_mixed(tmp_path):
    """The reported failure: last.ckpt already holds step-10 arrays, last.json still describes step 5."""
    ckpts = os.path.join(tmp_path, "ckpts")
    save_training_state(ckpts, "step000005", _arrays(5), {"global_step": 5})
    train_state.copy_training_state(os.path.join(ckpts, "step000005.ckpt"), "last")
    save_params(_arrays(10), os.path.join(ckpts, "last.ckpt"))  # the old code's first half of a copy
    messages = []
    arrays, meta = load_training_state(ckpts, log=messages.append)
    assert meta["global_step"] == 5 and all(np.array_equal(arrays[k], v) for k, v in _arrays(5).items())
    assert "does not match the sha256" in messages[0] and "step000005.ckpt (step 5)" in messages[0]


def test_corrupt_array_file_falls_back(tmp_path):
    ckpts = _two_checkpoints(tmp_path)
    for name in ("last.ckpt", "step000010.ckpt"):  # hard links: break both names
        path = os.path.join(ckpts, name)
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        os.remove(path)
        with open(path, "wb") as f:
            f.write(bytes(data))
    t, messages = _restore(ckpts, tmp_path)
    _assert_is_step(t, 5)
    assert "sha256" in messages[0]


def test_first_save_killed_between_arrays_and_record(tmp_path):
    """A .ckpt without its record next to a complete step checkpoint: resume uses the complete one."""
    ckpts = _two_checkpoints(tmp_path)
    for f in ("last.json", "last.ckpt", "step000010.json"):
        os.remove(os.path.join(ckpts, f))
    t, messages = _restore(ckpts, tmp_path)
    _assert_is_step(t, 5)
    assert "step000010.ckpt has no step000010.json beside it" in messages[0]
    _trainer(tmp_path / "run")  # a trainer starting there removes the orphan
    assert sorted(os.listdir(ckpts)) == ["step000005.ckpt", "step000005.json"]


def test_stale_temporaries_cleaned_at_start(tmp_path):
    ckpts = _two_checkpoints(tmp_path)
    for f in (".tmp_abc.ckpt", ".tmp_abc.tmp", ".tmp_x.json"):
        with open(os.path.join(ckpts, f), "wb") as fh:
            fh.write(b"partial")
    os.makedirs(os.path.join(ckpts, ".tmp_folder", "inner"))
    messages = []
    _trainer(tmp_path / "run", log=messages.append)
    assert _temps(ckpts) == []
    assert "removed 4 file(s) left by an interrupted checkpoint write" in messages[0]
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "last.json", "step000005.ckpt", "step000005.json",
                                         "step000010.ckpt", "step000010.json"]


def test_format_1_still_loads(tmp_path):
    ckpts = os.path.join(tmp_path, "ckpts")
    os.makedirs(ckpts)
    save_params(_arrays(7), os.path.join(ckpts, "step000007.ckpt"))
    with open(os.path.join(ckpts, "step000007.json"), "w") as f:
        json.dump({"format": 1, "params_file": "step000007.ckpt", "global_step": 7}, f)
    assert resolve_resume(ckpts).endswith("step000007.ckpt")
    arrays, meta = load_training_state(ckpts)
    assert meta["global_step"] == 7 and np.array_equal(arrays["model.w"], _arrays(7)["model.w"])
    train_state.copy_training_state(os.path.join(ckpts, "step000007.ckpt"), "last")  # upgrades the record
    with open(os.path.join(ckpts, "last.json")) as f:
        assert json.load(f)["format"] == 2
    with open(os.path.join(ckpts, "step000007.json"), "w") as f:
        json.dump({"format": 99, "params_file": "step000007.ckpt"}, f)
    os.remove(os.path.join(ckpts, "last.json"))
    with pytest.raises(CheckpointError, match="unsupported checkpoint format 99"):
        load_training_state(os.path.join(ckpts, "step000007.ckpt"))


def test_missing_paths_keep_their_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume checkpoint not found"):
        resolve_resume(str(tmp_path / "nope.ckpt"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_resume(str(tmp_path / "empty"))
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="resume expects a .ckpt"):
        resolve_resume(str(tmp_path / "model.bin"))
    save_params(_arrays(1), str(tmp_path / "model.ckpt"))  # not a training checkpoint: no fallback, clear error
    with pytest.raises(CheckpointError, match="model.ckpt has no model.json beside it"):
        load_training_state(str(tmp_path / "model.ckpt"))


@pytest.mark.parametrize("exc", [CheckpointWriteError("could not write checkpoint x: no space left on device; y"),
                                 NonFiniteCheckpointError("training stopped at step 3: w holds NaN", "w"),
                                 IncompleteCheckpointError("no complete checkpoint to resume from in z: a")])
def test_cli_prints_checkpoint_errors_on_one_line(monkeypatch, capsys, exc):
    def fail():
        raise exc
    monkeypatch.setattr(launch, "main", fail)
    with pytest.raises(SystemExit) as info:
        launch._cli()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == f"error: {exc}\n"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs, where this process may mount one (root on Linux); else the injected ENOSPC tests above
    are the full-disk check."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}); the injected-ENOSPC tests cover it")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_real_full_disk(small_disk, tmp_path):
    """A checkpoint that does not fit a real 1 MB file system: one line, no temp file, the last one intact."""
    trainer = _trainer(small_disk / "run")
    _save(trainer, 5)
    ckpts = os.path.join(small_disk, "run", "ckpts")
    big = dict(_arrays(10), **{"model.big": np.ones((400, 1000), np.float32)})  # 1.6 MB
    with pytest.raises(CheckpointWriteError) as err:
        _save(trainer, 10, arrays=big)
    msg = str(err.value)
    print(msg)
    assert "\n" not in msg and "no space left on device" in msg
    assert _temps(ckpts) == [] and not [f for f in os.listdir(ckpts) if f.endswith(".tmp")]
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "last.json", "step000005.ckpt", "step000005.json"]
    _assert_is_step(_restore(ckpts, tmp_path)[0], 5)
