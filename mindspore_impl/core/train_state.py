"""Training checkpoints: one array file (`<name>.ckpt`, via checkpoint.save_params) and one JSON (`<name>.json`).

The array file holds parameters and optimizer moments; the JSON holds the step, RNG states and other
small state. Both are written atomically, the JSON last, so a checkpoint whose JSON exists is complete:
an interrupted write leaves either the previous checkpoint or nothing.
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import tempfile
from typing import Any

import numpy as np

from mindspore_impl.core.checkpoint import CheckpointError, read_params, save_params

FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step(\d+)\.ckpt$")


def step_name(step: int) -> str:
    return f"step{step:06d}"


def _write_json_atomic(obj: Any, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_training_state(ckpt_dir: str, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """Write ckpt_dir/<name>.ckpt and ckpt_dir/<name>.json; returns the .ckpt path."""
    path = os.path.join(ckpt_dir, name + ".ckpt")
    save_params(arrays, path)
    _write_json_atomic({"format": FORMAT_VERSION, "params_file": os.path.basename(path), **meta},
                       os.path.join(ckpt_dir, name + ".json"))
    return path


def copy_training_state(src_ckpt: str, name: str) -> str:
    """Make <name>.ckpt/.json a copy of src (a hard link where the file system allows), atomically."""
    folder = os.path.dirname(os.path.abspath(src_ckpt))
    dst = os.path.join(folder, name + ".ckpt")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".ckpt")
    os.close(fd)
    os.remove(tmp)
    try:
        try:
            os.link(src_ckpt, tmp)
        except OSError:
            shutil.copyfile(src_ckpt, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with open(os.path.splitext(src_ckpt)[0] + ".json") as f:
        meta = json.load(f)
    meta["params_file"] = os.path.basename(dst)
    _write_json_atomic(meta, os.path.join(folder, name + ".json"))
    return dst


def resolve_resume(path: str) -> str:
    """A .ckpt file, or a folder of checkpoints (last.ckpt, else the highest step) -> the .ckpt path."""
    if os.path.isdir(path):
        last = os.path.join(path, "last.ckpt")
        if os.path.isfile(last):
            return last
        steps = sorted((int(m.group(1)), f) for f in os.listdir(path) if (m := _STEP_RE.match(f)))
        if not steps:
            raise CheckpointError(f"resume folder {path} holds no checkpoint (last.ckpt or stepNNNNNN.ckpt)")
        return os.path.join(path, steps[-1][1])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    if not path.endswith(".ckpt"):
        raise CheckpointError(f"resume expects a .ckpt written by the trainer, got {path}")
    return path


def load_training_state(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of a checkpoint written by save_training_state."""
    ckpt = resolve_resume(path)
    meta_path = os.path.splitext(ckpt)[0] + ".json"
    if not os.path.isfile(meta_path):
        raise CheckpointError(f"checkpoint {ckpt} has no {os.path.basename(meta_path)} beside it "
                              "(an interrupted write, or not a training checkpoint)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: unsupported checkpoint format {meta.get('format')!r}")
    return read_params(ckpt), meta


def prune_step_checkpoints(ckpt_dir: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` stepNNNNNN checkpoints (keep < 0: keep all). Returns removed paths."""
    if keep < 0:
        return []
    steps = sorted(glob.glob(os.path.join(ckpt_dir, "step*.ckpt")))
    removed = []
    for ckpt in steps[:max(0, len(steps) - keep)]:
        for p in (ckpt, os.path.splitext(ckpt)[0] + ".json"):
            if os.path.exists(p):
                os.remove(p)
                removed.append(p)
    return removed


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
