"""Framework-neutral part of the first stage choice (no MindSpore or torch import here).

Shared by mindspore_impl/mvdream/first_stage.py and torch_ref/mvdream/first_stage.py: which
`first_stage_config.target` selects pixel space, its params schema, and the latent downsampling.
"""
from __future__ import annotations

from dataclasses import dataclass

from neutral.config import parse_structured

IDENTITY_TARGETS = ("identity", "torch.nn.Identity")


@dataclass
class IdentityFirstStageConfig:
    channels: int = 3
    patch_size: int = 1  # > 1: pixel-unshuffle (space-to-depth) by this factor


def is_identity(entry: dict) -> bool:
    """True when a `first_stage_config` entry selects pixel space."""
    return str(entry.get("target", "")) in IDENTITY_TARGETS


def parse_identity(params) -> IdentityFirstStageConfig:
    cfg = parse_structured(IdentityFirstStageConfig, params or {}, "first_stage_config.params (identity)")
    if cfg.channels < 1 or cfg.patch_size < 1:
        raise ValueError(f"identity first stage: channels and patch_size must be >= 1, "
                         f"got {cfg.channels}, {cfg.patch_size}")
    return cfg


def downsample_of(entry: dict) -> int:
    """Pixels per latent cell: patch_size in pixel space, 2 ** (levels - 1) for a VAE (8 for SD)."""
    if is_identity(entry):
        return parse_identity(dict(entry.get("params") or {})).patch_size
    return 2 ** (len(entry["params"]["ddconfig"]["ch_mult"]) - 1)
