"""Reconstruction with PAPR points ("papr-reconstruction-system"): fit a `papr-point-cloud` rendered by `papr-renderer`
to posed images (a transforms.json folder), as upstream zvict/papr train.py does, inside this project's trainer
(checkpoints, exact resume, validation PSNR, test orbit video, export).

Why a subclass of the NeRF reconstruction system and not a branch in it: the two share the losses and the held-out
evaluation (validation_step, val_psnr, validation_metrics are inherited) and nothing of the step. The NeRF step
renders flat random rays with sampling jitter and empty-space buckets; this one renders image patches (the UNet
decoder needs whole neighbourhoods, so the data module must set data.patch_size), changes the point set between
steps (pruning and growing, which rebuild the optimizer and, when the capacity changes, the compiled step) and loads
checkpoints whose parameter shapes differ from a fresh build. The export (points.ply instead of a mesh) and the
recompute cells (the attention MLPs and the decoder) come from the 3D base, which asks the geometry and renderer.

One training step:
    host:  pruning / growing when papr.prune_due / grow_due say so (upstream order: prune, then grow), each followed by
           fresh Adam moments (upstream re-creates its optimizers); then the data module's patches (B,p,p,3) with
           their pixels, and from self.rng a random background colour per patch (random_background, RGBA images)
    graph: papr-renderer on the patches -> comp_rgb over that colour; target = rgb * alpha + colour * (1 - alpha) ->
           lambda_rgb * MSE + lambda_mask * BCE(opacity, alpha) + lambda_sparsity / lambda_opaque (lift3d/losses.py)
           -> core/train_step.py (backward, clip, Adam)
Upstream's loss is MSE + 0.01 LPIPS; LPIPS (a VGG network) is not used here. Upstream's cosine learning-rate
schedules with warm-up are not used either (the trainer has constant rates per group). Positions live in world units
(the renderer multiplies by coord_scale), so upstream's position rate 2e-3 in PAPR units is 2e-3 / coord_scale here.

Point-set changes (`change_points`): a change within the capacity bucket writes the Parameters in place (copy_, seen
by compiled graphs) and zeroes the optimizer moments in place, so the compiled step is kept; a change of capacity
gives the Parameters new shapes, so the optimizer and every compiled step are rebuilt (the old compiled functions stay
referenced: MindSpore 2.7.2 keys grad graphs by function id, see tests/parity.py _RETIRED_STEPS). A prune that would
leave fewer than k points is skipped (upstream starts pruning late, after influences have moved; with influence_init 0
an early prune at threshold 0 would remove every point).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindspore import ops

from mindspore_impl.core.checkpoint import CheckpointError
from mindspore_impl.core.parameters import write_parameter
from mindspore_impl.core.system import MODEL_PREFIX
from mindspore_impl.lift3d.losses import (background_rgb, composite_background, composite_target, image_regularizers,
                                          mask_loss, photometric_loss)
from mindspore_impl.lift3d.systems.reconstruction_system import ReconstructionSystem, ReconstructionSystemConfig
from neutral import registry
from neutral.config import ConfigError
from neutral.lift3d import papr

# loss terms in the order of the loss-weight tensor and of the aux output (no orient / z_variance: PAPR has no
# normals and no samples along the ray)
PAPR_LOSS_TERMS = ("rgb", "mask", "sparsity", "opaque")
POINT_ARRAYS = ("points", "points_influ_scores", "pc_feats", "point_mask")


def _default_loss() -> dict:
    return {"lambda_rgb": 1.0, "lambda_mask": 0.0, "lambda_sparsity": 0.0, "lambda_opaque": 0.0}


def _default_optimizer() -> dict:
    """Upstream configs/default.yml training.lr (Adam, no weight decay): points 2e-3 in PAPR units = 2e-4 in world
    units at coord_scale 10, influence 1e-3, features 1e-3, attention MLPs 3e-4, decoder (upstream "generator")
    1e-4."""
    return {"name": "Adam", "args": {"betas": [0.9, 0.999], "eps": 1.0e-8},
            "params": {"geometry.points": {"lr": 2.0e-4}, "geometry.points_influ_scores": {"lr": 1.0e-3},
                       "geometry.pc_feats": {"lr": 1.0e-3}, "renderer.proximity_attn": {"lr": 3.0e-4},
                       "renderer.decoder": {"lr": 1.0e-4}}}


@dataclass
class PAPRReconstructionSystemConfig(ReconstructionSystemConfig):
    geometry_type: str = "papr-point-cloud"
    renderer_type: str = "papr-renderer"
    material_type: str = "no-material"  # unused by papr-renderer (the decoder makes the colour)
    background_type: str = "solid-color-background"
    loss: dict = field(default_factory=_default_loss)
    optimizer: dict = field(default_factory=_default_optimizer)


@registry.register("papr-reconstruction-system")
class PAPRReconstructionSystem(ReconstructionSystem):
    Config = PAPRReconstructionSystemConfig
    LOSS_TERMS = PAPR_LOSS_TERMS

    def configure(self) -> None:
        classes = self.find_classes()
        sub = self.parse_sub_configs(classes)
        if not isinstance(sub["geometry"], papr.PointCloudConfig) or \
                not isinstance(sub["renderer"], papr.PAPRRendererConfig):
            raise ConfigError("papr-reconstruction-system needs system.geometry_type papr-point-cloud and "
                              f"system.renderer_type papr-renderer, got {self.cfg.geometry_type} and "
                              f"{self.cfg.renderer_type} (for the NeRF renderer: system_type "
                              "multiview-reconstruction-system)")
        self.loss_active = self.check_losses(sub, self.LOSS_TERMS)
        self.build_3d(classes, sub)
        if self.cfg.use_recompute:
            self.apply_recompute()
        self._steps: dict = {}
        self._retired_steps: list = []  # compiled steps replaced after a capacity change, kept alive (module doc)
        self.val_psnrs: list[float] = []
        self.point_events: list[dict] = []  # one record per prune / grow (step, kind, count, points, capacity)

    # ----- the point set between steps

    def reset_optimizer(self, reshaped: bool) -> None:
        """Fresh Adam moments after a point-set change (upstream re-creates its optimizers). Same shapes: zero the
        moments and the step count in place (compiled steps stay valid); new shapes: a new optimizer and new steps."""
        if self.optimizer is None:
            return
        if reshaped:
            self._retired_steps.append(dict(self._steps))
            self._steps.clear()
            self._retired_steps.append(self.optimizer)
            self.optimizer = None
            self.configure_optimizers()
            return
        for p in self.optimizer.state_parameters().values():  # moments and optimizer_step (cast to its int32)
            write_parameter(p, np.zeros(p.shape, np.float32))

    def change_points(self, global_step: int) -> dict:
        """Prune and grow when the schedule says so -> {points_pruned, points_added} of what happened."""
        g, cfg = self.geometry, self.geometry.cfg
        done, reshaped = {}, False
        if papr.prune_due(cfg, global_step):
            threshold = papr.prune_threshold(cfg, global_step)
            _, influence, _ = g.active_arrays()
            kept = int((influence.reshape(-1) > threshold).sum())
            if kept < self.renderer.k:
                print(f"[papr] step {global_step}: prune skipped: only {kept} of {g.num_active} points have influence "
                      f"> {threshold} (fewer than k = {self.renderer.k})", flush=True)
            else:
                removed, changed = g.prune(threshold)
                reshaped |= changed
                done["points_pruned"] = removed
                self.point_events.append({"step": global_step, "kind": "prune", "count": removed,
                                          "points": g.num_active, "capacity": g.capacity})
        if papr.grow_due(cfg, global_step):
            added, changed = g.grow(cfg.grow_count, self.rng)
            reshaped |= changed
            done["points_added"] = added
            self.point_events.append({"step": global_step, "kind": "grow", "count": added, "points": g.num_active,
                                      "capacity": g.capacity})
        if done:
            self.reset_optimizer(reshaped)
        return done

    # ----- per-step host work

    def loss_weight_values(self) -> np.ndarray:
        return np.array([float(self.C(self.loss_weights[t])) for t in self.LOSS_TERMS], np.float32)

    def draw_step_inputs(self, batch: dict) -> dict:
        """Every input of one training step as numpy arrays (patches (B,p,p,.)), plus whether the mask term runs.
        Draws from self.rng: one background colour per patch (RGBA images with random_background)."""
        rays_o = np.asarray(batch["rays_o"], np.float32)
        b, h, w, _ = rays_o.shape
        p = self.renderer.cfg.patch_size
        if (h, w) != (p, p):
            got = "random rays" if (h, w) == (1, 1) else f"{h}x{w} patches"
            raise ConfigError(f"papr-reconstruction-system trains on {p}x{p} image patches "
                              f"(system.renderer.patch_size) but the data module gives {got}; set data.patch_size={p}")
        has_alpha = batch.get("mask") is not None
        if has_alpha and self.cfg.random_background:
            bg_color, bg_mask = self.rng.random((b, 3), dtype=np.float32), np.ones((), np.float32)
        else:
            bg_color, bg_mask = np.zeros((b, 3), np.float32), np.zeros((), np.float32)
        alpha = np.asarray(batch["mask"], np.float32) if has_alpha else np.ones((b, h, w, 1), np.float32)
        return {"use_mask": has_alpha and self.loss_active["mask"], "rays_o": rays_o,
                "rays_d": np.asarray(batch["rays_d"], np.float32), "bg_color": bg_color, "bg_mask": bg_mask,
                "target_rgb": np.asarray(batch["rgb"], np.float32), "target_alpha": alpha,
                "loss_weights": self.loss_weight_values()}

    # ----- the step (graph part)

    STEP_INPUTS = ("rays_o", "rays_d", "bg_color", "bg_mask", "target_rgb", "target_alpha", "loss_weights")

    def forward(self, use_mask, rays_o, rays_d, bg_color, bg_mask, target_rgb, target_alpha, loss_weights):
        """Patches rays (B,p,p,3), targets (B,p,p,.) -> (loss, aux (5,)): aux = [loss, rgb, mask, sparsity, opaque]."""
        out = self.renderer(rays_o, rays_d)
        rgb = composite_background(out, bg_color, bg_mask)
        target = composite_target(target_rgb, target_alpha, background_rgb(out, bg_color, bg_mask))
        loss_mask = mask_loss(out["opacity"], target_alpha) if use_mask else ops.zeros((), ms.float32)
        sparsity, opaque, _ = image_regularizers(out, dict(self.loss_active, z_variance=False))
        terms = [photometric_loss(rgb, target), loss_mask, sparsity, opaque]
        loss = terms[0] * loss_weights[0]
        for i in range(1, len(terms)):
            loss = loss + terms[i] * loss_weights[i]
        return loss, ops.stack([loss] + terms)

    def _step_fn(self, use_mask: bool):
        """The compiled (or PyNative) step for one mask setting, built on first use (and after a capacity change)."""
        if use_mask not in self._steps:
            def forward_fn(*inputs):
                return self.forward(use_mask, *inputs)
            self._steps[use_mask] = self.make_train_step(forward_fn)
        return self._steps[use_mask]

    def run_step(self, inputs: dict) -> dict[str, float]:
        tensors = [ms.Tensor(inputs[k]) for k in self.STEP_INPUTS]
        _, aux = self._step_fn(inputs["use_mask"])(*tensors)
        aux = aux.asnumpy()
        metrics = {"loss": float(aux[0])}
        for i, t in enumerate(self.LOSS_TERMS):
            if self.loss_active[t] and (t != "mask" or inputs["use_mask"]):
                metrics[f"loss_{t}"] = float(aux[1 + i])
        metrics["train_psnr"] = -10.0 * math.log10(max(float(aux[1]), 1e-10))
        metrics["num_points"] = float(self.geometry.num_active)
        metrics.update({f"lambda_{t}": float(w) for t, w in zip(self.LOSS_TERMS, inputs["loss_weights"])})
        return metrics

    def training_step(self, batch: dict, global_step: int) -> dict[str, float]:
        changes = self.change_points(global_step)
        metrics = self.run_step(self.draw_step_inputs(batch))
        metrics.update({k: float(v) for k, v in changes.items()})
        return metrics

    # ----- checkpoints whose point count differs from a fresh build

    def extra_state(self) -> tuple[dict, dict]:
        return {}, {"point_events": list(self.point_events)}

    def load_extra_state(self, arrays: dict, meta: dict) -> None:
        if arrays or set(meta) - {"point_events"}:
            raise CheckpointError(f"{type(self).__name__} got extra state it does not know: arrays {sorted(arrays)}, "
                                  f"meta {sorted(meta)}")
        self.point_events = list(meta.get("point_events", []))

    def load_state_dict(self, arrays: dict, meta: dict, strict: bool = True) -> None:
        """The point set first (its capacity and active count from the checkpoint's point_mask; a new capacity
        rebuilds the optimizer so its moments take the checkpoint's shapes), then everything as the base does."""
        keys = [f"{MODEL_PREFIX}geometry.{name}" for name in POINT_ARRAYS]
        if all(k in arrays for k in keys):
            pos, infl, feats, mask = (np.asarray(arrays[k]) for k in keys)
            n = int(round(float(mask.sum())))
            where = "checkpoint (model) geometry.point_mask"
            if mask.ndim != 1 or not (np.all(mask[:n] == 1.0) and not np.any(mask[n:])):
                raise CheckpointError(f"{where}: expected n ones followed by zeros (the real points first)")
            g = self.geometry
            capacity = int(pos.shape[0])
            try:
                bucket = papr.bucketed_count(n, g.cfg.point_buckets)
            except ValueError:
                bucket = None
            if bucket != capacity:
                raise CheckpointError(f"{where}: {n} points stored at capacity {capacity}, but this config's "
                                      f"system.geometry.point_buckets {list(g.cfg.point_buckets)} give {bucket}; use "
                                      "the point_buckets of the run that wrote the checkpoint")
            same_rows = feats.ndim == 2 and feats.shape[1] == g.cfg.feature_dim
            if capacity != g.capacity and same_rows:
                g.set_points(pos[:n], infl[:n], feats[:n])
                self.reset_optimizer(reshaped=True)
            g.num_active = n
        super().load_state_dict(arrays, meta, strict)
