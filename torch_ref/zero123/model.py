"""The Zero-1-to-3 model, PyTorch reference: the parts of upstream's LatentDiffusion that predict eps.

cvlab-columbia/zero123 zero123/ldm/models/diffusion/ddpm.py:
- `DiffusionWrapper` with conditioning_key 'hybrid': the UNet sees cat([x_noisy, c_concat], channels) and
  cross-attends to c_crossattn;
- `LatentDiffusion`: `first_stage_model` (AutoencoderKL), `cond_stage_model` (FrozenCLIPImageEmbedder) and
  `cc_projection` = Linear(image_embed + 4, context) on cat([clip embedding [B, 1, D], T [B, 1, 4]], -1).
The conditions are built as zero123/gradio_new.py `sample_model` and threestudio's
threestudio/models/guidance/zero123_guidance.py (`get_img_embeds`, `get_cond`) build them:
- c_crossattn = cc_projection(cat([get_learned_conditioning(image), T])): [B, 1, context_dim];
- c_concat = first_stage_model.encode(image).mode(): the reference latent's mean, NOT multiplied by
  scale_factor (the noisy latent is: scale_factor x a posterior sample);
- the unconditional branch of classifier-free guidance: zeros for both, c_crossattn zeroed after the projection
  (gradio_new.py: `torch.zeros_like(c)` of the projected c; threestudio: `torch.zeros_like(clip_emb)`).
The UNet is the MVDream UNet configured as SD 1.x's plain UNet (no camera_dim, one view, conv proj_in/out). The first
stage may be the pixel-space identity (configs/demo-zero123-model.yaml).
The attribute paths equal upstream's, so `state_dict()` keys are the checkpoint's (neutral/zero123/
checkpoint_layout.py). Twin: mindspore_impl/zero123/model.py.
"""
from __future__ import annotations

import torch
from torch import nn

from neutral.zero123.model_config import first_stage_entry, parse_model_params, submodel_params
from torch_ref.mvdream.first_stage import IdentityFirstStage, build_first_stage
from torch_ref.mvdream.unet import build_from_config as build_unet
from torch_ref.zero123.clip_image_encoder import build_from_config as build_image_encoder


class DiffusionWrapper(nn.Module):
    """conditioning_key 'hybrid' only (Zero123's)."""

    def __init__(self, diffusion_model: nn.Module):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x, t, c_concat, c_crossattn):
        return self.diffusion_model(torch.cat([x, c_concat], dim=1), t, context=c_crossattn)


class Zero123(nn.Module):
    """Built from the model YAML's `model.params` (configs/sd-objaverse-finetune-c_concat-256.yaml)."""

    def __init__(self, model_params: dict):
        super().__init__()
        _, dims = parse_model_params(model_params)
        self.dims = dims
        self.model = DiffusionWrapper(build_unet(submodel_params(model_params, "unet_config")))
        # AutoencoderKL, or the pixel-space identity (mvdream/first_stage.py; no parameters) of the demo model
        self.first_stage_model = build_first_stage(first_stage_entry(model_params))
        self.cond_stage_model = build_image_encoder(submodel_params(model_params, "cond_stage_config"))
        self.cc_projection = nn.Linear(dims.cc_projection_in, dims.context_dim)

    def encode_reference(self, image):
        """image [B, 3, H, W] in [-1, 1] -> (CLIP embedding [B, 1, D], reference latent [B, C, H/f, W/f])."""
        return self.cond_stage_model.encode(image), self.first_stage_mode(image)

    def first_stage_mode(self, image):
        """The first stage's posterior mode (upstream's c_concat); pixel space: the (pixel-unshuffled) image."""
        if isinstance(self.first_stage_model, IdentityFirstStage):
            return self.first_stage_model.encode_mode(image)
        return self.first_stage_model.encode(image).mode()

    def camera_conditioning(self, clip_emb, T):
        """clip_emb [B, 1, D], T [B, 4] -> c_crossattn [B, 1, context_dim]."""
        return self.cc_projection(torch.cat([clip_emb, T[:, None, :].to(clip_emb.dtype)], dim=-1))

    def apply_model(self, x_noisy, t, c_concat, c_crossattn):
        """x_noisy [B, C, h, w], t [B], c_concat [B, C, h, w], c_crossattn [B, 1, context_dim] -> eps [B, C, h, w]."""
        return self.model(x_noisy, t, c_concat, c_crossattn)

    def forward(self, x_noisy, t, image, ref_latent, T):
        """Conditional eps: image [B, 3, H, W] in [-1, 1], ref_latent its first-stage mode, T [B, 4]."""
        c_crossattn = self.camera_conditioning(self.cond_stage_model.encode(image), T)
        return self.apply_model(x_noisy, t, ref_latent, c_crossattn)

    def unconditional(self, x_noisy, t):
        """Unconditional eps: zero c_concat and zero (projected) c_crossattn."""
        b = x_noisy.shape[0]
        c_crossattn = torch.zeros(b, 1, self.dims.context_dim, dtype=x_noisy.dtype, device=x_noisy.device)
        return self.apply_model(x_noisy, t, torch.zeros_like(x_noisy), c_crossattn)


def build_from_config(model_params: dict) -> Zero123:
    return Zero123(model_params)
