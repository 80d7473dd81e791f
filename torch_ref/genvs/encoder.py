"""FrustumEncoder: one image -> a camera-frustum feature volume (B, C, D, H, W) (PyTorch reference; twin of
mindspore_impl/genvs/encoder.py, which documents the architecture).

Upstream (jfozard/genvs_unofficial, genvs_model.py, dlv3/model.py) uses DeepLabV3+ (ResNet34) viewed as
(16, 64, H, W); this port uses the small conv encoder-decoder of neutral/genvs/model_config.py EncoderConfig.
Input in [-1, 1], mapped to [0, 1] and ImageNet-normalised as upstream (without its row flip: the field
projects to row-down pixel coordinates).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neutral.genvs.model_config import IMAGENET_MEAN, IMAGENET_STD, encoder_downsampling, parse_encoder
from torch_ref.genvs.renderer import upsample_nearest2x


class ConvBlock(nn.Module):
    """conv3x3 (stride 1 or 2) -> GroupNorm(groups) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, groups: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=True)
        self.norm = nn.GroupNorm(groups, c_out, eps=1e-5)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.down = ConvBlock(c_in, c_out, groups, stride=2)
        self.block = ConvBlock(c_out, c_out, groups)

    def forward(self, x):
        return self.block(self.down(x))


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_skip: int, c_out: int, groups: int):
        super().__init__()
        self.block = ConvBlock(c_in + c_skip, c_out, groups)

    def forward(self, x, skip):
        return self.block(torch.cat([upsample_nearest2x(x), skip], 1))


class FrustumEncoder(nn.Module):
    """images (B, in_channels, H, W) in [-1, 1] -> volume (B, C, D, H, W); `noise` (B, in_channels, H, W) or
    None is added after the ImageNet normalisation (upstream's training augmentation)."""

    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = parse_encoder(cfg)
        cfg = self.cfg
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        g = cfg.norm_groups
        self.stem = ConvBlock(cfg.in_channels, chans[0], g)
        self.downs = nn.ModuleList([DownBlock(chans[i - 1], chans[i], g) for i in range(1, len(chans))])
        self.ups = nn.ModuleList([UpBlock(chans[i], chans[i - 1], chans[i - 1], g)
                                  for i in range(len(chans) - 1, 0, -1)])
        self.head = nn.Conv2d(chans[0], cfg.feature_channels * cfg.depth_planes, 3, padding=1, bias=True)
        self.multiple = encoder_downsampling(cfg)
        n = cfg.in_channels
        # constants, not buffers: the state dict holds the trained weights only, as in the MindSpore twin
        self._mean = torch.tensor([IMAGENET_MEAN[i % 3] for i in range(n)]).reshape(1, n, 1, 1)
        self._std = torch.tensor([IMAGENET_STD[i % 3] for i in range(n)]).reshape(1, n, 1, 1)

    def normalize(self, images):
        """[-1, 1] -> [0, 1] -> ImageNet-normalised (genvs_model.py)."""
        mean, std = self._mean.to(images), self._std.to(images)
        return (0.5 * (images + 1.0) - mean) / std

    def forward(self, images, noise=None):
        b, _, h, w = images.shape
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"FrustumEncoder: image sides must be multiples of {self.multiple}, got {h}x{w}")
        x = self.normalize(images)
        if noise is not None:
            x = x + noise
        x = self.stem(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        for i, up in enumerate(self.ups):
            x = up(x, skips[len(self.downs) - 1 - i])
        # channel c * D + d is feature c of plane d (upstream's view(B, C // D, D, H, W))
        return self.head(x).reshape(b, self.cfg.feature_channels, self.cfg.depth_planes, h, w)
