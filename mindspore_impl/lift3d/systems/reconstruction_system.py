"""The multiview reconstruction system ("multiview-reconstruction-system"): fit the 3D base's field (hash-grid
implicit volume, NeRF volume renderer, occupancy grid) to N posed images, as marching-waifu-x does with
instant-ngp after generating its views; the same geometry, evaluation, export and trial folders as SDS.

One training step (threestudio's image-conditioned systems, threestudio/systems/zero123.py upstream, for the losses):
    host:  the data module's batch of random rays with their pixels (neutral/lift3d/transforms_dataset.py), then
           from self.rng: renderer jitter, a random background colour per ray (when the images have alpha),
           shading mode and light mix
    graph: render -> comp_rgb over that colour; target = rgb * alpha + colour * (1 - alpha) ->
           lambda_rgb * MSE + lambda_mask * BCE(opacity, alpha) + the shared regularisers (lift3d/losses.py),
           each weight a scheduled scalar entering as a tensor -> core/train_step.py (backward, clip, AdamW)
Images without alpha are fitted as they are, over the background module's own colour (no mask term).
Empty-space skipping (renderer.compaction_buckets): before each step a small graph counts the step's samples in
occupied grid cells (no field evaluation), and the step evaluates the field only in the smallest buffer that holds
them, so nothing is dropped and the step equals the dense one; one compiled step per buffer size.
Validation renders held-out views and records their PSNR against the ground truth composited over the render's
background (`validation_metrics()`); the test orbit and the mesh export come from the 3D base.
The PAPR point renderer has its own system on this one (papr_reconstruction_system.py: patches, point-set changes,
point-cloud export); it inherits the evaluation below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindspore import ops

from mindspore_impl.lift3d.losses import (REGULARIZERS, background_rgb, composite_background, composite_target,
                                          mask_loss, photometric_loss, regularizer_losses)
from mindspore_impl.rendering.ray_sampling import ray_box_intersect, stratified_t
from mindspore_impl.lift3d.systems.base import BaseLift3DSystem, BaseLift3DSystemConfig
from neutral import registry
from neutral.config import ConfigError
from neutral.lift3d.nerf_volume_renderer import IMAGE_KEYS

# loss terms in the order of the loss-weight tensor and of the aux output
LOSS_TERMS = ("rgb", "mask") + REGULARIZERS


def _default_loss() -> dict:
    return {"lambda_rgb": 1.0, "lambda_mask": 0.1, "lambda_orient": 0.0, "lambda_sparsity": 0.0,
            "lambda_opaque": 0.0, "lambda_z_variance": 0.0}


@dataclass
class ReconstructionSystemConfig(BaseLift3DSystemConfig):
    background_type: str = "solid-color-background"
    loss: dict = field(default_factory=_default_loss)
    # images with alpha: render and target over a random colour per ray (the field cannot explain the background
    # with colour); false: over the background module's colour
    random_background: bool = True


def psnr(image: np.ndarray, target: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1]."""
    mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(target, np.float64)) ** 2))
    return -10.0 * math.log10(max(mse, 1e-10))


