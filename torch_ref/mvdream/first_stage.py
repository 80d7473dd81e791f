"""PyTorch twin of mindspore_impl/mvdream/first_stage.py: the pixel-space (identity) first stage."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from neutral.mvdream.first_stage import downsample_of, is_identity, parse_identity  # noqa: F401


class IdentityFirstStage(nn.Module):
    """Pixel space (pixel-unshuffled by patch_size); no parameters (no state-dict keys)."""

    def __init__(self, channels: int = 3, patch_size: int = 1):
        super().__init__()
        self.channels = channels
        self.patch_size = patch_size
        self.downsample = patch_size
        self.embed_dim = channels * patch_size * patch_size

    def encode_sample(self, x, noise=None):
        return F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x

    def encode_mode(self, x):
        return self.encode_sample(x)

    def decode(self, z):
        return F.pixel_shuffle(z, self.patch_size) if self.patch_size > 1 else z

    def forward(self, x):
        return x


def build_from_config(params) -> IdentityFirstStage:
    cfg = parse_identity(params)
    return IdentityFirstStage(cfg.channels, cfg.patch_size)


def build_first_stage(entry: dict):
    """IdentityFirstStage or the torch AutoencoderKL from a whole `first_stage_config` entry."""
    params = dict(entry.get("params") or {})
    if is_identity(entry):
        return build_from_config(params)
    from torch_ref.mvdream import vae
    return vae.build_from_config(params)
