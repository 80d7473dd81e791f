"""How an MVDream checkpoint is laid out: the one definition of its key prefixes (no framework import).

An MVDream checkpoint is one state dict whose keys carry a prefix per sub-model. The prefixes are the
attribute paths of upstream's LatentDiffusionInterface (bytedance/MVDream, mvdream/ldm/interface.py):
the UNet is `self.model = DiffusionWrapper(unet)` (its `diffusion_model`), the autoencoder is
`self.first_stage_model`, and the text encoder is `self.cond_stage_model`, a FrozenOpenCLIPEmbedder
(mvdream/ldm/modules/encoders/modules.py) whose open_clip model is its `.model`. The same interface builds
each sub-model from one entry of the model YAML's `model.params` (unet_config, first_stage_config,
cond_stage_config; e.g. configs/sd-v2-base.yaml).

The converted checkpoint (.ckpt / .safetensors, MindSpore names) keeps these prefixes; only the names after
them change (convert/keymaps.py). Used by the converter, both model trees, the scripts and the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Part:
    """One sub-model of the checkpoint: its name here, its key prefix, its model-YAML entry."""
    name: str
    prefix: str
    config_key: str


UNET = Part("unet", "model.diffusion_model.", "unet_config")
VAE = Part("vae", "first_stage_model.", "first_stage_config")  # AutoencoderKL, or the pixel-space identity stage
TEXT_ENCODER = Part("text_encoder", "cond_stage_model.model.", "cond_stage_config")

PARTS: tuple[Part, ...] = (UNET, VAE, TEXT_ENCODER)
NAMES: tuple[str, ...] = tuple(p.name for p in PARTS)
PREFIXES: dict[str, str] = {p.name: p.prefix for p in PARTS}
CONFIG_KEYS: dict[str, str] = {p.name: p.config_key for p in PARTS}


def part(name: str) -> Part:
    """The Part called `name` (unet, vae, text_encoder); ValueError naming the known ones otherwise."""
    for p in PARTS:
        if p.name == name:
            return p
    raise ValueError(f"unknown MVDream sub-model {name!r}; known: {', '.join(NAMES)}")


def keys_outside(keys: Iterable[str]) -> list[str]:
    """The keys under none of the sub-models' prefixes, sorted (a checkpoint that is not MVDream's)."""
    prefixes = tuple(PREFIXES.values())
    return sorted(k for k in keys if not k.startswith(prefixes))
