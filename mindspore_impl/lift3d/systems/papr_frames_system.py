"""Multi-frame point fitting ("papr-frames-system"; Animate-PAPR, phase 3 of the "Generation of Animated 3D
Characters" report, on zvict/papr's renderer): one PAPR point cloud fitted to a sequence of posed frames (transforms-frames-datamodule,
neutral/lift3d/frame_sequence.py), frame after frame.

- Frame 0 fits from scratch, exactly as papr-reconstruction-system (the step, losses, pruning and growing are that
  system's; this one adds the frames).
- Frame k >= 1 starts from frame k-1's final state: the same points, influence scores, features and networks. The
  decoder is frozen (left out of the optimizer, so its weights stay bit-identical); positions, features, influence
  scores and the attention MLPs train, with fresh Adam moments. The point set does not change after frame 0 (no
  pruning or growing), so the per-frame clouds correspond point for point.
- warm_start: false is the baseline: every later frame restarts from the initial state of a fresh build (points and
  networks, decoder trained) with the same number of steps.

At the last step of each frame (the batch carries `frame_views`) the system renders every camera of the frame: the
held-out cameras give the frame's PSNR (against the ground truth over the render's background, as validation), all of
them a frame of the per-camera videos. It keeps, per finished frame, the record (PSNR, steps, wall time of its steps,
point count) and the arrays (points, influence, features, renders); they go into checkpoints (so a resumed run ends
identical) and the export writes them:
    frame_000.ply ...       the points at the end of each frame (lift3d/export/point_cloud.py)
    camera_00.mp4 ...       each camera's renders over the frames
    frames.json             the per-frame records
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from mindspore_impl.core.checkpoint import CheckpointError
from mindspore_impl.core.parameters import write_parameter
from mindspore_impl.lift3d.systems.papr_reconstruction_system import (PAPRReconstructionSystem,
                                                                      PAPRReconstructionSystemConfig)
from mindspore_impl.lift3d.systems.reconstruction_system import psnr
from neutral import registry
from neutral.config import ConfigError
from neutral.files import write_atomically

FRAME_ARRAYS = ("points", "influence", "features", "renders")


@dataclass
class PAPRFramesSystemConfig(PAPRReconstructionSystemConfig):
    # true: frame k starts from frame k-1 with the decoder frozen; false: from a fresh build (the baseline)
    warm_start: bool = True
    video_fps: int = field(default=4, metadata={"min": 1})  # the per-camera videos of the export


@registry.register("papr-frames-system")
class PAPRFramesSystem(PAPRReconstructionSystem):
    Config = PAPRFramesSystemConfig

    def configure(self) -> None:
        super().configure()
        self.frame = 0                 # the frame being fitted
        self.frame_seconds = 0.0       # wall time of its steps so far
        self.first_step_seconds = 0.0  # of its first step (compiles in GRAPH mode)
        self.records: list[dict] = []  # per finished frame
        self.frame_arrays: list[dict] = []
        # the fresh build, for warm_start false
        self._fresh_points = tuple(x.copy() for x in self.geometry.active_arrays())
        nets = [self.renderer, self.background, self.material]
        self._fresh_params = [(p, p.asnumpy().copy()) for cell in nets for p in cell.get_parameters()]

    # ----- frames

    @property
    def decoder_frozen(self) -> bool:
        return self.cfg.warm_start and self.frame >= 1

    def parameter_groups(self) -> list[dict]:
        """The configured groups, less the decoder's parameters while it is frozen."""
        groups = super().parameter_groups()
        if not self.decoder_frozen:
            return groups
        frozen = {id(p) for p in self.renderer.decoder.get_parameters()}
        out = [dict(g, params=[p for p in g["params"] if id(p) not in frozen]) for g in groups]
        return [g for g in out if g["params"]]

    def begin_frame(self, k: int) -> None:
        """Move from frame k-1 to frame k: keep the state (warm start; frame 1 drops the decoder from the optimizer)
        or restore the fresh build; fresh Adam moments either way."""
        if k != self.frame + 1 or len(self.records) != k:
            raise RuntimeError(f"papr-frames-system: frame {k} after frame {self.frame} with {len(self.records)} "
                               "finished frames (frames run in order, each to its last step)")
        was_frozen = self.decoder_frozen
        self.frame = k
        reshaped = self.decoder_frozen != was_frozen
        if not self.cfg.warm_start:
            reshaped |= self.geometry.set_points(*self._fresh_points)
            for p, value in self._fresh_params:
                write_parameter(p, value)
        self.reset_optimizer(reshaped)
        self.frame_seconds = self.first_step_seconds = 0.0

    def finish_frame(self, views: list[dict], steps: int) -> dict[str, float]:
        """Render every camera of the finished frame; keep its record and arrays -> metrics of the frame."""
        kept = self.val_psnrs
        held, fit, renders = [], [], []
        for i, view in enumerate(views):
            images = self.validation_step(view, i)  # rgb, and gt over the render's background
            value = psnr(images["rgb"], images["gt"])
            (held if view["held_out"] else fit).append(value)
            renders.append(images["rgb"].astype(np.float32))
        self.val_psnrs = kept
        record = {"frame": self.frame, "steps": int(steps), "val_psnr": float(np.mean(held)) if held else None,
                  "val_psnr_min": float(np.min(held)) if held else None,
                  "train_view_psnr": float(np.mean(fit)) if fit else None, "seconds": self.frame_seconds,
                  "seconds_after_first_step": self.frame_seconds - self.first_step_seconds,
                  "num_points": self.geometry.num_active, "warm_start": bool(self.cfg.warm_start or self.frame == 0)}
        pos, infl, feats = self.geometry.active_arrays()
        self.records.append(record)
        self.frame_arrays.append({"points": pos.copy(), "influence": infl.copy(), "features": feats.copy(),
                                  "renders": np.stack(renders)})
        print(f"[frames] frame {self.frame}: held-out PSNR {record['val_psnr']}, {steps} steps in "
              f"{self.frame_seconds:.1f} s", flush=True)
        return {"frame_val_psnr": record["val_psnr"] if held else float("nan"), "frame_seconds": self.frame_seconds}

    # ----- the step

    def training_step(self, batch: dict, global_step: int) -> dict[str, float]:
        if "frame" not in batch:
            raise ConfigError("papr-frames-system fits a frame sequence; use data_type transforms-frames-datamodule "
                              "(configs/papr-frames.yaml)")
        start = time.perf_counter()
        k = int(batch["frame"])
        if k != self.frame:
            self.begin_frame(k)
        changes = self.change_points(global_step) if k == 0 else {}  # frame 0 starts at step 0
        metrics = self.run_step(self.draw_step_inputs(batch))
        spent = time.perf_counter() - start
        if int(batch["frame_step"]) == 0:
            self.first_step_seconds = spent
        self.frame_seconds += spent
        metrics.update({name: float(v) for name, v in changes.items()})
        metrics["frame"] = float(k)
        if "frame_views" in batch:
            metrics.update(self.finish_frame(batch["frame_views"], int(batch["frame_steps"])))
        return metrics

    # ----- checkpoints

    def extra_state(self) -> tuple[dict, dict]:
        arrays, meta = super().extra_state()
        for k, stored in enumerate(self.frame_arrays):
            arrays.update({f"frame_{k:03d}.{name}": stored[name] for name in FRAME_ARRAYS})
        meta.update(frame=self.frame, frame_seconds=self.frame_seconds, first_step_seconds=self.first_step_seconds,
                    records=[dict(r) for r in self.records])
        return arrays, meta

    def load_extra_state(self, arrays: dict, meta: dict) -> None:
        mine = ("frame", "frame_seconds", "first_step_seconds", "records")
        records = list(meta.get("records", []))
        expected = {f"frame_{k:03d}.{name}" for k in range(len(records)) for name in FRAME_ARRAYS}
        if set(arrays) != expected:
            raise CheckpointError(f"{type(self).__name__}: the checkpoint's frame arrays {sorted(arrays)[:4]} do not "
                                  f"match its {len(records)} finished frames")
        super().load_extra_state({}, {k: v for k, v in meta.items() if k not in mine})
        self.records = records
        self.frame_arrays = [{name: np.asarray(arrays[f"frame_{k:03d}.{name}"]) for name in FRAME_ARRAYS}
                             for k in range(len(records))]
        self.frame = int(meta.get("frame", 0))
        self.frame_seconds = float(meta.get("frame_seconds", 0.0))
        self.first_step_seconds = float(meta.get("first_step_seconds", 0.0))

    def load_state_dict(self, arrays: dict, meta: dict, strict: bool = True) -> None:
        """The frame first: a checkpoint of frame k >= 1 has an optimizer without the decoder."""
        was_frozen = self.decoder_frozen
        self.frame = int(meta.get("extra", {}).get("frame", 0))
        if self.optimizer is not None and self.decoder_frozen != was_frozen:
            self.reset_optimizer(reshaped=True)
        super().load_state_dict(arrays, meta, strict)

    # ----- export

    def export(self, out_dir: str) -> list[str]:
        """frame_NNN.ply per finished frame, camera_NN.mp4 per camera over the frames, frames.json (module doc);
        before any frame has finished, the current points (points.ply) as papr-reconstruction-system."""
        if not self.records:
            return super().export(out_dir)
        from mindspore_impl.core.media import save_video
        from mindspore_impl.lift3d.export.point_cloud import export_point_cloud
        paths = []
        for k, stored in enumerate(self.frame_arrays):
            paths += export_point_cloud(out_dir, stored["points"], stored["influence"], stored["features"],
                                        name=f"frame_{k:03d}")
        renders = np.stack([stored["renders"] for stored in self.frame_arrays], 1)  # (cameras, frames, H, W, 3)
        for c in range(renders.shape[0]):
            paths += save_video(list(renders[c]), os.path.join(out_dir, f"camera_{c:02d}"), fps=self.cfg.video_fps,
                                formats=("mp4",))
        summary = {"warm_start": bool(self.cfg.warm_start), "frames": self.records}
        path = os.path.join(out_dir, "frames.json")
        os.makedirs(out_dir, exist_ok=True)
        paths.append(write_atomically(path, lambda f: json.dump(summary, f, indent=2), binary=False))
        return paths
