"""Multiview score distillation (MVDream's "multiview-diffusion-guidance"), MindSpore.

One training step (MVDream-threestudio, threestudio/models/guidance/multiview_diffusion_guidance.py upstream):
  rgb (B,H,W,3) -> BCHW -> bilinear resize to image_size -> *2-1 -> VAE encode WITH gradient
  (posterior sample x scale_factor) -> latents (B,4,h,w); one timestep t for the whole batch;
  x_t = q_sample(latents, t, noise); UNet on [x_t, x_t] with [cond, uncond] contexts, camera
  normalize_camera(c2w) repeated, num_frames = n_view, no gradient; e = e_u + s (e_c - e_u).
Losses by `guidance_mode`:
  "x0":  x0 = predict_start_from_noise(x_t, t, e), optionally std-rescaled per group of n_view views
         towards x0 from e_c; loss = 0.5 * sum((latents - sg(x0))^2) / B.
  "sds": grad = (1 - alphas_cumprod[t]) (e - noise); loss = 0.5 * ||latents - sg(latents - grad)||^2 / B
         (upstream's recon_loss=False branch crashes on an undefined alphas_cumprod).
  "sjc": sigma = sqrt((1 - a_t)/a_t); z = y + sigma noise; e = CFG UNet(z / sqrt(1 + sigma^2), t);
         D = z - sigma e; grad = (y - D) / sigma; same surrogate loss, so a descent step moves y to D.
`grad_clip` (a scheduled value) clamps the per-element latent gradient in every mode.

Everything random (t, noise, the VAE posterior noise) enters `construct` as a tensor, so the whole
renderer-output -> loss path runs inside one GRAPH-mode training step. Host-side helpers
(`update_step`, `sample_inputs`) turn the schedules and an explicit numpy Generator into those tensors.

The UNet, VAE (and the text encoder, which lives in the prompt processor) are frozen: their parameters
have requires_grad=False, `trainable_params()` is empty, and training checkpoints must not contain them
(systems save `trainable_params()` of their own modules; `checkpoint_exclude_prefixes()` names them).

Twin: torch_ref/lift3d/guidance/multiview_diffusion_guidance.py.
"""
from __future__ import annotations

from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from neutral.registry import register
from neutral.lift3d.multiview_diffusion_guidance import (  # noqa: F401  (GuidanceError re-exported)
    Config, GuidanceError, GuidanceSchedule, check_checkpoint, check_config, sample_inputs)
from mindspore_impl.mvdream.cameras import normalize_camera
from mindspore_impl.core.parameters import write_parameter
from mindspore_impl.mvdream.schedule import NoiseSchedule


# ---------------------------------------------------------------- in-graph math

def camera_condition(c2w):
    """normalize_camera(c2w) flattened: translation scaled to unit norm (+1e-8), (B,4,4) -> (B,16)."""
    return normalize_camera(c2w)


