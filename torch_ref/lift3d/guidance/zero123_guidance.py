"""PyTorch twin of mindspore_impl/lift3d/guidance/zero123_guidance.py, in the structure of threestudio's
Zero123Guidance (threestudio/models/guidance/zero123_guidance.py upstream): prepare_embeddings / get_img_embeds,
get_cond (unconditional branch first, zeros for c_crossattn after the projection and for c_concat), one UNet call on
the doubled batch, CFG, w = 1 - alphas[t], nan_to_num, optional clamp, the 0.5 * mse(sum) / B surrogate.
Differences from upstream, shared with the MindSpore module: t, noise and the VAE's posterior noise are inputs
(explicit Generator), T is computed on the host (neutral/zero123/camera.py, upstream's formula), the render is
resized to cfg.image_size (upstream: 256), and the "sjc" mode uses the MVDream guidance's SJC functions.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neutral.lift3d.multiview_diffusion_guidance import GuidanceSchedule
from neutral.lift3d.zero123_guidance import Config, check_config, sample_inputs  # noqa: F401
from torch_ref.lift3d.guidance.multiview_diffusion_guidance import sds_grad, sjc_grad, sjc_perturb


class Zero123Guidance(nn.Module):
    """forward(rgb (B,H,W,3), T (B,4), t (B,), noise, vae_noise) -> (loss_sds, grad_norm)."""

    def __init__(self, cfg: Config, model: nn.Module, noise_schedule: nn.Module, reference_rgb: np.ndarray,
                 image_size: Optional[int] = None):
        super().__init__()
        self.cfg = cfg
        self.mode = check_config(cfg)
        self.model = model
        self.noise_schedule = noise_schedule
        self.image_size = int(image_size or cfg.image_size or reference_rgb.shape[0])
        from torch_ref.mvdream.first_stage import IdentityFirstStage
        self.pixel_space = isinstance(model.first_stage_model, IdentityFirstStage)
        self.register_buffer("alphas", torch.tensor(noise_schedule.alphas_cumprod_np, dtype=torch.float32),
                             persistent=False)
        self.schedule = GuidanceSchedule(cfg, int(noise_schedule.num_timesteps))
        self.grad_clip_val = self.schedule.grad_clip_val
        for p in self.parameters():
            p.requires_grad_(False)
        self.prepare_embeddings(reference_rgb)

    def update_step(self, global_step: int, rng: Optional[np.random.Generator] = None) -> None:
        self.schedule.update(global_step)
        self.grad_clip_val = self.schedule.grad_clip_val

    @torch.no_grad()
    def prepare_embeddings(self, reference_rgb: np.ndarray) -> None:
        device = next(self.model.parameters()).device
        rgb = torch.from_numpy(np.asarray(reference_rgb, np.float32)).permute(2, 0, 1)[None].to(device)
        self.c_crossattn, self.c_concat = self.get_img_embeds(rgb)

    @torch.no_grad()
    def get_img_embeds(self, img):
        return self.model.encode_reference(img * 2.0 - 1.0)

    def encode_images(self, imgs, vae_noise):
        x = imgs * 2.0 - 1.0
        fs = self.model.first_stage_model
        moments = fs.encode_sample(x) if self.pixel_space else fs.encode(x).sample(vae_noise)
        return moments * self.model.dims.scale_factor

    @torch.no_grad()
    def get_cond(self, T):
        clip_emb = self.model.camera_conditioning(self.c_crossattn.repeat(len(T), 1, 1), T)
        return {"c_crossattn": torch.cat([torch.zeros_like(clip_emb), clip_emb], dim=0),
                "c_concat": torch.cat([torch.zeros_like(self.c_concat).repeat(len(T), 1, 1, 1),
                                       self.c_concat.repeat(len(T), 1, 1, 1)], dim=0)}

    @torch.no_grad()
    def guided_eps(self, x_in, t, cond):
        noise_pred = self.model.apply_model(torch.cat([x_in] * 2), torch.cat([t] * 2), cond["c_concat"],
                                            cond["c_crossattn"])
        noise_pred_uncond, noise_pred_cond = noise_pred.float().chunk(2)
        return noise_pred_uncond + self.cfg.guidance_scale * (noise_pred_cond - noise_pred_uncond)

    def forward(self, rgb, T, t, noise, vae_noise):
        batch_size = rgb.shape[0]
        rgb_BCHW = F.interpolate(rgb.permute(0, 3, 1, 2), (self.image_size, self.image_size), mode="bilinear",
                                 align_corners=False)
        latents = self.encode_images(rgb_BCHW, vae_noise)
        cond = self.get_cond(T)
        t = t.long()
        a_t = self.alphas[t].reshape(-1, 1, 1, 1)  # sds_grad weights with w = 1 - a_t
        with torch.no_grad():
            y = latents.detach()
            if self.mode == "sjc":
                z, x_in, sigma = sjc_perturb(y, a_t, noise)
                grad = sjc_grad(y, z, sigma, self.guided_eps(x_in, t, cond))
            else:
                latents_noisy = self.noise_schedule.q_sample(y, t, noise)
                grad = sds_grad(a_t, self.guided_eps(latents_noisy, t, cond), noise)
            grad = torch.nan_to_num(grad)
            if self.grad_clip_val is not None:
                grad = grad.clamp(-self.grad_clip_val, self.grad_clip_val)
        target = (latents - grad).detach()
        loss_sds = 0.5 * F.mse_loss(latents, target, reduction="sum") / batch_size
        return loss_sds, grad.norm()
