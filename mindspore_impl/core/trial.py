"""The trial folder of one run and its metric logs.

    <exp_root_dir>/<name>/<tag>@<YYYYMMDD-HHMMSS>/
        configs/parsed.yaml   the fully resolved config (re-runnable with --config)
        ckpts/                stepNNNNNN.ckpt/.json, last.ckpt/.json
        save/                 validation PNGs it<step>-<index>.png, test frames and videos, exports
        metrics.csv, metrics.jsonl
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from datetime import datetime
from typing import Any, Optional

import numpy as np

from neutral.errors import UserError


MAX_TAG_BYTES = 180  # a folder name is at most 255 bytes: tag + "-<hash>" + "@YYYYMMDD-HHMMSS" + "-N" fit


class TrialFolderError(UserError):
    """The trial folder cannot be created (exp_root_dir is a file, not writable, ...)."""


def safe_component(text: str, max_bytes: int = MAX_TAG_BYTES) -> str:
    """`text` as one path component: separators replaced; if longer than max_bytes (UTF-8), cut at a character
    boundary and suffixed with '-' + 8 hex digits of the full text's sha256, so distinct long tags stay distinct."""
    text = str(text or "").replace("/", "_").replace(os.sep, "_").replace("\0", "_")
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    digest = hashlib.sha256(raw).hexdigest()[:8]
    cut = raw[:max_bytes - len(digest) - 1].decode("utf-8", errors="ignore").rstrip()
    return f"{cut}-{digest}"


def trial_name(tag: str, use_timestamp: bool = True, now: Optional[datetime] = None) -> str:
    tag = safe_component(tag)
    if not use_timestamp:
        return tag or "trial"
    return f"{tag}@{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_root(exp_root_dir: str) -> None:
    """TrialFolderError unless a trial folder can be created under exp_root_dir (checked before any work)."""
    if not str(exp_root_dir or "").strip():
        raise TrialFolderError("exp_root_dir is empty; set exp_root_dir=outputs (or another folder)")
    existing = _nearest_existing(exp_root_dir)
    if not os.path.isdir(existing):
        where = "exp_root_dir" if os.path.abspath(exp_root_dir) == existing else f"{existing}, inside exp_root_dir,"
        raise TrialFolderError(f"exp_root_dir={exp_root_dir}: {where} is a file, not a folder; "
                               "set exp_root_dir= to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrialFolderError(f"exp_root_dir={exp_root_dir}: {existing} is not writable; "
                               "set exp_root_dir= to a writable folder")


class Trial:
    def __init__(self, root: str) -> None:
        self.root = root
        self.configs_dir = os.path.join(root, "configs")
        self.ckpt_dir = os.path.join(root, "ckpts")
        self.save_dir = os.path.join(root, "save")
        for d in (self.configs_dir, self.ckpt_dir, self.save_dir):
            os.makedirs(d, exist_ok=True)
        self.metrics = MetricsLogger(root)

    @classmethod
    def create(cls, exp_root_dir: str, name: str, tag: str, use_timestamp: bool = True) -> "Trial":
        """A new folder; a same-second clash gets a -1, -2, ... suffix instead of mixing two runs."""
        base = os.path.join(exp_root_dir, safe_component(name) or "default", trial_name(tag, use_timestamp))
        root, i = base, 0
        while use_timestamp and os.path.exists(root):
            i += 1
            root = f"{base}-{i}"
        try:
            return cls(root)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise TrialFolderError(f"cannot create the trial folder {root}: {reason}; "
                                   "set exp_root_dir= to a writable folder") from None

    def save_config(self, cfg: Any) -> str:
        from omegaconf import OmegaConf
        path = os.path.join(self.configs_dir, "parsed.yaml")
        with open(path, "w") as f:
            f.write(OmegaConf.to_yaml(cfg, resolve=True))
        return path

    def save_path(self, relative: str) -> str:
        path = os.path.join(self.save_dir, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


class MetricsLogger:
    """Append-only metrics.jsonl plus metrics.csv (rewritten with a wider header when new keys appear)."""

    def __init__(self, folder: str) -> None:
        self.csv_path = os.path.join(folder, "metrics.csv")
        self.jsonl_path = os.path.join(folder, "metrics.jsonl")
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in row.items()}) + "\n")
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new or not os.path.exists(self.csv_path):
            self.columns += new
            with open(self.csv_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writerow(row)
