"""PyTorch twin of mindspore_impl/zero123/training.py: the Zero-1-to-3 training loss, written the way upstream's
cvlab-columbia/zero123 zero123/ldm/models/diffusion/ddpm.py computes it (`get_input`: the null embedding chosen by
torch.where, c_concat times the input mask, both built without gradient into the first stage; `p_losses`: eps-MSE).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neutral.zero123.training import NULL_CROSSATTN, STEP_INPUTS
from torch_ref.mvdream.first_stage import IdentityFirstStage


class Zero123DiffusionLoss(nn.Module):
    """forward(target, cond, T, t, noise, fs_noise, drop_embedding, drop_image) -> scalar loss (see the twin)."""

    def __init__(self, model: nn.Module, schedule: nn.Module, null_crossattn: str = "embedding",
                 train_image_encoder: bool = False):
        super().__init__()
        if null_crossattn not in NULL_CROSSATTN:
            raise ValueError(f"null_crossattn must be one of {NULL_CROSSATTN}, got {null_crossattn!r}")
        self.model = model
        self.schedule = schedule
        self.scale_factor = float(model.dims.scale_factor)
        self.project_null = null_crossattn == "projected"
        self.train_image_encoder = bool(train_image_encoder)

    def first_stage_sample(self, x, noise):
        fs = self.model.first_stage_model
        if isinstance(fs, IdentityFirstStage):
            return fs.encode_sample(x)
        return fs.encode(x).sample(noise)

    def forward(self, target, cond, T, t, noise, fs_noise, drop_embedding, drop_image):
        t = t.long()
        with torch.no_grad():
            z = self.first_stage_sample(target, fs_noise) * self.scale_factor
            input_mask = (1.0 - drop_image)[:, None, None, None]
            c_concat = input_mask * self.model.first_stage_mode(cond)
        emb = self.model.cond_stage_model.encode(cond)
        if not self.train_image_encoder:
            emb = emb.detach()
        prompt_mask = (drop_embedding > 0.5)[:, None, None]
        if self.project_null:
            c_crossattn = torch.where(prompt_mask, torch.zeros(()), self.model.camera_conditioning(emb, T))
        else:
            null = torch.zeros_like(emb[:1])  # upstream: FrozenCLIPImageEmbedder([""]) returns zeros
            c_crossattn = self.model.camera_conditioning(torch.where(prompt_mask, null, emb), T)
        x_t = self.schedule.q_sample(z, t, noise)
        eps = self.model.apply_model(x_t, t, c_concat, c_crossattn)
        return ((eps.float() - noise) ** 2).mean()


def step_inputs(batch: dict, device=None) -> tuple:
    """The batch as torch tensors in STEP_INPUTS order, on `device` (None: torch's default)."""
    return tuple(torch.as_tensor(np.ascontiguousarray(batch[k]), device=device) for k in STEP_INPUTS)