@registry.register("multiview-reconstruction-system")
class ReconstructionSystem(BaseLift3DSystem):
    Config = ReconstructionSystemConfig

    def configure(self) -> None:
        classes = self.find_classes()
        sub = self.parse_sub_configs(classes)
        if self.cfg.renderer_type == "papr-renderer":
            raise ConfigError("system.renderer_type papr-renderer: reconstruction with PAPR points trains on image "
                              "patches; use system_type papr-reconstruction-system (configs/papr-recon.yaml) with "
                              "data.patch_size set")
        self.loss_active = self.check_losses(sub, LOSS_TERMS)
        if sub["renderer"].compaction_buckets and sub["renderer"].num_importance_samples:
            raise ConfigError("system.renderer.compaction_buckets: multiview-reconstruction-system skips empty space "
                              "only without importance samples; set num_importance_samples=0 or compaction_buckets=[]")
        self.build_3d(classes, sub)
        if self.cfg.use_recompute:
            self.apply_recompute()
        self._steps: dict = {}
        self._overflow_reported = False
        self.val_psnrs: list[float] = []  # per view of the latest validation

    # ----- per-step host work

    def loss_weight_values(self) -> np.ndarray:
        return np.array([float(self.C(self.loss_weights[t])) for t in LOSS_TERMS], np.float32)

    def draw_step_inputs(self, batch: dict) -> dict:
        """Every input of one training step as numpy arrays (rays flat), plus the shading mode and whether the mask
        term runs. The order of the draws from self.rng is fixed: jitter, background, shading."""
        rays_o = np.asarray(batch["rays_o"], np.float32)
        b, h, w, _ = rays_o.shape
        n = b * h * w
        jitter = self.rng.random((n, self.renderer.jitter_samples), dtype=np.float32)
        has_alpha = batch.get("mask") is not None
        if has_alpha and self.cfg.random_background:
            bg_color, bg_mask = self.rng.random((b, 3), dtype=np.float32), np.ones((), np.float32)
        else:
            bg_color, bg_mask = np.zeros((b, 3), np.float32), np.zeros((), np.float32)
        shading = self.material.draw_shading(self.rng, training=True)
        ambient, diffuse = self.light_colors(shading)
        alpha = np.asarray(batch["mask"], np.float32) if has_alpha else np.ones((b, h, w, 1), np.float32)
        light = np.broadcast_to(np.asarray(batch["light_positions"], np.float32).reshape(b, 1, 3), (b, h * w, 3))
        return {"shading": shading["shading"], "use_mask": has_alpha and self.loss_active["mask"],
                "rays_o": rays_o.reshape(n, 3), "rays_d": np.asarray(batch["rays_d"], np.float32).reshape(n, 3),
                "light_positions": np.ascontiguousarray(light.reshape(n, 3)), "jitter": jitter,
                "bg_color": bg_color, "bg_mask": bg_mask, "target_rgb": np.asarray(batch["rgb"], np.float32),
                "target_alpha": alpha, "ambient_color": ambient, "diffuse_color": diffuse,
                "loss_weights": self.loss_weight_values()}

    # ----- the step (graph part)

    STEP_INPUTS = ("rays_o", "rays_d", "light_positions", "jitter", "bg_color", "bg_mask", "target_rgb",
                   "target_alpha", "ambient_color", "diffuse_color", "loss_weights")

    def forward(self, shading, use_mask, bucket, rays_o, rays_d, light_positions, jitter, bg_color, bg_mask,
                target_rgb, target_alpha, ambient_color, diffuse_color, loss_weights):
        """Flat rays (R,3), jitter (R,S); targets (B,H,W,.) with B*H*W = R -> (loss, aux (8,)):
        aux = [loss, rgb, mask, orient, sparsity, opaque, z_variance, occupied samples]. bucket: the renderer's
        compaction buffer sizes ((0, 0): every sample evaluated)."""
        flat = self.renderer.render_ray_chunk(rays_o, rays_d, light_positions, jitter, None, shading, ambient_color,
                                              diffuse_color, bucket)
        out = {}
        for key in flat:
            out[key] = flat[key].reshape(target_rgb.shape[:3] + (-1,)) if key in IMAGE_KEYS else flat[key]
        rgb = composite_background(out, bg_color, bg_mask)
        target = composite_target(target_rgb, target_alpha, background_rgb(out, bg_color, bg_mask))
        loss_mask = mask_loss(out["opacity"], target_alpha) if use_mask else ops.zeros((), ms.float32)
        terms = [photometric_loss(rgb, target), loss_mask] + regularizer_losses(out, self.loss_active)
        loss = terms[0] * loss_weights[0]
        for i in range(1, len(terms)):
            loss = loss + terms[i] * loss_weights[i]
        return loss, ops.stack([loss] + terms + [flat["occupied"][0].astype(ms.float32)])

    def _step_fn(self, shading: str, use_mask: bool, bucket: tuple):
        """The compiled (or PyNative) step for one shading mode, mask setting and bucket, built on first use."""
        key = (shading, use_mask, bucket)
        if key not in self._steps:
            def forward_fn(*inputs):
                return self.forward(shading, use_mask, bucket, *inputs)
            self._steps[key] = self.make_train_step(forward_fn)
        return self._steps[key]

    # ----- empty-space skipping (renderer.compaction_buckets)

    def occupied_samples(self, rays_o, rays_d, jitter):
        """How many of the step's samples lie in occupied grid cells: the renderer's sample positions (no importance
        samples) looked up in its grid, without evaluating the field."""
        r = self.renderer
        near, far = ray_box_intersect(rays_o, rays_d, r.radius)
        u_c, _ = r._uniforms(jitter, rays_o.shape[0], rays_o)
        t = stratified_t(near, (far - near) / r.num_coarse, u_c)
        positions = (ops.expand_dims(rays_o, 1) + ops.expand_dims(rays_d, 1) * ops.expand_dims(t, 2)).reshape(-1, 3)
        return (r._occupancy(positions) > 0.5).astype(ms.int32).sum()

    def _bucket(self, rays_o, rays_d, jitter) -> tuple:
        """The smallest compaction bucket that holds this step's occupied samples with a margin (buckets off: dense)."""
        fractions = self.renderer.cfg.compaction_buckets
        if not fractions:
            return 0, 0
        if "count" not in self._steps:
            def count(rays_o, rays_d, jitter):
                return self.occupied_samples(rays_o, rays_d, jitter)
            self._steps["count"] = ms.jit(count) if ms.get_context("mode") == ms.GRAPH_MODE else count
        count = int(self._steps["count"](rays_o, rays_d, jitter).asnumpy())
        need = count + max(64, count // 50)  # the step's own count may differ by a few samples on cell borders
        n = rays_o.shape[0]
        for f in fractions:
            size = self.renderer.bucket_sizes(n, float(f))
            if size[0] >= need:
                return size
        return self.renderer.bucket_sizes(n, float(fractions[-1]))

    def run_step(self, inputs: dict) -> dict[str, float]:
        tensors = [ms.Tensor(inputs[k]) for k in self.STEP_INPUTS]
        bucket = self._bucket(tensors[0], tensors[1], tensors[3])
        _, aux = self._step_fn(inputs["shading"], inputs["use_mask"], bucket)(*tensors)
        aux = aux.asnumpy()
        if bucket[0] and aux[-1] > bucket[0] and not self._overflow_reported:  # not expected (see _bucket)
            print(f"[compaction] {int(aux[-1])} occupied samples overflowed a buffer of {bucket[0]}; the excess got "
                  "no density this step", flush=True)
            self._overflow_reported = True
        metrics = {"loss": float(aux[0])}
        for i, t in enumerate(LOSS_TERMS):
            if self.loss_active[t] and (t != "mask" or inputs["use_mask"]):
                metrics[f"loss_{t}"] = float(aux[1 + i])
        metrics["train_psnr"] = -10.0 * math.log10(max(float(aux[1]), 1e-10))
        samples = inputs["jitter"].size
        metrics.update(occupied_fraction=float(aux[-1]) / samples,
                       evaluated_fraction=(bucket[0] or samples) / samples)
        metrics.update({f"lambda_{t}": float(w) for t, w in zip(LOSS_TERMS, inputs["loss_weights"])})
        return metrics

    def training_step(self, batch: dict, global_step: int) -> dict[str, float]:
        return self.run_step(self.draw_step_inputs(batch))

    # ----- evaluation

    def validation_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        """The held-out view's render next to its ground truth (composited over the render's background); the
        view's PSNR goes to val_psnrs (cleared at view 0)."""
        out = self.render_eval(batch)
        images = {"rgb": np.clip(out["comp_rgb"][0], 0.0, 1.0)}
        if batch.get("rgb") is not None:
            gt = np.asarray(batch["rgb"][0], np.float32)
            if batch.get("mask") is not None:
                alpha = np.asarray(batch["mask"][0], np.float32)
                gt = gt * alpha + out["comp_rgb_bg"][0] * (1.0 - alpha)
            gt = np.clip(gt, 0.0, 1.0)
            if index == 0:
                self.val_psnrs = []
            self.val_psnrs.append(psnr(images["rgb"], gt))
            images["gt"] = gt
        if "comp_normal" in out:
            images["normal"] = np.clip(out["comp_normal"][0], 0.0, 1.0)
        images["opacity"] = np.clip(out["opacity"][0], 0.0, 1.0)
        return images

    @property
    def val_psnr(self):
        """Mean PSNR (dB) over the views of the latest validation (None before one)."""
        return float(np.mean(self.val_psnrs)) if self.val_psnrs else None

    def validation_metrics(self) -> dict[str, float]:
        """The latest validation's metrics: mean and lowest held-out PSNR."""
        if not self.val_psnrs:
            return {}
        return {"val_psnr": self.val_psnr, "val_psnr_min": float(np.min(self.val_psnrs))}
