"""Small building blocks of the original LDM/MVDream code (diffusionmodules/util.py), PyTorch."""
import math

import torch
import torch.nn as nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding [N] -> [N, dim]: cos half first, then sin (upstream order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs.to(timesteps.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (eps 1e-5, as torch's default)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int, groups: int = 32) -> nn.GroupNorm:
    """ResBlock / output GroupNorm: 32 groups (upstream), eps 1e-5."""
    return GroupNorm32(groups, channels)


def transformer_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """SpatialTransformer input GroupNorm ("Normalize"): 32 groups, eps 1e-6 (fp32 math under fp16 weights)."""
    return GroupNorm32(groups, channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module