def group_std(x, n_view: int):
    """Unbiased std over each group of n_view consecutive samples: (B,...) -> (B/n_view, 1)."""
    g = x.reshape(x.shape[0] // n_view, -1)
    n = g.shape[1]
    mean = g.mean(axis=1, keep_dims=True)
    return ops.sqrt(((g - mean) ** 2).sum(axis=1, keepdims=True) / (n - 1))


def recon_std_factor(x0_nocfg, x0, n_view: int):
    """(std(x0_nocfg) + 1e-8) / (std(x0) + 1e-8) per object of n_view views: (B/n_view, 1)."""
    return (group_std(x0_nocfg, n_view) + 1e-8) / (group_std(x0, n_view) + 1e-8)


def rescale_x0(x0, x0_nocfg, n_view: int, r: float):
    """x0 <- r (x0 * factor) + (1 - r) x0 (upstream recon_std_rescale), factor shared by an object's views."""
    factor = recon_std_factor(x0_nocfg, x0, n_view)
    scaled = (x0.reshape(x0.shape[0] // n_view, -1) * factor).reshape(x0.shape)
    return r * scaled + (1.0 - r) * x0


def surrogate_loss(latents, grad, batch_size: int):
    """0.5 ||z - sg(z - grad)||^2 / B: its gradient w.r.t. z is grad / B."""
    target = ops.stop_gradient(latents - grad)
    return 0.5 * ((latents - target) ** 2).sum() / batch_size


def clip_grad(grad, clip_val):
    grad = ops.clamp(grad, -clip_val, clip_val)
    return ops.where(ops.isfinite(grad), grad, ops.zeros_like(grad))


def sds_grad(a_t, eps, noise):
    """The SDS latent gradient w(t) (eps_hat - eps), w(t) = 1 - alphas_cumprod[t] (threestudio's weighting)."""
    return (1.0 - a_t) * (eps - noise)


def sjc_perturb(y, a_t, noise):
    """SJC's noisy point and the UNet's input: sigma = sqrt((1 - a_t)/a_t), z = y + sigma n,
    x_in = z / sqrt(1 + sigma^2) -> (z, x_in, sigma). a_t broadcasts against y ((1,1,1,1) or (B,1,1,1)).
    Shared by every guidance with an "sjc" mode (this one and zero123_guidance.py)."""
    sigma = ops.sqrt((1.0 - a_t) / a_t)
    z = y + sigma * noise
    return z, z / ops.sqrt(1.0 + sigma * sigma), sigma


def sjc_grad(y, z, sigma, eps):
    """(y - D) / sigma with the denoised D = z - sigma eps: a descent step on the surrogate loss moves y to D."""
    return (y - (z - sigma * eps)) / sigma


# ---------------------------------------------------------------- the guidance cell

def load_frozen_models(ckpt_path: str, config_path: str, names=("unet", "vae"),
                       half_precision: bool = False) -> tuple[dict, dict]:
    """Build the named sub-models from the original YAML and load them strictly from the converted
    checkpoint: ({name: cell}, model.params). Names: unet, vae, text_encoder (mindspore_impl/mvdream/loading.py).
    half_precision: the UNet is built with use_fp16 (Dense/Conv weights fp16, norms fp32, fp32 output);
    the VAE stays fp32 (the rendered image's gradient flows through it). Without it the YAML's use_fp16 holds."""
    from mindspore_impl.mvdream.loading import load_models
    from neutral.mvdream.model_config import load_model_config
    model_params = load_model_config(config_path)
    return load_models(ckpt_path, model_params, names, use_fp16=True if half_precision else None), model_params


class ScheduledGuidance:
    """Host side shared by the guidances (this one and zero123-guidance): `self.schedule` (GuidanceSchedule) anneals
    the timestep range and the grad clip per step; the clip bound is written into `self.grad_clip_bound`, which the
    compiled graph reads."""

    def update_step(self, global_step: int, rng: Optional[np.random.Generator] = None) -> None:
        """Recompute min/max step (timestep annealing) and grad clip for `global_step`; draws nothing."""
        self.schedule.update(global_step)
        if self.use_grad_clip:
            write_parameter(self.grad_clip_bound, np.float32(self.schedule.grad_clip_val))

    @property
    def grad_clip_val(self) -> Optional[float]:
        return self.schedule.grad_clip_val

    @property
    def min_step(self) -> int:
        return self.schedule.min_step

    @property
    def max_step(self) -> int:
        return self.schedule.max_step


class MultiviewDiffusionGuidance(ScheduledGuidance, nn.Cell):
    """construct(rgb (B,H,W,3), c2w (B,4,4), text_embeddings (2B,77,C) [cond x B, uncond x B],
    t (1,) int32, noise (B,4,h,w), vae_noise (B,4,h,w)) -> (loss_sds, grad_norm).
    B is a multiple of n_view (views of one object contiguous); grad_norm = ||grad|| of the per-latent
    gradient before the 1/B of the loss (e.g. ||latents - x0|| in x0 mode).

    Build with `from_config(cfg)` (loads the converted checkpoint) or directly with frozen models.
    """

    Config = Config
    # the checkpoint files a config names exist (a download + convert hint if not); run before anything is built
    check_files = staticmethod(check_checkpoint)

    def __init__(self, cfg: Config, unet: nn.Cell, vae: nn.Cell, noise_schedule: nn.Cell,
                 scale_factor: float = 0.18215):
        super().__init__()
        self.cfg = cfg
        self.mode = check_config(cfg)
        self.unet = unet
        self.vae = vae
        self.noise_schedule = noise_schedule
        self.scale_factor = float(scale_factor)
        # pixel space: the x0 target is an image, clipped to [-1, 1] (x scale_factor) like the sampler's x0
        from mindspore_impl.mvdream.first_stage import IdentityFirstStage
        self.clip_x0 = isinstance(vae, IdentityFirstStage)
        self.n_view = int(cfg.n_view)
        self.image_size = int(cfg.image_size)
        self.guidance_scale = float(cfg.guidance_scale)
        self.recon_std_rescale = float(cfg.recon_std_rescale)
        self.num_train_timesteps = int(noise_schedule.num_timesteps)
        self.alphas_cumprod = ms.Tensor(noise_schedule.alphas_cumprod_np.astype(np.float32))
        self.schedule = GuidanceSchedule(cfg, self.num_train_timesteps)
        # whether to clip is static; the (scheduled) bound is a frozen Parameter, so a new value
        # set by update_step reaches a compiled graph without recompiling it
        self.use_grad_clip = cfg.grad_clip is not None
        self.grad_clip_bound = ms.Parameter(ms.Tensor(0.0, ms.float32), name="grad_clip_bound",
                                            requires_grad=False)
        self._freeze()
        self.update_step(0)

    @classmethod
    def from_config(cls, cfg_dict: Any) -> "MultiviewDiffusionGuidance":
        from neutral.config import parse_structured
        cfg = parse_structured(Config, cfg_dict, "multiview-diffusion-guidance")
        check_config(cfg)
        ckpt_path, config_path = check_checkpoint(cfg)
        models, model_params = load_frozen_models(ckpt_path, config_path, ("unet", "vae"),
                                                  half_precision=cfg.half_precision_weights)
        if cfg.lora_path is not None:
            from mindspore_impl.mvdream.lora import load_lora
            load_lora(models["unet"], cfg.lora_path)  # folded into the frozen weights
        schedule = NoiseSchedule.from_config(model_params)
        return cls(cfg, models["unet"], models["vae"], schedule,
                   float(model_params.get("scale_factor", 0.18215)))

    def _freeze(self) -> None:
        for p in self.get_parameters():
            p.requires_grad = False

    def set_weights_dtype(self, dtype) -> None:
        """Low-precision frozen UNet (ms.float16 / ms.bfloat16): Dense/Conv weights cast, norms kept fp32,
        output fp32 (the UNet's own use_fp16 rule). The VAE stays fp32: the image gradient flows through it."""
        self.unet.dtype = dtype
        self.unet._cast_weights(dtype)

    @staticmethod
    def checkpoint_exclude_prefixes() -> tuple[str, ...]:
        """Attribute names of the frozen models: never written to training checkpoints."""
        return ("unet.", "vae.", "grad_clip_bound")

    # -- host side
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents for image_size (first-stage downsampling from its config)."""
        from mindspore_impl.mvdream.first_stage import latent_shape
        return latent_shape(self.vae, self.image_size)

    def sample_inputs(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        return sample_inputs(self.schedule, rng, batch_size, self.latent_shape())

    # -- in graph
    def encode_images(self, rgb, vae_noise):
        """(B,H,W,3) in [0,1] -> latents (B,4,h,w), differentiable w.r.t. rgb."""
        x = rgb.transpose(0, 3, 1, 2)
        if x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            x = ops.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                align_corners=False)
        x = x * 2.0 - 1.0
        return self.vae.encode_sample(x, vae_noise) * self.scale_factor

    def predict_noise(self, x_in, timesteps, text_embeddings, camera):
        """CFG noise prediction, no gradient: returns (e_cfg, e_cond)."""
        x2 = ops.concat((x_in, x_in), axis=0)
        t2 = ops.concat((timesteps, timesteps), axis=0)
        cam2 = ops.concat((camera, camera), axis=0)
        # the UNet casts its inputs to its weight dtype and returns float32
        eps = self.unet(x2, t2, text_embeddings, cam2, self.n_view).astype(ms.float32)
        eps = ops.stop_gradient(eps)
        b = x_in.shape[0]
        e_c, e_u = eps[:b], eps[b:]
        return e_u + self.guidance_scale * (e_c - e_u), e_c

    def construct(self, rgb, c2w, text_embeddings, t, noise, vae_noise):
        return self.latent_loss(self.encode_images(rgb, vae_noise), c2w, text_embeddings, t, noise)

    def latent_loss(self, latents, c2w, text_embeddings, t, noise):
        """The loss as a function of the encoded latents (B,4,h,w) -> (loss, grad norm); its gradient w.r.t. the
        latents is the distillation gradient / B (the UNet runs without gradient)."""
        grad, grad_norm = self.distillation_grad(latents, c2w, text_embeddings, t, noise)
        return surrogate_loss(latents, grad, latents.shape[0]), grad_norm

    def distillation_grad(self, latents, c2w, text_embeddings, t, noise):
        """The distillation gradient w.r.t. the latents (B,4,h,w), a constant of the graph -> (grad, its norm)."""
        b = latents.shape[0]
        y = ops.stop_gradient(latents)
        camera = ops.stop_gradient(camera_condition(c2w))
        timesteps = ops.tile(t.astype(ms.int32), (b,))
        a_t = ops.gather(self.alphas_cumprod, t.astype(ms.int32), 0).reshape(1, 1, 1, 1)
        if self.mode == "sjc":
            z, x_in, sigma = sjc_perturb(y, a_t, noise)
            e, _ = self.predict_noise(x_in, timesteps, text_embeddings, camera)
            grad = sjc_grad(y, z, sigma, e)
        else:
            x_t = self.noise_schedule.q_sample(y, timesteps, noise)
            e, e_c = self.predict_noise(x_t, timesteps, text_embeddings, camera)
            if self.mode == "x0":
                x0 = self.noise_schedule.predict_start_from_noise(x_t, timesteps, e)
                if self.recon_std_rescale > 0:
                    x0_nocfg = self.noise_schedule.predict_start_from_noise(x_t, timesteps, e_c)
                    x0 = rescale_x0(x0, x0_nocfg, self.n_view, self.recon_std_rescale)
                if self.clip_x0:
                    x0 = ops.clamp(x0, -self.scale_factor, self.scale_factor)
                grad = y - x0
            else:
                grad = sds_grad(a_t, e, noise)
        if self.use_grad_clip:
            grad = clip_grad(grad, self.grad_clip_bound)
        # x0 mode without clipping: the surrogate equals 0.5 * sum((latents - sg(x0))^2) / B, value included
        grad = ops.stop_gradient(grad)
        return grad, ops.sqrt((grad * grad).sum())


register("multiview-diffusion-guidance")(MultiviewDiffusionGuidance)
