"""The CLIP image tower Zero-1-to-3 conditions on, PyTorch reference, written as upstream computes it.

- `VisionTransformer`: openai/CLIP clip/model.py (patch conv `conv1`, `class_embedding`, `positional_embedding`,
  `ln_pre`, pre-LN residual blocks with torch.nn.MultiheadAttention on the (L, N, D) layout and a QuickGELU MLP,
  `ln_post` on the class token, `proj`); LayerNorms compute in float32 as CLIP's LayerNorm subclass.
- `FrozenCLIPImageEmbedder`: cvlab-columbia/zero123 zero123/ldm/modules/encoders/modules.py; `preprocess` is
  kornia.geometry.resize(bicubic, align_corners=True, antialias=False), which is F.interpolate itself, then
  (x + 1) / 2 and CLIP's normalisation.
Parameter names are the checkpoint's `cond_stage_model.model.visual.*` names after `model.visual.`.
Sizes and the config schema: neutral/zero123/image_encoder.py. Twin: mindspore_impl/zero123/clip_image_encoder.py.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from neutral.zero123.image_encoder import CLIP_MEAN, CLIP_STD, VisionArch, num_positions, parse_config


class LayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm: float32 math whatever the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [L, N, D]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """image [N, 3, S, S] (S = arch.image_size, CLIP-normalised) -> embedding [N, arch.output_dim]."""

    def __init__(self, arch: VisionArch):
        super().__init__()
        w = arch.width
        self.conv1 = nn.Conv2d(3, w, kernel_size=arch.patch_size, stride=arch.patch_size, bias=False)
        scale = w ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(num_positions(arch), w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(w, arch.layers, arch.heads)
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, arch.output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)                                   # [N, D, g, g]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [N, g*g, D]
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        return self.ln_post(x[:, 0, :]) @ self.proj


class ImageCLIP(nn.Module):
    """openai CLIP with only its image tower (`visual`), as FrozenCLIPImageEmbedder keeps it in use."""

    def __init__(self, arch: VisionArch):
        super().__init__()
        self.visual = VisionTransformer(arch)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.type(self.visual.conv1.weight.dtype))


class FrozenCLIPImageEmbedder(nn.Module):
    """x [N, 3, H, W] in [-1, 1] (any H, W) -> forward: [N, output_dim] float32; encode: [N, 1, output_dim]."""

    def __init__(self, arch: VisionArch):
        super().__init__()
        self.arch = arch
        self.model = ImageCLIP(arch)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        size = self.arch.image_size
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
        x = (x + 1.0) / 2.0
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self.preprocess(x)).float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).unsqueeze(1)


def build_from_config(params) -> FrozenCLIPImageEmbedder:
    """FrozenCLIPImageEmbedder from `cond_stage_config.params` of the original YAML."""
    arch, _ = parse_config(params)
    return FrozenCLIPImageEmbedder(arch)
