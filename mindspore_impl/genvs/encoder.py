"""FrustumEncoder: one image -> a camera-frustum feature volume (B, C, D, H, W) (MindSpore; twin of
torch_ref/genvs/encoder.py).

Upstream (jfozard/genvs_unofficial, genvs_model.py and dlv3/model.py) uses DeepLabV3+ with a ResNet34 backbone
whose decoder gives 16 x 64 = 1024 channels at input resolution, viewed as (16, 64, H, W) channel-major. This
port keeps the input handling and the output layout but uses a small conv encoder-decoder sized by
neutral/genvs/model_config.py EncoderConfig:

    stem      conv3x3 -> GroupNorm -> ReLU                              level 0, full resolution
    down i    conv3x3 stride 2 -> GN -> ReLU, conv3x3 -> GN -> ReLU        level i = 1 .. L-1
    up i      nearest x2, concat level i-1's skip, conv3x3 -> GN -> ReLU   back to level 0
    head      conv3x3 -> C * D channels, reshaped to (C, D, H, W)

Input: images in [-1, 1] (the EDM images of this port and upstream's data set), mapped to [0, 1] and
ImageNet-normalised as upstream. Upstream also flips the rows (torch.flip(x, [2])) because its projection's
y axis points up; the field here projects to row-down pixel coordinates, so rows stay as they are.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mindspore_impl.genvs.renderer import upsample_nearest2x
from neutral.genvs.model_config import IMAGENET_MEAN, IMAGENET_STD, encoder_downsampling, parse_encoder


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # explicit padding 1 so the shapes and the arithmetic equal torch's Conv2d(k=3, padding=1)
    return nn.Conv2d(c_in, c_out, 3, stride=stride, pad_mode="pad", padding=1, has_bias=True)


class ConvBlock(nn.Cell):
    """conv3x3 (stride 1 or 2) -> GroupNorm(groups) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, groups: int, stride: int = 1):
        super().__init__()
        self.conv = _conv3x3(c_in, c_out, stride)
        self.norm = nn.GroupNorm(groups, c_out, eps=1e-5)

    def construct(self, x):
        return ops.relu(self.norm(self.conv(x)))


class DownBlock(nn.Cell):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.down = ConvBlock(c_in, c_out, groups, stride=2)
        self.block = ConvBlock(c_out, c_out, groups)

    def construct(self, x):
        return self.block(self.down(x))


class UpBlock(nn.Cell):
    def __init__(self, c_in: int, c_skip: int, c_out: int, groups: int):
        super().__init__()
        self.block = ConvBlock(c_in + c_skip, c_out, groups)

    def construct(self, x, skip):
        return self.block(ops.concat([upsample_nearest2x(x), skip], 1))


class FrustumEncoder(nn.Cell):
    """images (B, in_channels, H, W) in [-1, 1] -> volume (B, C, D, H, W); H and W multiples of
    2^(len(channel_mult) - 1). `noise` (B, in_channels, H, W) or None is added after the ImageNet
    normalisation (upstream's training augmentation, drawn by neutral draw_input_noise)."""

    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = parse_encoder(cfg)
        cfg = self.cfg
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        g = cfg.norm_groups
        self.stem = ConvBlock(cfg.in_channels, chans[0], g)
        self.downs = nn.CellList([DownBlock(chans[i - 1], chans[i], g) for i in range(1, len(chans))])
        self.ups = nn.CellList([UpBlock(chans[i], chans[i - 1], chans[i - 1], g)
                                for i in range(len(chans) - 1, 0, -1)])
        self.head = _conv3x3(chans[0], cfg.feature_channels * cfg.depth_planes)
        self.n_down = len(chans) - 1
        self.multiple = encoder_downsampling(cfg)
        n = cfg.in_channels
        mean = np.resize(np.asarray(IMAGENET_MEAN, np.float32), n)  # cycles when in_channels != 3
        std = np.resize(np.asarray(IMAGENET_STD, np.float32), n)
        self.mean = ms.Tensor(mean.reshape(1, n, 1, 1))
        self.std = ms.Tensor(std.reshape(1, n, 1, 1))

    def normalize(self, images):
        """[-1, 1] -> [0, 1] -> ImageNet-normalised (genvs_model.py)."""
        return (0.5 * (images + 1.0) - self.mean) / self.std

    def construct(self, images, noise=None):
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
            x = up(x, skips[self.n_down - 1 - i])
        x = self.head(x)
        # channel-major as upstream's view(B, C // D, D, H, W): channel c * D + d is feature c of plane d
        return x.reshape(b, self.cfg.feature_channels, self.cfg.depth_planes, h, w)
