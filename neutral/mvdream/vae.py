"""Framework-neutral part of the AutoencoderKL: the `first_stage_config.params` schema.

Shared by mindspore_impl/mvdream/vae.py and torch_ref/mvdream/vae.py (no MindSpore or torch import here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from neutral.config import parse_structured


@dataclass
class DDConfig:
    """`ddconfig` of the original YAML (shared by the encoder and the decoder)."""
    double_z: bool = True
    z_channels: int = 4
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: list = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attn_resolutions: list = field(default_factory=list)
    dropout: float = 0.0


@dataclass
class AutoencoderKLConfig:
    """`first_stage_config.params`; monitor / lossconfig are training-only and ignored."""
    embed_dim: int = 4
    ddconfig: DDConfig = field(default_factory=DDConfig)
    monitor: Optional[str] = None
    lossconfig: Optional[Any] = None


def parse_config(params) -> AutoencoderKLConfig:
    return parse_structured(AutoencoderKLConfig, params, "first_stage_config.params")
