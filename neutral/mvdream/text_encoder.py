"""Framework-neutral part of the OpenCLIP text tower: arch table, config schema, causal mask.

Shared by mindspore_impl/mvdream/text_encoder.py and torch_ref/mvdream/text_encoder.py (no MindSpore or
torch import here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from neutral.config import ConfigError, parse_structured

LAYERS = ("last", "penultimate")


@dataclass
class TextArch:
    width: int = 1024
    heads: int = 16
    layers: int = 24
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: Optional[int] = 1024  # None: no text_projection / logit_scale (HF CLIPTextModel)


# open_clip text towers (all use GELU, LayerNorm eps 1e-5, causal mask).
ARCHS = {
    "ViT-H-14": TextArch(width=1024, heads=16, layers=24, context_length=77, vocab_size=49408, embed_dim=1024),
    "ViT-L-14": TextArch(width=768, heads=12, layers=12, context_length=77, vocab_size=49408, embed_dim=768),
}


@dataclass
class FrozenOpenCLIPEmbedderConfig:
    """`cond_stage_config.params`; version / device / freeze are accepted for the original YAML."""
    arch: Any = "ViT-H-14"
    version: str = "laion2b_s32b_b79k"
    device: str = "cpu"
    max_length: int = 77
    freeze: bool = True
    layer: str = "last"


def parse_config(params) -> tuple[TextArch, FrozenOpenCLIPEmbedderConfig]:
    """-> (resolved text arch, config); unknown keys, archs or layers raise ConfigError."""
    cfg = parse_structured(FrozenOpenCLIPEmbedderConfig, params, "cond_stage_config.params")
    if isinstance(cfg.arch, str):
        if cfg.arch not in ARCHS:
            raise ConfigError(f"unknown text arch {cfg.arch!r}; known: {sorted(ARCHS)} or a dict of "
                              f"{list(TextArch.__dataclass_fields__)}")
        arch = ARCHS[cfg.arch]
    else:
        arch = parse_structured(TextArch, cfg.arch, "cond_stage_config.params.arch")
    if cfg.layer not in LAYERS:
        raise ConfigError(f"cond_stage_config.params.layer must be one of {LAYERS}, got {cfg.layer!r}")
    if cfg.layer == "penultimate" and arch.layers < 2:
        raise ConfigError("layer 'penultimate' needs at least 2 transformer layers")
    if arch.heads < 1 or arch.width % arch.heads:
        raise ConfigError(f"text width {arch.width} is not divisible by heads {arch.heads}")
    if cfg.max_length > arch.context_length:
        raise ConfigError(f"max_length {cfg.max_length} exceeds context_length {arch.context_length}")
    return arch, cfg


def causal_mask(n: int) -> np.ndarray:
    """Additive [n, n] mask: 0 on and below the diagonal, -inf above (open_clip build_attention_mask)."""
    return np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)


def check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
