"""The CLIP image tower Zero-1-to-3 conditions on (openai CLIP ViT-L/14 `visual`), native MindSpore.

Upstream: openai/CLIP clip/model.py (`VisionTransformer`) inside cvlab-columbia/zero123
zero123/ldm/modules/encoders/modules.py (`FrozenCLIPImageEmbedder`: bicubic resize to the tower's input size with
align_corners=True and no antialiasing, [-1, 1] -> [0, 1], CLIP mean / std). The blocks run batch-first; that is
the same math as upstream's (L, N, D) layout. The attention is the packed-in_proj MultiheadAttention of the text
tower (mvdream/text_encoder.py) with no mask.

The resize is two matrix products with torch's bicubic weights (cubic kernel A = -0.75, taps clamped at the
border), built from the input's static shape with tensor ops: MindSpore's own bicubic resize differs from torch's
by about 4e-3 on CPU (MindSpore 2.7.2). Converted names: LayerNorm weight/bias -> gamma/beta, the rest as is.
Twin: torch_ref/zero123/clip_image_encoder.py; sizes and config: neutral/zero123/image_encoder.py.
"""
from __future__ import annotations

from collections import OrderedDict

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from mindspore_impl.mvdream.nn_util import LayerNorm32
from mindspore_impl.mvdream.text_encoder import MultiheadAttention
from neutral.zero123.image_encoder import (CLIP_MEAN, CLIP_STD, VisionArch, align_corners_scale, cubic_tap_weights,
                                           num_positions, parse_config)


def bicubic_matrix(n_in: int, n_out: int) -> ms.Tensor:
    """[n_out, n_in] float32 weights of torch's bicubic resize with align_corners=True along one axis."""
    src = ops.arange(n_out).astype(ms.float32) * align_corners_scale(n_in, n_out)
    base = ops.floor(src)
    t = src - base
    cols = ops.arange(n_in).astype(ms.float32)
    m = ops.zeros((n_out, n_in), ms.float32)
    for offset, weight in zip((-1, 0, 1, 2), cubic_tap_weights(t)):
        tap = ops.clamp(base + offset, 0.0, float(n_in - 1))
        m = m + (tap[:, None] == cols[None, :]).astype(ms.float32) * weight[:, None]
    return m


def resize_bicubic(x, size: int):
    """x [N, C, H, W] -> [N, C, size, size], as F.interpolate(mode='bicubic', align_corners=True)."""
    rows = bicubic_matrix(x.shape[2], size)          # [size, H]
    cols = bicubic_matrix(x.shape[3], size)          # [size, W]
    return ops.matmul(rows, ops.matmul(x, cols.swapaxes(0, 1)))


class QuickGELU(nn.Cell):
    def construct(self, x):
        return x * ops.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Cell):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = nn.SequentialCell(OrderedDict([
            ("c_fc", nn.Dense(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Dense(4 * width, width)),
        ]))
        self.ln_2 = LayerNorm32(width)
        self.no_mask = ms.Tensor(0.0, ms.float32)

    def construct(self, x):  # x [N, L, D]
        x = x + self.attn(self.ln_1(x), self.no_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Cell):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.SequentialCell([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def construct(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Cell):
    """image [N, 3, S, S] (S = arch.image_size, CLIP-normalised) -> embedding [N, arch.output_dim]."""

    def __init__(self, arch: VisionArch):
        super().__init__()
        w = arch.width
        self.conv1 = nn.Conv2d(3, w, arch.patch_size, stride=arch.patch_size, pad_mode="valid", has_bias=False)
        self.class_embedding = Parameter(ms.Tensor(np.zeros((w,), np.float32)))
        self.positional_embedding = Parameter(ms.Tensor(np.zeros((num_positions(arch), w), np.float32)))
        self.ln_pre = LayerNorm32(w)
        self.transformer = Transformer(w, arch.layers, arch.heads)
        self.ln_post = LayerNorm32(w)
        self.proj = Parameter(ms.Tensor(np.zeros((w, arch.output_dim), np.float32)))

    def construct(self, x):
        x = self.conv1(x)                                         # [N, D, g, g]
        n, w = x.shape[0], x.shape[1]
        x = x.reshape(n, w, -1).transpose(0, 2, 1)               # [N, g*g, D]
        cls = ops.broadcast_to(self.class_embedding.astype(x.dtype).reshape(1, 1, w), (n, 1, w))
        x = ops.concat((cls, x), axis=1) + self.positional_embedding.astype(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return ops.matmul(self.ln_post(x[:, 0, :]), self.proj.astype(x.dtype))


class ImageCLIP(nn.Cell):
    """openai CLIP with only its image tower (`visual`), as FrozenCLIPImageEmbedder keeps it in use."""

    def __init__(self, arch: VisionArch):
        super().__init__()
        self.visual = VisionTransformer(arch)

    def encode_image(self, image):
        return self.visual(image.astype(self.visual.conv1.weight.dtype))


class FrozenCLIPImageEmbedder(nn.Cell):
    """x [N, 3, H, W] in [-1, 1] (any H, W) -> construct: [N, output_dim] float32; encode: [N, 1, output_dim]."""

    def __init__(self, arch: VisionArch):
        super().__init__()
        self.arch = arch
        self.mean = ms.Tensor(np.array(CLIP_MEAN, np.float32).reshape(1, 3, 1, 1))
        self.std = ms.Tensor(np.array(CLIP_STD, np.float32).reshape(1, 3, 1, 1))
        self.model = ImageCLIP(arch)

    def preprocess(self, x):
        x = resize_bicubic(x.astype(ms.float32), self.arch.image_size)
        x = (x + 1.0) / 2.0
        return (x - self.mean) / self.std

    def construct(self, x):
        return self.model.encode_image(self.preprocess(x)).astype(ms.float32)

    def encode(self, x):
        return self.construct(x).expand_dims(1)


def build_from_config(params) -> FrozenCLIPImageEmbedder:
    """FrozenCLIPImageEmbedder from `cond_stage_config.params` of the original YAML."""
    arch, _ = parse_config(params)
    return FrozenCLIPImageEmbedder(arch)
