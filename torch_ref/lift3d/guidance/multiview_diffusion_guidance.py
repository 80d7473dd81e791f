"""PyTorch twin of mindspore_impl/lift3d/guidance/multiview_diffusion_guidance.py.

Same math in the structure of upstream MVDream-threestudio's guidance (x0 mode), with its
recon_loss=False crash fixed (plain SDS) and SJC added. Config, schedules and the host-side
helpers come from neutral/lift3d/multiview_diffusion_guidance.py, shared with the MindSpore module.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neutral.lift3d.multiview_diffusion_guidance import (  # noqa: F401
    Config, GuidanceError, GuidanceSchedule, check_config, sample_inputs)
from torch_ref.mvdream.cameras import normalize_camera


def recon_std_factor(x0_nocfg, x0, n_view: int):
    """Upstream: std over dims 1..4 of (-1, n_view, C, H, W) (unbiased), +1e-8 on both: (B/n_view,1,1,1,1)."""
    a = x0_nocfg.view(-1, n_view, *x0_nocfg.shape[1:])
    b = x0.view(-1, n_view, *x0.shape[1:])
    return (a.std([1, 2, 3, 4], keepdim=True) + 1e-8) / (b.std([1, 2, 3, 4], keepdim=True) + 1e-8)


def rescale_x0(x0, x0_nocfg, n_view: int, r: float):
    factor = recon_std_factor(x0_nocfg, x0, n_view)
    adjusted = x0.clone() * factor.squeeze(1).repeat_interleave(n_view, dim=0)
    return r * adjusted + (1 - r) * x0


def surrogate_loss(latents, grad, batch_size: int):
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / batch_size


def sds_grad(a_t, eps, noise):
    """threestudio: w = 1 - alphas_cumprod[t]; grad = w * (noise_pred - noise)."""
    return (1 - a_t) * (eps - noise)


def sjc_perturb(y, a_t, noise):
    """pals-ttic/sjc: sigma = sqrt((1 - abar)/abar), z = y + sigma n, UNet input z / sqrt(1 + sigma^2)."""
    sigma = torch.sqrt((1 - a_t) / a_t)
    z = y + sigma * noise
    return z, z / torch.sqrt(1 + sigma ** 2), sigma


def sjc_grad(y, z, sigma, eps):
    """(y - D) / sigma, D = z - sigma eps (SJC's var_red gradient with the sign of a loss)."""
    return (y - (z - sigma * eps)) / sigma


class MultiviewDiffusionGuidance(nn.Module):
    """forward(rgb (B,H,W,3), c2w (B,4,4), text_embeddings (2B,77,C), t (1,), noise, vae_noise)
    -> (loss_sds, grad_norm)."""

    def __init__(self, cfg: Config, unet: nn.Module, vae: nn.Module, noise_schedule: nn.Module,
                 scale_factor: float = 0.18215):
        super().__init__()
        self.cfg = cfg
        self.mode = check_config(cfg)
        self.unet = unet
        self.vae = vae
        self.noise_schedule = noise_schedule
        self.scale_factor = float(scale_factor)
        from torch_ref.mvdream.first_stage import IdentityFirstStage
        self.pixel_space = isinstance(vae, IdentityFirstStage)
        self.clip_x0 = self.pixel_space  # the x0 target is an image: clipped to [-1, 1] x scale_factor
        self.num_train_timesteps = int(noise_schedule.num_timesteps)
        self.register_buffer("alphas_cumprod", torch.tensor(noise_schedule.alphas_cumprod_np,
                                                             dtype=torch.float32), persistent=False)
        self.schedule = GuidanceSchedule(cfg, self.num_train_timesteps)
        self.grad_clip_val = self.schedule.grad_clip_val
        for p in self.parameters():
            p.requires_grad_(False)

    def update_step(self, global_step: int, rng: Optional[np.random.Generator] = None) -> None:
        self.schedule.update(global_step)
        self.grad_clip_val = self.schedule.grad_clip_val

    @property
    def min_step(self) -> int:
        return self.schedule.min_step

    @property
    def max_step(self) -> int:
        return self.schedule.max_step

    def encode_images(self, rgb, vae_noise):
        x = rgb.permute(0, 3, 1, 2)
        size = self.cfg.image_size
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        if self.pixel_space:  # identity first stage: nothing to sample
            return self.vae.encode_sample(x) * self.scale_factor
        return self.vae.encode(x).sample(vae_noise) * self.scale_factor

    @torch.no_grad()
    def predict_noise(self, x_in, timesteps, text_embeddings, camera):
        eps = self.unet(torch.cat([x_in] * 2), timesteps.repeat(2), text_embeddings,
                        camera.repeat(2, 1), self.cfg.n_view)
        e_c, e_u = eps.float().chunk(2)
        return e_u + self.cfg.guidance_scale * (e_c - e_u), e_c

    def forward(self, rgb, c2w, text_embeddings, t, noise, vae_noise):
        latents = self.encode_images(rgb, vae_noise)
        b = latents.shape[0]
        y = latents.detach()
        camera = normalize_camera(c2w).to(latents)
        t = t.long()
        timesteps = t.repeat(b)
        a_t = self.alphas_cumprod[t].reshape(1, 1, 1, 1)
        with torch.no_grad():
            if self.mode == "sjc":
                z, x_in, sigma = sjc_perturb(y, a_t, noise)
                e, _ = self.predict_noise(x_in, timesteps, text_embeddings, camera)
                grad = sjc_grad(y, z, sigma, e)
            else:
                x_t = self.noise_schedule.q_sample(y, timesteps, noise)
                e, e_c = self.predict_noise(x_t, timesteps, text_embeddings, camera)
                if self.mode == "x0":
                    x0 = self.noise_schedule.predict_start_from_noise(x_t, timesteps, e)
                    if self.cfg.recon_std_rescale > 0:
                        x0_nocfg = self.noise_schedule.predict_start_from_noise(x_t, timesteps, e_c)
                        x0 = rescale_x0(x0, x0_nocfg, self.cfg.n_view, self.cfg.recon_std_rescale)
                    if self.clip_x0:
                        x0 = x0.clamp(-self.scale_factor, self.scale_factor)
                    grad = y - x0
                else:
                    grad = sds_grad(a_t, e, noise)
            if self.grad_clip_val is not None:
                grad = torch.nan_to_num(grad.clamp(-self.grad_clip_val, self.grad_clip_val))
        if self.mode == "x0" and self.grad_clip_val is None:
            loss = 0.5 * F.mse_loss(latents, (y - grad).detach(), reduction="sum") / b
        else:
            loss = surrogate_loss(latents, grad, b)
        return loss, grad.norm()
