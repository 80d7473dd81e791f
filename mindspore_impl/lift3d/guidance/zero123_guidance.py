"""Zero-1-to-3 score distillation ("zero123-guidance"), MindSpore: a view-conditioned prior on renders of random
views around the object, conditioned on one reference image and each view's camera relative to the reference.

One training step (threestudio/models/guidance/zero123_guidance.py upstream, `__call__`):
  rgb (B,H,W,3) -> BCHW -> bilinear resize to image_size -> *2-1 -> first-stage encode WITH gradient (posterior
  sample x scale_factor) -> latents (B,C,h,w); one timestep per view; the UNet on [x, x] with
  c_crossattn = [0, cc_projection([clip_emb, T])] and c_concat = [0, ref_latent] (the unconditional branch is zeros
  for both, upstream's `get_cond`), no gradient; e = e_u + s (e_c - e_u).
  "sds": grad = w(t) (e - noise), w(t) = 1 - alphas_cumprod[t];   "sjc": the MVDream guidance's SJC path
  (sjc_perturb / sjc_grad: z = y + sigma n, the UNet on z / sqrt(1 + sigma^2), grad = (y - D) / sigma).
  grad_clip (scheduled) clamps the gradient; loss = 0.5 ||z - sg(z - grad)||^2 / B, so d loss / d latents = grad / B.
  Upstream always applies nan_to_num; here non-finite entries are zeroed with grad_clip (clip_grad), and without it a
  non-finite loss makes the optimizer skip the step (core/optim.py), as in the MVDream guidance.
The reference image's CLIP embedding (B=1, (1,1,D)) and first-stage mode (NOT scaled, upstream's c_concat) are
computed once per reference image (`prepare_embeddings`) into frozen Parameters: a compiled step reads them and a
new reference reaches it without recompiling. T (B,4) is host-side (`camera_T`); t, noise and the VAE's posterior
noise come from `sample_inputs` with an explicit Generator, so the renderer-output -> loss path is one static graph.

The model (UNet, VAE, CLIP image tower, cc_projection) is frozen: requires_grad False, never in a training checkpoint
(systems do not save the `guidance` attribute; `checkpoint_exclude_prefixes` names every parameter here).
Twin: torch_ref/lift3d/guidance/zero123_guidance.py; config and host helpers: neutral/lift3d/zero123_guidance.py.
"""
from __future__ import annotations

from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mindspore_impl.core.parameters import write_parameter
from mindspore_impl.lift3d.guidance.multiview_diffusion_guidance import (ScheduledGuidance, clip_grad, sds_grad,
                                                                        sjc_grad, sjc_perturb, surrogate_loss)
from mindspore_impl.mvdream.schedule import NoiseSchedule
from neutral.lift3d.multiview_diffusion_guidance import GuidanceError, GuidanceSchedule  # noqa: F401 (re-exported)
from neutral.lift3d.zero123_guidance import (Config, camera_T, check_config, default_image_size, reference_image,
                                             sample_inputs)
from neutral.lift3d.zero123_guidance import check_files as check_files_neutral
from neutral.registry import register


def check_files(cfg: Config) -> tuple[str, str]:
    """The files a config names exist and fit: checkpoint (converted, not the original), model YAML, reference image."""
    from mindspore_impl.zero123.loading import check_checkpoint_file
    ckpt, config_path = check_files_neutral(cfg)
    check_checkpoint_file(ckpt)
    return ckpt, config_path


