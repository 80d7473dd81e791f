"""PyTorch twin of mindspore_impl/mvdream/training.py: the multiview diffusion training loss.

Same inputs, same math: frozen first stage, caption tokens replaced by the empty prompt where
dropped, context repeated over the F views of each object, q_sample, eps-prediction MSE.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neutral.mvdream.training import STEP_INPUTS, images_to_model, sample_step_noise  # noqa: F401


def encode_sample(first_stage: nn.Module, images, noise):
    """Posterior sample of the VAE (the identity first stage has encode_sample itself)."""
    if hasattr(first_stage, "encode_sample"):
        return first_stage.encode_sample(images, noise)
    return first_stage.encode(images).sample(noise)


class MultiviewDiffusionLoss(nn.Module):
    """forward(images, camera, tokens, drop, t, noise, fs_noise) -> scalar loss (see the MindSpore twin)."""

    def __init__(self, unet: nn.Module, first_stage: nn.Module, text_encoder: nn.Module, schedule: nn.Module,
                 empty_tokens: np.ndarray, num_frames: int, scale_factor: float, train_text_encoder: bool = True):
        super().__init__()
        self.unet = unet
        self.first_stage = first_stage
        self.text_encoder = text_encoder
        self.schedule = schedule
        self.register_buffer("empty_tokens", torch.as_tensor(np.asarray(empty_tokens, np.int64).reshape(1, -1)),
                             persistent=False)
        self.num_frames = int(num_frames)
        self.scale_factor = float(scale_factor)
        self.train_text_encoder = bool(train_text_encoder)

    def encode_text(self, tokens, drop):
        keep = (drop < 0.5).reshape(-1, 1)
        tokens = torch.where(keep, tokens.long(), self.empty_tokens.expand_as(tokens))
        ctx = self.text_encoder(tokens).float()
        if not self.train_text_encoder:
            ctx = ctx.detach()
        return ctx.repeat_interleave(self.num_frames, dim=0)

    def forward(self, images, camera, tokens, drop, t, noise, fs_noise):
        with torch.no_grad():
            z0 = encode_sample(self.first_stage, images, fs_noise) * self.scale_factor
        ctx = self.encode_text(tokens, drop)
        x_t = self.schedule.q_sample(z0, t.long(), noise)
        eps = self.unet(x_t, t.long(), ctx, camera, num_frames=self.num_frames)
        return ((eps - noise) ** 2).mean()


def step_inputs(batch: dict, device=None) -> tuple:
    """The batch as torch tensors in STEP_INPUTS order, on `device` (None: torch's default)."""
    return tuple(torch.as_tensor(np.ascontiguousarray(batch[k]), device=device) for k in STEP_INPUTS)


def make_train_step(loss_module: nn.Module, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                    weight_decay: float = 0.01, grad_clip=None):
    """torch twin of the MindSpore step: loss, backward, optional global-norm clip, torch.optim.AdamW."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def step(*inputs):
        opt.zero_grad(set_to_none=True)
        loss = loss_module(*inputs)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        return loss.detach()

    return step
