"""How an original Zero-1-to-3 checkpoint (105000.ckpt, zero123-xl.ckpt) is laid out: the one definition of its
key prefixes and of the keys it holds that this port does not use (no framework import).

The file is a PyTorch Lightning checkpoint, `{"state_dict": {...}, "global_step": ..., ...}`, of upstream's
LatentDiffusion (cvlab-columbia/zero123 zero123/ldm/models/diffusion/ddpm.py); the state dict's keys are that
module's attribute paths:
- `model.diffusion_model.*`: the UNet inside DiffusionWrapper;
- `model_ema.*`: LitEma (zero123/ldm/modules/ema.py), DDPM's `use_ema` defaults to True: one buffer per UNet
  parameter, named `diffusion_model` + the parameter name with its dots removed, plus `decay` and `num_updates`.
  Upstream samples with these weights (zero123/gradio_new.py runs under `model.ema_scope()`; threestudio's
  threestudio/models/guidance/zero123_guidance.py `load_model_from_config` calls `model_ema.copy_to(model.model)`);
- `first_stage_model.*`: the AutoencoderKL;
- `cond_stage_model.model.*`: FrozenCLIPImageEmbedder's openai CLIP model (zero123/ldm/modules/encoders/
  modules.py). It deletes `model.transformer` (the text transformer) before training, so the checkpoint keeps
  `visual.*` (the image tower, used) and the text side's other weights (token_embedding, positional_embedding,
  ln_final, text_projection, logit_scale: unused, dropped by rule). Its mean / std buffers are not persistent;
- `cc_projection.weight`, `cc_projection.bias`: Linear(772, 768);
- the noise-schedule buffers of DDPM.register_schedule (recomputed from the config).

The converted checkpoint (MindSpore names) keeps the four used prefixes; only the names after them change
(convert/zero123.py). Used by the converter, mindspore_impl/zero123/loading.py and the tests.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One sub-model of the checkpoint: its name here and its key prefix."""
    name: str
    prefix: str


UNET = Part("unet", "model.diffusion_model.")
VAE = Part("vae", "first_stage_model.")
IMAGE_ENCODER = Part("image_encoder", "cond_stage_model.model.visual.")
CC_PROJECTION = Part("cc_projection", "cc_projection.")
PARTS: tuple[Part, ...] = (UNET, VAE, IMAGE_ENCODER, CC_PROJECTION)

CLIP_PREFIX = "cond_stage_model.model."
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")

# openai CLIP's text side (openai/CLIP clip/model.py, CLIP.__init__), under CLIP_PREFIX
CLIP_TEXT_NAMES = frozenset({"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
                             "text_projection", "logit_scale"})
# its text transformer: absent from upstream's checkpoints (deleted), dropped too should a re-saved file hold it
CLIP_TEXT_TRANSFORMER = re.compile(
    r"transformer\.resblocks\.\d+\.(attn\.in_proj_(weight|bias)|attn\.out_proj\.(weight|bias)|"
    r"ln_[12]\.(weight|bias)|mlp\.c_(fc|proj)\.(weight|bias))")


def part_of(key: str):
    """The Part whose prefix `key` starts with, or None."""
    return next((p for p in PARTS if key.startswith(p.prefix)), None)


def is_clip_text_key(key: str) -> bool:
    """A key of the CLIP text side (not used by the image tower)."""
    if not key.startswith(CLIP_PREFIX) or key.startswith(IMAGE_ENCODER.prefix):
        return False
    name = key[len(CLIP_PREFIX):]
    return name in CLIP_TEXT_NAMES or CLIP_TEXT_TRANSFORMER.fullmatch(name) is not None


def ema_key(unet_name: str) -> str:
    """The LitEma buffer holding the EMA of UNet parameter `unet_name` (a name after UNET.prefix)."""
    return EMA_PREFIX + ("diffusion_model." + unet_name).replace(".", "")