class Zero123Guidance(ScheduledGuidance, nn.Cell):
    """construct(rgb (B,H,W,3) in [0,1], T (B,4), t (B,) int32, noise (B,C,h,w), vae_noise (B,C,h,w))
    -> (loss, grad_norm); grad_norm = ||grad|| of the latent gradient before the loss's 1/B.

    Build with `from_config(cfg)` (loads the converted checkpoint and the reference image) or directly from a Zero123
    cell, its noise schedule and the reference image (size x size x 3, over white, in [0, 1]).
    """

    Config = Config
    check_files = staticmethod(check_files)

    def __init__(self, cfg: Config, model: nn.Cell, noise_schedule: nn.Cell, reference_rgb: np.ndarray,
                 image_size: Optional[int] = None):
        super().__init__()
        self.cfg = cfg
        self.mode = check_config(cfg)
        self.model = model
        self.noise_schedule = noise_schedule
        self.scale_factor = float(model.dims.scale_factor)
        self.image_size = int(image_size or cfg.image_size or reference_rgb.shape[0])
        self.guidance_scale = float(cfg.guidance_scale)
        self.num_train_timesteps = int(noise_schedule.num_timesteps)
        self.alphas_cumprod = ms.Tensor(noise_schedule.alphas_cumprod_np.astype(np.float32))
        self.schedule = GuidanceSchedule(cfg, self.num_train_timesteps)
        self.use_grad_clip = cfg.grad_clip is not None
        self.grad_clip_bound = ms.Parameter(ms.Tensor(0.0, ms.float32), name="grad_clip_bound", requires_grad=False)
        c, h, w = self.latent_shape()
        self.latent_channels = c
        self.context_dim = int(model.dims.context_dim)
        self.clip_embedding = ms.Parameter(ms.Tensor(np.zeros((1, 1, model.dims.image_embed_dim), np.float32)),
                                           name="clip_embedding", requires_grad=False)
        self.ref_latent = ms.Parameter(ms.Tensor(np.zeros((1, c, h, w), np.float32)), name="ref_latent",
                                       requires_grad=False)
        for p in self.get_parameters():
            p.requires_grad = False
        if cfg.half_precision_weights:
            unet = model.model.diffusion_model
            unet.dtype = ms.float16
            unet._cast_weights(ms.float16)
        self.prepare_embeddings(reference_rgb)
        self.update_step(0)

    @classmethod
    def from_config(cls, cfg_dict: Any) -> "Zero123Guidance":
        from mindspore_impl.zero123.loading import load_zero123
        from neutral.config import parse_structured
        from neutral.mvdream.model_config import load_model_config
        cfg = parse_structured(Config, cfg_dict, "zero123-guidance")
        check_config(cfg)
        ckpt, config_path = check_files(cfg)
        params = load_model_config(config_path)
        size = int(cfg.image_size or default_image_size(params))
        model = load_zero123(ckpt, params)
        return cls(cfg, model, NoiseSchedule.from_config(params), reference_image(cfg, size), size)

    @staticmethod
    def checkpoint_exclude_prefixes() -> tuple[str, ...]:
        """Names of everything here: never written to training checkpoints."""
        return ("model.", "grad_clip_bound", "clip_embedding", "ref_latent")

    # -- host side
    def prepare_embeddings(self, reference_rgb: np.ndarray) -> None:
        """The reference image (S,S,3) in [0,1] over white -> its CLIP embedding and first-stage mode, once."""
        x = ms.Tensor(np.asarray(reference_rgb, np.float32).transpose(2, 0, 1)[None]) * 2.0 - 1.0
        if x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            raise GuidanceError(f"zero123-guidance: the reference image is {x.shape[3]}x{x.shape[2]}, expected "
                                f"{self.image_size}x{self.image_size}")
        clip_emb, latent = self.model.encode_reference(x)
        write_parameter(self.clip_embedding, clip_emb.asnumpy().astype(np.float32))
        write_parameter(self.ref_latent, latent.asnumpy().astype(np.float32))

    def latent_shape(self) -> tuple[int, int, int]:
        from mindspore_impl.mvdream.first_stage import latent_shape
        return latent_shape(self.model.first_stage_model, self.image_size)

    def sample_inputs(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        return sample_inputs(self.schedule, rng, batch_size, self.latent_shape())

    def camera_T(self, elevation, azimuth, distance) -> np.ndarray:
        return camera_T(self.cfg, elevation, azimuth, distance)

    # -- in graph
    def encode_images(self, rgb, vae_noise):
        """(B,H,W,3) in [0,1] -> latents (B,C,h,w) x scale_factor, differentiable w.r.t. rgb."""
        x = rgb.transpose(0, 3, 1, 2)
        if x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            x = ops.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.model.first_stage_model.encode_sample(x * 2.0 - 1.0, vae_noise) * self.scale_factor

    def predict_noise(self, x_in, timesteps, T):
        """CFG eps without gradient: the batch [uncond, cond] through the UNet once."""
        b = x_in.shape[0]
        clip_emb = ops.broadcast_to(self.clip_embedding, (b, 1, self.clip_embedding.shape[2]))
        c_cond = self.model.camera_conditioning(clip_emb, T)
        c_crossattn = ops.concat((ops.zeros_like(c_cond), c_cond), axis=0)
        latent = ops.broadcast_to(self.ref_latent, (b,) + tuple(self.ref_latent.shape[1:]))
        c_concat = ops.concat((ops.zeros_like(latent), latent), axis=0)
        eps = self.model.apply_model(ops.concat((x_in, x_in), axis=0), ops.concat((timesteps, timesteps), axis=0),
                                     c_concat, c_crossattn).astype(ms.float32)
        eps = ops.stop_gradient(eps)
        e_u, e_c = eps[:b], eps[b:]
        return e_u + self.guidance_scale * (e_c - e_u)

    def construct(self, rgb, T, t, noise, vae_noise):
        return self.latent_loss(self.encode_images(rgb, vae_noise), T, t, noise)

    def latent_loss(self, latents, T, t, noise):
        """The loss as a function of the encoded latents (B,C,h,w) -> (loss, grad norm)."""
        b = latents.shape[0]
        y = ops.stop_gradient(latents)
        T = ops.stop_gradient(T)
        timesteps = t.astype(ms.int32)
        a_t = ops.gather(self.alphas_cumprod, timesteps, 0).reshape(b, 1, 1, 1)
        if self.mode == "sjc":
            z, x_in, sigma = sjc_perturb(y, a_t, noise)
            grad = sjc_grad(y, z, sigma, self.predict_noise(x_in, timesteps, T))
        else:
            x_t = self.noise_schedule.q_sample(y, timesteps, noise)
            grad = sds_grad(a_t, self.predict_noise(x_t, timesteps, T), noise)
        if self.use_grad_clip:
            grad = clip_grad(grad, self.grad_clip_bound)
        grad = ops.stop_gradient(grad)
        return surrogate_loss(latents, grad, b), ops.sqrt((grad * grad).sum())


register("zero123-guidance")(Zero123Guidance)
