"""The image-to-3D system ("zero123-system", threestudio's threestudio/systems/zero123.py upstream): fit the 3D base's
field to one reference image seen from a known camera, and distil a view-conditioned prior (zero123-guidance) into
the views it does not show. Data: single-image-datamodule (neutral/lift3d/single_image_datamodule.py).

One training step (upstream `training_step` with freq.ref_or_zero123 "accumulate": both substeps, losses summed):
    host:  from self.rng in a fixed order: jitter of the random views, of the reference view, the random views'
           ambient ratio (ambient_ratio_min + (1 - min) U) and shading, the near-view offsets (3drec), the guidance's
           timesteps and noises; T of each random view relative to the reference camera
    graph: render the random views -> zero123 guidance (sds) + their regularisers (orient, sparsity, opaque,
           z_variance, normal smoothness) + the zero123 3drec terms (near-view consistency: a second render 0.05 away;
           target-depth smoothness); render the reference view with ambient light only (upstream: shading "diffuse",
           ambient_ratio 1) -> rgb MSE against the image over the render's background, mask BCE (or MSE, upstream's
           threestudio zero123.py) against alpha > 0.5, the optional depth (least-squares aligned MSE and 1 - Pearson
           against a monocular depth) and normal terms when the data carries those maps, input-depth smoothness,
           and the same regularisers (sparsity only on the random views, as upstream). Each weight is a scheduled
           scalar entering as a tensor -> core/train_step.py (backward, clip, optimizer)
Terms whose weight is never non-zero are not computed. "alternate" (upstream: ref_only_steps, then the reference
every n_ref steps, the guidance otherwise) compiles one step per substep.

The zero123 3drec losses (cvlab-columbia/zero123 3drec/run_zero123.py; their weights there: near view 1e5 (1e4 in
full_config_objaverse.yml), input-depth smoothness 0.1 x depth_smooth_weight, target-depth smoothness
depth_smooth_weight from half the steps on, which a step schedule [N/2, 0, w, N/2] expresses):
- near_view: mean |rgb_near - rgb| + mean |depth_near - depth|, the near camera at eye + 0.05 x a random unit vector
  looking at the origin (same intrinsics, same ray jitter). 3drec compares latent renders; this field renders RGB;
- input_depth_smooth / target_depth_smooth: (mean |dx depth| + mean |dy depth|) / 2 of the reference / random views;
- depth is E[t] composited over a background 10 units away (3drec's bg_dist), so silhouettes count as edges.
Not carried over: SJC's emptiness loss (weight 0 in both 3drec configs) and upstream's lambda_3d_normal_smooth
(needs normal_perturb, which nerf-volume-renderer does not return: a non-zero weight is a config error).

Checkpoints hold the 3D modules and the optimizer only: the guidance (the frozen Zero123 and the cached reference
embeddings) is never saved (core/system.py unsaved_modules). Validation view 0 is the reference view: its render,
the image (over the render's background) and the PSNR (`validation_metrics()`: ref_psnr).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindspore import ops

from mindspore_impl.lift3d.losses import (REGULARIZERS, composite_depth, composite_target, depth_alignment_loss,
                                          depth_correlation_loss, depth_smooth_loss, mask_loss, mask_mse_loss,
                                          near_view_loss, normal_consistency_loss, normal_smooth_loss,
                                          photometric_loss, regularizer_losses)
from mindspore_impl.lift3d.systems.base import BaseLift3DSystem, BaseLift3DSystemConfig
from neutral import registry
from neutral.config import ConfigError, parse_structured
from neutral.lift3d.single_image_datamodule import near_view_rays, random_unit_offsets

# loss terms in the order of the loss-weight tensor and of the aux output
LOSS_TERMS = ("sds", "rgb", "mask", "depth", "depth_rel", "normal", "normal_smooth", "3d_normal_smooth", "near_view",
              "input_depth_smooth", "target_depth_smooth") + REGULARIZERS
REFERENCE_TERMS = ("rgb", "mask", "depth", "depth_rel", "normal", "input_depth_smooth")
GUIDANCE_TERMS = ("sds", "near_view", "target_depth_smooth")
MASK_LOSSES = ("bce", "mse")


def _default_loss() -> dict:
    return {"lambda_sds": 0.1, "lambda_rgb": 500.0, "lambda_mask": 50.0}


@dataclass
class FreqConfig:
    """threestudio zero123.py `freq`: which substeps run at a step."""
    ref_or_zero123: str = "accumulate"  # "accumulate": both every step; "alternate"
    ref_only_steps: int = 0  # alternate: only the reference before this step
    n_ref: int = 2  # alternate: the reference at steps divisible by n_ref, the guidance otherwise
    guidance_eval: int = 0  # upstream's guidance-eval images: not supported (0)


@dataclass
class Zero123SystemConfig(BaseLift3DSystemConfig):
    background_type: str = "solid-color-background"
    # Zero123 takes no prompt: upstream configs name a dummy processor, accepted and unused
    prompt_processor_type: str = "dummy-prompt-processor"
    prompt_processor: dict = field(default_factory=dict)
    guidance_type: str = "zero123-guidance"
    guidance: dict = field(default_factory=dict)
    loss: dict = field(default_factory=_default_loss)
    freq: dict = field(default_factory=dict)
    refinement: bool = False  # upstream's mesh refinement stage: not supported
    ambient_ratio_min: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    # "bce" (Animate124 stage 1, issue 17) | "mse" (threestudio zero123.py at HEAD)
    mask_loss_type: str = "bce"
    near_view_distance: float = field(default=0.05, metadata={"min": 1e-6})  # 3drec sample_near_eye norm


def substeps(freq: FreqConfig, global_step: int) -> tuple[bool, bool]:
    """(reference substep, guidance substep) at this step (threestudio zero123.py training_step)."""
    if freq.ref_or_zero123 == "accumulate":
        return True, True
    do_ref = global_step < freq.ref_only_steps or global_step % freq.n_ref == 0
    return do_ref, not do_ref


def psnr(image: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(target, np.float64)) ** 2))
    return -10.0 * math.log10(max(mse, 1e-10))


@registry.register("zero123-system")
class Zero123System(BaseLift3DSystem):
    Config = Zero123SystemConfig

    # ----- construction

    def configure(self) -> None:
        cfg = self.cfg
        classes = self.find_classes(("guidance",))
        sub = self.parse_sub_configs(classes)
        self.loss_active = self.check_losses(sub, LOSS_TERMS)
        self._reference_active = {**self.loss_active, "sparsity": False}  # upstream: sparsity on random views only
        self.freq = parse_structured(FreqConfig, cfg.freq, "system.freq")
        self._check(classes, sub)
        check = getattr(classes["guidance"], "check_files", None)
        if check is not None:  # checkpoint, model YAML and reference image, before anything is built
            check(sub["guidance"])
        self.build_3d(classes, sub)
        g_cls = classes["guidance"]
        self.guidance = g_cls.from_config(sub["guidance"]) if hasattr(g_cls, "from_config") else g_cls(sub["guidance"])
        if cfg.use_recompute:
            self.apply_recompute()
        self._steps: dict = {}
        self._shading_takes_ratio = "ambient_ratio" in inspect.signature(self.material.draw_shading).parameters
        self.val_psnrs: list[float] = []

    def _check(self, classes: dict, sub: dict) -> None:
        """Settings this port does not run, and terms without their inputs: one line each, before any build."""
        cfg, active = self.cfg, self.loss_active
        if cfg.prompt_processor_type not in ("dummy-prompt-processor", ""):
            raise ConfigError(f"system.prompt_processor_type: zero123-system takes no prompt (use "
                              f"'dummy-prompt-processor'), got {cfg.prompt_processor_type!r}")
        if cfg.refinement:
            raise ConfigError("system.refinement=true (upstream's mesh refinement) is not supported; set it to false")
        if cfg.mask_loss_type not in MASK_LOSSES:
            raise ConfigError(f"system.mask_loss_type must be one of {MASK_LOSSES}, got {cfg.mask_loss_type!r}")
        if self.freq.ref_or_zero123 not in ("accumulate", "alternate"):
            raise ConfigError(f"system.freq.ref_or_zero123 must be 'accumulate' or 'alternate', got "
                              f"{self.freq.ref_or_zero123!r}")
        if self.freq.ref_or_zero123 == "alternate" and self.freq.n_ref < 1:
            raise ConfigError(f"system.freq.n_ref must be >= 1, got {self.freq.n_ref}")
        if self.freq.guidance_eval:
            raise ConfigError("system.freq.guidance_eval > 0 (upstream's guidance-eval images) is not supported; set 0")
        if active["3d_normal_smooth"]:
            raise ConfigError("system.loss.lambda_3d_normal_smooth needs normal_perturb, which nerf-volume-renderer "
                              "does not return; set it to 0 (lambda_normal_smooth smooths the rendered normals)")
        needs_normals = [t for t in ("normal_smooth", "normal") if active[t]]
        has_normals = getattr(sub["geometry"], "normal_type", None) is not None and (
            getattr(classes["material"], "requires_normal", False) or sub["renderer"].return_comp_normal)
        if needs_normals and not has_normals:
            raise ConfigError(f"system.loss.lambda_{needs_normals[0]} > 0 needs rendered normals: set "
                              "system.geometry.normal_type (e.g. analytic) and system.renderer.return_comp_normal=true")

    # ----- per-step host work

    def loss_weight_values(self) -> np.ndarray:
        return np.array([float(self.C(self.loss_weights[t])) for t in LOSS_TERMS], np.float32)

    def _shading(self, ambient_ratio: float) -> dict:
        if self._shading_takes_ratio:
            return self.material.draw_shading(self.rng, training=True, ambient_ratio=ambient_ratio)
        return self.material.draw_shading(self.rng, training=True)

    def reference_shading(self) -> str:
        """Upstream renders the reference with shading "diffuse" and ambient ratio 1 (= the clamped albedo);
        without a shaded material, its one mode."""
        return "diffuse" if getattr(self.material, "requires_normal", False) else \
            self.material.draw_shading(self.rng, training=False)["shading"]

    def _require(self, batch: dict, key: str, term: str) -> np.ndarray:
        value = batch.get(key)
        if value is None:
            kind = key.split("_")[1]
            raise ConfigError(f"system.loss.lambda_{term} > 0 needs a {kind} map of the input image: set "
                              f"data.requires_{kind}=true (it reads <image>_{kind}.png), or set lambda_{term}=0")
        return np.asarray(value, np.float32)

    def draw_step_inputs(self, batch: dict, global_step: int) -> dict:
        """Every input of one training step (numpy), the shading modes and the substeps. The order of the draws
        from self.rng is fixed: random-view jitter, reference jitter, ambient ratio and shading, near offsets,
        guidance timesteps and noises."""
        rand = batch["random_camera"]
        active = self.loss_active
        do_ref, do_guidance = substeps(self.freq, global_step)
        rays_o = np.asarray(rand["rays_o"], np.float32)
        b, h, w, _ = rays_o.shape
        ref_rays_o = np.asarray(batch["rays_o"], np.float32)
        _, hr, wr, _ = ref_rays_o.shape
        s = self.renderer.jitter_samples
        jitter = self.rng.random((b, h, w, s), dtype=np.float32)
        ref_jitter = self.rng.random((1, hr, wr, s), dtype=np.float32)
        ratio = self.cfg.ambient_ratio_min + (1.0 - self.cfg.ambient_ratio_min) * self.rng.random()
        shading = self._shading(ratio)
        ambient, diffuse = self.light_colors(shading)
        if self._shading_takes_ratio:
            ref_ambient, ref_diffuse = np.ones(3, np.float32), np.zeros(3, np.float32)
        else:
            ref_ambient, ref_diffuse = ambient, diffuse
        near_o, near_d = rays_o, np.asarray(rand["rays_d"], np.float32)
        if active["near_view"]:
            offsets = random_unit_offsets(self.rng, b, self.cfg.near_view_distance)
            near_o, near_d = near_view_rays(rand["camera_positions"], rand["fovy"], h, w, offsets)
        g = self.guidance.sample_inputs(self.rng, b)
        T = self.guidance.camera_T(rand["elevation"], rand["azimuth"], rand["camera_distances"])
        zeros = np.zeros((1, hr, wr, 1), np.float32)
        ref_depth = self._require(batch, "ref_depth", "depth" if active["depth"] else "depth_rel") \
            if (active["depth"] or active["depth_rel"]) else zeros
        ref_normal = self._require(batch, "ref_normal", "normal") if active["normal"] else \
            np.zeros((1, hr, wr, 3), np.float32)
        f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
        return {"shading": shading["shading"], "ref_shading": self.reference_shading(), "do_ref": do_ref,
                "do_guidance": do_guidance,
                "rays_o": rays_o, "rays_d": f32(rand["rays_d"]), "light_positions": f32(rand["light_positions"]),
                "jitter": jitter, "ambient_color": ambient, "diffuse_color": diffuse,
                "near_rays_o": f32(near_o), "near_rays_d": f32(near_d),
                "ref_rays_o": ref_rays_o, "ref_rays_d": f32(batch["rays_d"]),
                "ref_light_positions": f32(batch["light_positions"]), "ref_jitter": ref_jitter,
                "ref_ambient_color": f32(ref_ambient), "ref_diffuse_color": f32(ref_diffuse),
                "ref_rgb": f32(batch["rgb"]), "ref_mask": f32(batch["mask"]), "ref_depth": ref_depth,
                "ref_normal": ref_normal, "T": f32(T), "t": g["t"], "noise": g["noise"], "vae_noise": g["vae_noise"],
                "loss_weights": self.loss_weight_values()}

    # ----- the step (graph part)

    STEP_INPUTS = ("rays_o", "rays_d", "light_positions", "jitter", "ambient_color", "diffuse_color", "near_rays_o",
                   "near_rays_d", "ref_rays_o", "ref_rays_d", "ref_light_positions", "ref_jitter", "ref_ambient_color",
                   "ref_diffuse_color", "ref_rgb", "ref_mask", "ref_depth", "ref_normal", "T", "t", "noise",
                   "vae_noise", "loss_weights")

    def guidance_terms(self, shading, rays_o, rays_d, light_positions, jitter, ambient_color, diffuse_color,
                       near_rays_o, near_rays_d, T, t, noise, vae_noise):
        """The random-view substep -> ([one value per LOSS_TERMS entry, 0 where it does not apply], grad norm)."""
        active, zero = self.loss_active, ops.zeros((), ms.float32)
        out = self.renderer(rays_o, rays_d, light_positions, jitter, None, shading, ambient_color, diffuse_color)
        terms = {name: zero for name in LOSS_TERMS}
        terms["sds"], grad_norm = self.guidance(out["comp_rgb"], T, t, noise, vae_noise)
        depth = composite_depth(out["depth"], out["opacity"])
        if active["near_view"]:
            near = self.renderer(near_rays_o, near_rays_d, light_positions, jitter, None, shading, ambient_color,
                                 diffuse_color)
            terms["near_view"] = near_view_loss(near["comp_rgb"], out["comp_rgb"],
                                                composite_depth(near["depth"], near["opacity"]), depth)
        if active["target_depth_smooth"]:
            terms["target_depth_smooth"] = depth_smooth_loss(depth)
        if active["normal_smooth"]:
            terms["normal_smooth"] = normal_smooth_loss(out["comp_normal"])
        regs = regularizer_losses(out, active)
        for i, name in enumerate(REGULARIZERS):
            terms[name] = regs[i]
        return [terms[name] for name in LOSS_TERMS], grad_norm

    def reference_terms(self, shading, rays_o, rays_d, light_positions, jitter, ambient_color, diffuse_color, rgb,
                        mask, ref_depth, ref_normal):
        """The reference substep -> [one value per LOSS_TERMS entry] (no sparsity here, as upstream)."""
        active, zero = self.loss_active, ops.zeros((), ms.float32)
        out = self.renderer(rays_o, rays_d, light_positions, jitter, None, shading, ambient_color, diffuse_color)
        terms = {name: zero for name in LOSS_TERMS}
        terms["rgb"] = photometric_loss(out["comp_rgb"], composite_target(rgb, mask, out["comp_rgb_bg"]))
        if active["mask"]:
            fn = mask_loss if self.cfg.mask_loss_type == "bce" else mask_mse_loss
            terms["mask"] = fn(out["opacity"], mask)
        if active["depth"]:
            terms["depth"] = depth_alignment_loss(out["depth"], ref_depth, mask)
        if active["depth_rel"]:
            terms["depth_rel"] = depth_correlation_loss(out["depth"], ref_depth, mask)
        if active["normal"]:
            terms["normal"] = normal_consistency_loss(out["comp_normal"], ref_normal, mask)
        if active["input_depth_smooth"]:
            terms["input_depth_smooth"] = depth_smooth_loss(composite_depth(out["depth"], out["opacity"]))
        if active["normal_smooth"]:
            terms["normal_smooth"] = normal_smooth_loss(out["comp_normal"])
        regs = regularizer_losses(out, self._reference_active)
        for i, name in enumerate(REGULARIZERS):
            terms[name] = regs[i]
        return [terms[name] for name in LOSS_TERMS]

    def forward(self, shading, ref_shading, do_ref, do_guidance, rays_o, rays_d, light_positions, jitter,
                ambient_color, diffuse_color, near_rays_o, near_rays_d, ref_rays_o, ref_rays_d, ref_light_positions,
                ref_jitter, ref_ambient_color, ref_diffuse_color, ref_rgb, ref_mask, ref_depth, ref_normal, T, t,
                noise, vae_noise, loss_weights):
        """-> (loss, aux): aux = [loss] + one value per LOSS_TERMS entry (both substeps summed) + [grad norm]."""
        zero = ops.zeros((), ms.float32)
        terms = [zero for _ in LOSS_TERMS]
        grad_norm = zero
        if do_guidance:
            part, grad_norm = self.guidance_terms(shading, rays_o, rays_d, light_positions, jitter, ambient_color,
                                                  diffuse_color, near_rays_o, near_rays_d, T, t, noise, vae_noise)
            terms = [a + b for a, b in zip(terms, part)]
        if do_ref:
            part = self.reference_terms(ref_shading, ref_rays_o, ref_rays_d, ref_light_positions, ref_jitter,
                                        ref_ambient_color, ref_diffuse_color, ref_rgb, ref_mask, ref_depth, ref_normal)
            terms = [a + b for a, b in zip(terms, part)]
        loss = terms[0] * loss_weights[0]
        for i in range(1, len(terms)):
            loss = loss + terms[i] * loss_weights[i]
        return loss, ops.stack([loss] + terms + [grad_norm])

    def _step_fn(self, shading: str, ref_shading: str, do_ref: bool, do_guidance: bool):
        """The compiled (or PyNative) step for one combination of shading modes and substeps, built on first use."""
        key = (shading, ref_shading, do_ref, do_guidance)
        if key not in self._steps:
            def forward_fn(*inputs):
                return self.forward(shading, ref_shading, do_ref, do_guidance, *inputs)
            self._steps[key] = self.make_train_step(forward_fn)
        return self._steps[key]

    def run_step(self, inputs: dict) -> dict[str, float]:
        step = self._step_fn(inputs["shading"], inputs["ref_shading"], inputs["do_ref"], inputs["do_guidance"])
        _, aux = step(*[ms.Tensor(inputs[k]) for k in self.STEP_INPUTS])
        aux = aux.asnumpy()
        metrics = {"loss": float(aux[0])}
        skip = set() if inputs["do_ref"] else set(REFERENCE_TERMS)
        skip |= set() if inputs["do_guidance"] else set(GUIDANCE_TERMS)
        for i, name in enumerate(LOSS_TERMS):
            if self.loss_active[name] and name not in skip:
                metrics[f"loss_{name}"] = float(aux[1 + i])
        if inputs["do_ref"]:
            metrics["train_ref_psnr"] = -10.0 * math.log10(max(float(aux[1 + LOSS_TERMS.index("rgb")]), 1e-10))
        if inputs["do_guidance"]:
            metrics.update({"grad_norm_sds": float(aux[-1]), "t": float(np.mean(inputs["t"])),
                            "min_step": self.guidance.min_step, "max_step": self.guidance.max_step})
        metrics.update({f"lambda_{name}": float(w) for name, w in zip(LOSS_TERMS, inputs["loss_weights"])
                        if self.loss_active[name]})
        return metrics

    def training_step(self, batch: dict, global_step: int) -> dict[str, float]:
        return self.run_step(self.draw_step_inputs(batch, global_step))

    # ----- evaluation

    def validation_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        """View 0 is the reference (its batch has the image): rendered with the training's reference shading, its
        PSNR against the image over the render's background goes to val_psnrs. Every view shows that image
        ("input") beside its render, so the validation sheet has the same rows for every view."""
        if batch.get("rgb") is None:
            images = self.eval_images(batch)
            images = {"rgb": images.pop("rgb"), "input": self._val_input(images["opacity"].shape[:2]), **images}
            return images
        ones, zeros = ms.Tensor(np.ones(3, np.float32)), ms.Tensor(np.zeros(3, np.float32))
        colors = (ones, zeros) if self._shading_takes_ratio else (None, None)
        out = self.renderer.render_chunked(
            ms.Tensor(np.asarray(batch["rays_o"], np.float32)), ms.Tensor(np.asarray(batch["rays_d"], np.float32)),
            ms.Tensor(np.asarray(batch["light_positions"], np.float32)), None, None, self.reference_shading(),
            *colors)
        out = {k: v.asnumpy() for k, v in out.items()}
        rgb = np.clip(out["comp_rgb"][0], 0.0, 1.0)
        alpha = np.asarray(batch["mask"][0], np.float32)
        gt = np.clip(np.asarray(batch["rgb"][0], np.float32) * alpha + out["comp_rgb_bg"][0] * (1.0 - alpha), 0, 1)
        self.val_psnrs = [psnr(rgb, gt)]
        self._val_reference = gt
        images = {"rgb": rgb, "input": gt}
        if "comp_normal" in out:
            images["normal"] = np.clip(out["comp_normal"][0], 0.0, 1.0)
        images["opacity"] = np.clip(out["opacity"][0], 0.0, 1.0)
        return images

    def _val_input(self, size) -> np.ndarray:
        """The reference image of the latest validation at `size` (grey before one)."""
        ref = getattr(self, "_val_reference", None)
        if ref is None or ref.shape[:2] != tuple(size):
            return np.full(tuple(size) + (3,), 0.5, np.float32)
        return ref

    def validation_metrics(self) -> dict[str, float]:
        return {"ref_psnr": self.val_psnrs[0]} if self.val_psnrs else {}
