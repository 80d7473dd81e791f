"""Training checkpoints that are written, published and resumed as one atomic unit.

On-disk layout of a checkpoint folder (`<trial>/ckpts/`), format 2:

    step000010.ckpt   the arrays (parameters, optimizer moments, buffers), a MindSpore .ckpt
    step000010.json   the record: {"format": 2, "params_file": "step000010.ckpt", "params_sha256": ...,
                      "params_bytes": ..., "global_step": 10, ...small state: RNG, data stream...}
    last.ckpt         a hard link to (or copy of) the newest checkpoint's arrays
    last.json         the record of `last`; its params_file names the array file it describes
    .tmp_*            a write in progress (or killed): removed when a trainer starts on the folder

The JSON record is the commit: a checkpoint exists when its record parses and the array file it names
has the recorded size and sha256. Every file is written under a `.tmp_*` name, fsynced and published
with one `os.replace`; a step checkpoint publishes its arrays first and its record last, so a kill at
any moment leaves the previous checkpoint untouched and at most an incomplete new one that resume skips.
`last` is moved to a new checkpoint S in three atomic steps that each leave `last.json` describing a
complete array file: last.json -> S's arrays, then last.ckpt := S's arrays, then last.json -> last.ckpt.
Step checkpoints are pruned (record first, then arrays) only after `last` is published, and never the
array file `last.json` names.

Resume takes a checkpoint file (`last.ckpt`, `step000010.ckpt`, or the matching `.json`) or the folder
(the newest complete checkpoint, `last` winning ties). What it loads is verified (record, size, sha256,
readability); when the requested/newest checkpoint is incomplete or corrupt it falls back to the newest
complete one (for a `stepN` file: one at step <= N) and says so, naming both. Format-1 checkpoints
(a record without a hash) still load; only their readability is checked.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from mindspore_impl.core.checkpoint import (TMP_PREFIX, CheckpointError, CheckpointWriteError,  # noqa: F401
                                            IncompleteCheckpointError, NonFiniteCheckpointError, check_finite,
                                            fsync_path, read_params, save_params, write_error)

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
LAST = "last"
_STEP_RE = re.compile(r"^step(\d+)$")
_NAME_RE = re.compile(r"^(last|step\d+)\.(ckpt|json)$")

Log = Optional[Callable[[str], Any]]


def step_name(step: int) -> str:
    return f"step{step:06d}"


# ----- low-level writes (tests wrap these to simulate a kill or a full disk)

def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json_atomic(obj: Any, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}.json")
    try:
        os.makedirs(folder, exist_ok=True)
        _write_bytes(tmp, json.dumps(obj, indent=1).encode())
        os.replace(tmp, path)
        fsync_path(folder)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        _remove_quietly(tmp)


def _remove(path: str) -> bool:
    if os.path.lexists(path):
        os.remove(path)
        return True
    return False


def _remove_quietly(path: str) -> None:
    """Remove a temporary left by a failed write; a second failure must not hide the first."""
    try:
        _remove(path)
    except OSError:
        pass


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


# ----- writing

def save_training_state(ckpt_dir: str, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """Write checkpoint `name` (ckpt_dir/<name>.ckpt, then its record <name>.json); returns the .ckpt path.

    Refuses (NonFiniteCheckpointError, nothing written) when a float array holds NaN/inf; a disk error
    raises CheckpointWriteError with no temporary left and every other checkpoint untouched."""
    check_finite(arrays, f"checkpoint {name}")
    path = os.path.join(ckpt_dir, name + ".ckpt")
    record = os.path.join(ckpt_dir, name + ".json")
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
        _remove(record)  # overwriting an older checkpoint of that name: it is incomplete from here on
    except OSError as exc:
        raise write_error(record, exc) from None
    save_params(arrays, path)
    try:
        digest, size = file_sha256(path), os.path.getsize(path)
    except OSError as exc:
        raise write_error(path, exc) from None
    _write_json_atomic({**meta, "format": FORMAT_VERSION, "params_file": os.path.basename(path),
                        "params_sha256": digest, "params_bytes": size}, record)
    return path


def _link_or_copy(src: str, dst: str) -> None:
    """Make dst (a path in src's folder) hold src's bytes, atomically; a hard link where possible."""
    tmp = os.path.join(os.path.dirname(dst), f"{TMP_PREFIX}{uuid.uuid4().hex}.ckpt")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            fsync_path(tmp)
        os.replace(tmp, dst)
        fsync_path(os.path.dirname(dst))
    except OSError as exc:
        raise write_error(dst, exc) from None
    finally:
        _remove_quietly(tmp)


def copy_training_state(src_ckpt: str, name: str) -> str:
    """Publish checkpoint `name` (usually "last") as a copy of the complete checkpoint src; returns <name>.ckpt.

    Three atomic steps, each leaving <name>.json describing a complete array file (see the module doc)."""
    folder = os.path.dirname(os.path.abspath(src_ckpt))
    src_name = os.path.splitext(os.path.basename(src_ckpt))[0]
    src = _inspect(folder, src_name, verify_hash=False)
    meta = dict(src.meta)
    if "params_sha256" not in meta:  # a format-1 source
        meta.update(format=FORMAT_VERSION, params_sha256=file_sha256(src.data),
                    params_bytes=os.path.getsize(src.data))
    dst = os.path.join(folder, name + ".ckpt")
    record = os.path.join(folder, name + ".json")
    if os.path.abspath(src.data) != os.path.abspath(dst):
        _write_json_atomic({**meta, "params_file": os.path.basename(src.data)}, record)
        _link_or_copy(src.data, dst)
    _write_json_atomic({**meta, "params_file": os.path.basename(dst)}, record)
    return dst


def _checkpoint_names(ckpt_dir: str) -> set[str]:
    try:
        files = os.listdir(ckpt_dir)
    except OSError:
        return set()
    return {m.group(1) for f in files if (m := _NAME_RE.match(f))}


def _step_of_name(name: str) -> Optional[int]:
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


def _referenced_by_last(ckpt_dir: str) -> Optional[str]:
    """The array file last.json names (its basename), if last.json is readable."""
    meta = _read_record(os.path.join(ckpt_dir, LAST + ".json"))
    if isinstance(meta, dict) and isinstance(meta.get("params_file"), str):
        return os.path.basename(meta["params_file"])
    return None


def prune_step_checkpoints(ckpt_dir: str, keep: int, protect: tuple[str, ...] = ()) -> list[str]:
    """Delete all but the newest `keep` stepNNNNNN checkpoints (keep < 0: keep all; 0: none). Returns removed paths.

    Never deletes the array file last.json names, nor the checkpoints named in `protect`; the record goes
    first, so a kill mid-prune leaves only an incomplete checkpoint that resume skips."""
    if keep < 0:
        return []
    steps = sorted((s, n) for n in _checkpoint_names(ckpt_dir) if (s := _step_of_name(n)) is not None)
    referenced = _referenced_by_last(ckpt_dir)
    removed = []
    for _, name in steps[:max(0, len(steps) - keep)]:
        if name in protect or referenced == name + ".ckpt":
            continue
        for p in (os.path.join(ckpt_dir, name + ".json"), os.path.join(ckpt_dir, name + ".ckpt")):
            if _remove(p):
                removed.append(p)
    return removed


def remove_checkpoint(ckpt_dir: str, name: str) -> list[str]:
    """Delete checkpoint `name` (record first), unless last.json names its arrays. Returns removed paths."""
    if _referenced_by_last(ckpt_dir) == name + ".ckpt":
        return []
    return [p for p in (os.path.join(ckpt_dir, name + ".json"), os.path.join(ckpt_dir, name + ".ckpt"))
            if _remove(p)]


def clean_stale_files(ckpt_dir: str, log: Log = None) -> list[str]:
    """Remove what killed writes left in ckpt_dir: `.tmp_*` files/folders and stepNNNNNN.ckpt without a record.

    Call it only on a folder no other process is writing to (a trainer does, on its own folder, at start)."""
    if not os.path.isdir(ckpt_dir):
        return []
    removed = []
    names = os.listdir(ckpt_dir)
    for f in sorted(names):
        path = os.path.join(ckpt_dir, f)
        orphan = (f.endswith(".ckpt") and _STEP_RE.match(f[:-5]) and f[:-5] + ".json" not in names
                  and _referenced_by_last(ckpt_dir) != f)
        if f.startswith(TMP_PREFIX) or orphan:
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
                removed.append(path)
            except OSError:
                pass
    if removed and log:
        log(f"removed {len(removed)} file(s) left by an interrupted checkpoint write in {ckpt_dir}: "
            + ", ".join(os.path.basename(p) for p in removed))
    return removed


# ----- reading

@dataclass
class CheckpointInfo:
    """A checkpoint on disk: `path` is what users see (<name>.ckpt), `data` the array file its record names."""
    name: str
    path: str
    record: str
    data: str
    meta: dict
    step: Optional[int]


def _read_record(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def _meta_step(meta: dict) -> Optional[int]:
    for key in ("global_step", "step"):
        v = meta.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _inspect(folder: str, name: str, verify_hash: bool = True) -> CheckpointInfo:
    """Checkpoint `name` in folder, or IncompleteCheckpointError saying what is wrong with it."""
    path = os.path.join(folder, name + ".ckpt")
    record = os.path.join(folder, name + ".json")
    if not os.path.isfile(record):
        raise IncompleteCheckpointError(f"{path} has no {name}.json beside it "
                                        "(an interrupted write, or not a training checkpoint)")
    try:
        with open(record, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise IncompleteCheckpointError(f"{record} is unreadable (truncated or corrupt: "
                                        f"{str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise IncompleteCheckpointError(f"{record} is not a checkpoint record (a JSON object)")
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        raise IncompleteCheckpointError(f"{record}: unsupported checkpoint format {fmt!r} "
                                        f"(this version reads {', '.join(map(str, READABLE_FORMATS))})")
    params_file = meta.get("params_file", name + ".ckpt")
    if not isinstance(params_file, str) or os.path.basename(params_file) != params_file or not params_file:
        raise IncompleteCheckpointError(f"{record}: bad params_file {params_file!r}")
    data = os.path.join(folder, params_file)
    if not os.path.isfile(data):
        raise IncompleteCheckpointError(f"{record} names {params_file}, which is missing")
    if fmt >= 2:
        want_sha, want_size = meta.get("params_sha256"), meta.get("params_bytes")
        if not isinstance(want_sha, str) or not isinstance(want_size, int):
            raise IncompleteCheckpointError(f"{record} has no params_sha256/params_bytes")
        size = os.path.getsize(data)
        if size != want_size:
            raise IncompleteCheckpointError(f"{data} has {size} bytes, {record} records {want_size} "
                                            "(a torn or truncated write)")
        if verify_hash and file_sha256(data) != want_sha:
            raise IncompleteCheckpointError(f"{data} does not match the sha256 recorded in {record} "
                                            "(a torn or corrupt write)")
    return CheckpointInfo(name, path, record, data, meta, _meta_step(meta))


def _candidates(path: str) -> tuple[str, list[str], Optional[str]]:
    """(folder, checkpoint names to try in order, the name the user asked for or None for a folder)."""
    if os.path.isdir(path):
        folder, wanted = path, None
    else:
        folder, base = os.path.split(os.path.abspath(path))
        stem, ext = os.path.splitext(base)
        if ext not in (".ckpt", ".json"):
            if not os.path.exists(path):
                raise FileNotFoundError(f"resume checkpoint not found: {path}")
            raise CheckpointError(f"resume expects a .ckpt written by the trainer (or its folder), got {path}")
        if not (os.path.isfile(os.path.join(folder, stem + ".ckpt"))
                or os.path.isfile(os.path.join(folder, stem + ".json"))):
            raise FileNotFoundError(f"resume checkpoint not found: {path}")
        wanted = stem
    names = _checkpoint_names(folder)
    if wanted is not None and wanted not in names:  # a file outside the trainer's naming: no fallback
        return folder, [wanted], wanted
    if not names:
        raise CheckpointError(f"resume folder {path} holds no checkpoint (last.ckpt or stepNNNNNN.ckpt)")

    def step(name: str) -> float:
        s = _step_of_name(name)
        if name == LAST:
            meta = _read_record(os.path.join(folder, LAST + ".json"))
            s = _meta_step(meta) if isinstance(meta, dict) else None
            return float("inf") if s is None else s  # an unreadable last is the newest, so it is reported
        return float(s)

    order = sorted(names, key=lambda n: (step(n), n == LAST), reverse=True)
    if wanted is not None:
        limit = _step_of_name(wanted)
        order = [wanted] + [n for n in order if n != wanted and (limit is None or step(n) <= limit)]
    return folder, order, wanted


def _open(path: str, read: bool, log: Log) -> tuple[CheckpointInfo, Optional[dict]]:
    folder, order, wanted = _candidates(path)
    failures = []
    for name in order:
        try:
            info = _inspect(folder, name)
            arrays = read_params(info.data) if read or info.meta.get("format", 1) < 2 else None
        except (CheckpointError, OSError) as exc:
            failures.append((name, str(exc).splitlines()[0]))
            continue
        if failures and log:
            first, why = failures[0]
            log(f"warning: checkpoint {os.path.join(folder, first + '.ckpt')} is incomplete or corrupt ({why}); "
                f"falling back to {info.path} (step {info.step}), the newest complete checkpoint")
        elif wanted is None and name != LAST and LAST in order and log:
            log(f"note: {info.path} (step {info.step}) is newer than {os.path.join(folder, LAST + '.ckpt')}; "
                "resuming from it")
        return info, arrays
    where = f"{path}" if wanted is None else f"{folder} (asked for {os.path.basename(path)})"
    raise IncompleteCheckpointError(f"no complete checkpoint to resume from in {where}: "
                                    + "; ".join(why for _, why in failures))


def resolve_resume(path: str, log: Log = None) -> str:
    """A checkpoint file or a folder of checkpoints -> the .ckpt path of the checkpoint resume will load.

    Verifies it (record, size, sha256) and falls back like load_training_state; FileNotFoundError for a
    missing path, CheckpointError (one line) when nothing complete is there."""
    return _open(path, read=False, log=log)[0].path


def open_training_state(path: str, log: Log = None) -> tuple[CheckpointInfo, dict[str, np.ndarray]]:
    """(which checkpoint was loaded, its arrays); `info.meta` is its record. See resolve_resume."""
    info, arrays = _open(path, read=True, log=log)
    return info, arrays


def load_training_state(path: str, log: Log = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of a checkpoint written by save_training_state; `path` as for resolve_resume."""
    info, arrays = open_training_state(path, log)
    return arrays, info.meta


def capture_global_rng() -> dict[str, Any]:
    """numpy's and Python's global RNG states, JSON-able."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}


def restore_global_rng(state: dict[str, Any]) -> None:
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
