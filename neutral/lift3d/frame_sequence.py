"""A sequence of posed frames ("transforms-frames-datamodule"): the input of multi-frame point fitting (Animate-PAPR,
docs/architecture.md; papr-frames-system). Framework-neutral (numpy).

Layout: one transforms.json folder per frame, every frame seen by the same cameras (the same views in the same order,
with the same matrices and intrinsics; image names may differ):

    ROOT/frame_000/transforms.json + images     frame 0
    ROOT/frame_001/transforms.json + images     frame 1 ...

(scripts/make_primitive_views.py --frames N writes it). Each frame is read by the transforms data module
(neutral/lift3d/transforms_dataset.py) with this module's settings, so hold-out, patches and downscale mean the same.

Schedule: frame 0 trains `first_frame_steps` steps, every later frame `frame_steps` steps, one after another; step s
samples patches of its frame only. The batch tells the system where it is: `frame` (index), `frame_step` (step within
the frame), `frame_steps` (the frame's step count) and, at the frame's last step, `frame_views`: every camera of the
frame as a whole image with its ground truth and a `held_out` flag (the system renders them to score the frame and to
make the per-camera videos). trainer.max_steps should equal `total_steps`; the configs derive it from
data.n_frames (configs/papr-frames.yaml).

Every check runs in the constructor, before any model is built: the frame folders (frame_000 .. frame_{n-1}, no gap,
no repeat), then every frame's cameras against frame 0's from the JSON alone, then the images.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from neutral.config import ConfigError, parse_structured
from neutral.lift3d.transforms_dataset import (TRANSFORMS, DatasetError, TransformsDataModule,
                                               TransformsDataModuleConfig, _intrinsics, _load_json, check_c2w)
from neutral.registry import register

FRAME_DIR = re.compile(r"^frame_(\d+)$")
CAMERA_TOL = 1e-5  # max |difference| of a camera matrix entry or intrinsic between frames


@dataclass
class FrameSequenceDataModuleConfig(TransformsDataModuleConfig):
    # frames to fit: ROOT/frame_000 .. frame_{n_frames - 1}; None: every frame folder found (then set trainer.max_steps
    # to total_steps yourself)
    n_frames: Optional[int] = field(default=None, metadata={"min": 1})
    first_frame_steps: int = field(default=1000, metadata={"min": 1})  # frame 0, from scratch
    frame_steps: int = field(default=200, metadata={"min": 1})         # each later frame, from the previous one


def frame_folders(root: str, n_frames: Optional[int] = None) -> list[str]:
    """ROOT/frame_000 .. in order, or DatasetError naming what is missing."""
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise DatasetError(f"frame sequence folder {root} {what}; give the folder that holds frame_000/, frame_001/, "
                           "... (one transforms.json folder per frame)")
    found: Dict[int, str] = {}
    for name in sorted(os.listdir(root)):
        m = FRAME_DIR.match(name)
        if m and os.path.isdir(os.path.join(root, name)):
            k = int(m.group(1))
            if k in found:
                raise DatasetError(f"{root}: {found[k]} and {name} are both frame {k}; keep one")
            found[k] = name
    if not found:
        raise DatasetError(f"{root} has no frame folders; expected {root}/frame_000/{TRANSFORMS}, "
                           f"{root}/frame_001/{TRANSFORMS}, ... (scripts/make_primitive_views.py --frames N)")
    n = max(found) + 1 if n_frames is None else int(n_frames)
    missing = [k for k in range(n) if k not in found]
    if missing:
        have = f"{len(found)} frame folders ({', '.join(found[k] for k in sorted(found)[:4])}" + \
               (", ...)" if len(found) > 4 else ")")
        asked = "" if n_frames is None else f"data.n_frames={n_frames}, "
        raise DatasetError(f"{root}: frame {missing[0]} (frame_{missing[0]:03d}) is missing ({asked}found {have}); "
                           "frames must be numbered 0, 1, 2, ... without gaps")
    return [os.path.join(root, found[k]) for k in range(n)]


def _cameras(folder: str) -> tuple[str, list]:
    """(transforms.json path, [(c2w, intrinsics dict)] per view) from the JSON alone."""
    path = os.path.join(folder, TRANSFORMS)
    if not os.path.isfile(path):
        raise DatasetError(f"{folder} has no {TRANSFORMS}; every frame folder needs one (the same cameras as "
                           "frame_000)")
    meta = _load_json(path)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{path} has no 'frames' list of views (file_path + transform_matrix)")
    views = []
    for i, view in enumerate(frames):
        where = f"{path}: view {i}"
        if not isinstance(view, dict) or "transform_matrix" not in view:
            raise DatasetError(f"{where} has no transform_matrix")
        views.append((check_c2w(view["transform_matrix"], where), _intrinsics(meta, view, where)))
    return path, views


def check_same_cameras(folders: list[str]) -> None:
    """Every frame's views against frame 0's: count, camera-to-world matrices and intrinsics (DatasetError naming the
    frame, the view and the difference)."""
    first_path, first = _cameras(folders[0])
    for folder in folders[1:]:
        path, views = _cameras(folder)
        if len(views) != len(first):
            raise DatasetError(f"{path} has {len(views)} views but {first_path} has {len(first)}; every frame must "
                               "be seen by the same cameras")
        for i, ((c2w, intr), (c2w0, intr0)) in enumerate(zip(views, first)):
            diff = float(np.abs(c2w - c2w0).max())
            if diff > CAMERA_TOL:
                raise DatasetError(f"{path}: view {i}'s camera differs from {first_path}'s view {i} (max |delta "
                                   f"transform_matrix| = {diff:.3g}); every frame must be seen by the same cameras")
            if set(intr) != set(intr0) or any(abs(intr[k] - intr0[k]) > CAMERA_TOL for k in intr):
                raise DatasetError(f"{path}: view {i}'s intrinsics {intr} differ from {first_path}'s {intr0}; every "
                                   "frame must be seen by the same cameras")


def frame_of_step(step: int, first: int, later: int) -> tuple[int, int, int]:
    """(frame, step within the frame, the frame's step count) of global step `step`."""
    if step < first:
        return 0, step, first
    k, local = divmod(step - first, later)
    return k + 1, local, later


@register("transforms-frames-datamodule")
class FrameSequenceDataModule:
    """One TransformsDataModule per frame (module doc), sharing one Generator; training batches come from the frame of
    the step; validation views from the frame of the latest sampled step; the test orbit from frame 0's cameras (the
    same in every frame)."""

    Config = FrameSequenceDataModuleConfig

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        self.cfg = parse_structured(type(self).Config, cfg, "data")
        if not self.cfg.root:
            raise ConfigError("data.root is not set: give the folder with frame_000/, frame_001/, ... (one "
                              "transforms.json folder per frame), e.g. data.root=PATH")
        if not self.cfg.patch_size:
            raise ConfigError("transforms-frames-datamodule feeds papr-frames-system, which trains on image patches; "
                              "set data.patch_size (e.g. 24)")
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.folders = frame_folders(str(self.cfg.root), self.cfg.n_frames)
        check_same_cameras(self.folders)
        per_frame = {k: getattr(self.cfg, k) for k in TransformsDataModuleConfig.__dataclass_fields__}
        self.frames = []
        for folder in self.folders:
            dm = TransformsDataModule(dict(per_frame, root=folder), seed=self.seed)
            if self.frames:
                ref = self.frames[0].train
                if (dm.train["height"], dm.train["width"]) != (ref["height"], ref["width"]) or \
                        (dm.train["alpha"] is None) != (ref["alpha"] is None):
                    raise DatasetError(f"{folder}: images are {dm.train['width']}x{dm.train['height']}"
                                       f"{' RGB' if dm.train['alpha'] is None else ' RGBA'} but {self.folders[0]}'s "
                                       f"are {ref['width']}x{ref['height']}{' RGB' if ref['alpha'] is None else ' RGBA'}"
                                       "; every frame must have images of one size and kind")
            dm.rng = self.rng  # one random stream for the run (get_state / set_state)
            self.frames.append(dm)
        self.current = 0  # the frame of the latest sampled step

    # --- the schedule

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def total_steps(self) -> int:
        return self.cfg.first_frame_steps + (self.n_frames - 1) * self.cfg.frame_steps

    def frame_of_step(self, step: int) -> tuple[int, int, int]:
        return frame_of_step(step, self.cfg.first_frame_steps, self.cfg.frame_steps)

    # --- resume state

    def get_state(self) -> Dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "frame": self.current}

    def set_state(self, state: Dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.current = int(state["frame"])

    # --- training

    def sample(self, global_step: int) -> Dict[str, Any]:
        if global_step >= self.total_steps:
            raise ConfigError(f"step {global_step} is past the frame schedule ({self.n_frames} frames: "
                              f"{self.cfg.first_frame_steps} + {self.n_frames - 1} x {self.cfg.frame_steps} = "
                              f"{self.total_steps} steps); set trainer.max_steps={self.total_steps}")
        k, local, steps = self.frame_of_step(global_step)
        self.current = k
        batch = self.frames[k].sample(local)  # patch epochs restart with each frame
        batch.update(frame=k, frame_step=local, frame_steps=steps)
        if local == steps - 1:
            batch["frame_views"] = self.camera_views(k)
        return batch

    def camera_views(self, k: int) -> list[Dict[str, Any]]:
        """Every camera of frame k in transforms.json order: a whole-image batch (1,H,W,.) with its rgb (and mask),
        `held_out` (bool) and `camera` (index)."""
        dm = self.frames[k]
        held_out = 0 if dm.held_out is None else len(dm.held_out["file_paths"])
        n_views = len(dm.train["file_paths"]) + held_out
        held = np.arange(n_views) % dm.cfg.holdout_every == 0 if dm.cfg.holdout_every else np.zeros(n_views, bool)
        place = np.zeros(n_views, int)
        place[held], place[~held] = np.arange(held.sum()), np.arange((~held).sum())
        views = []
        for c in range(n_views):
            batch = dm.view_batch("held_out" if held[c] else "train", int(place[c]))
            batch.update(held_out=bool(held[c]), camera=c)
            views.append(batch)
        return views

    # --- evaluation (the trainer's validation and test orbit)

    @property
    def n_val(self) -> int:
        return self.frames[0].n_val

    def val_batch(self, index: int) -> Dict[str, Any]:
        return self.frames[self.current].val_batch(index)

    @property
    def n_test(self) -> int:
        return self.frames[0].n_test

    def test_batch(self, index: int) -> Dict[str, Any]:
        return self.frames[0].test_batch(index)
