"""The GeNVS denoiser UNet, native MindSpore (twin: torch_ref/genvs/denoiser.py).

k-diffusion's ImageDenoiserModelV1 (crowsonkb/k-diffusion, k_diffusion/models/image_v1.py and
k_diffusion/layers.py, the 2022 version that jfozard/genvs_unofficial vendors) as GeNVS builds it
(jfozard/genvs_unofficial, k_pipeline.py: unet_cond_dim 16; k_configs/config_128_*.json). Parameter names equal the
torch twin's state-dict keys (and upstream's, less `mapping_cond.weight`), buffers included as frozen Parameters.

    net(x_in (B, C, H, W), c_noise (B,), cond (B, C_cond, H, W) or None) -> (F (B, C, H, W), u)

u per config.variance: "sample" (upstream) one log-variance per sample (B,), the pixel mean of an extra output
channel; "pixel" that channel (B, 1, H, W); "none" returns F only. cond None feeds zeros (the torch twin's
docstring says why). Wrapped in edm.py EDMPrecond, this is GeNVS' D(x; sigma). Config:
neutral/genvs/denoiser_config.py.

Portable on CPU and Ascend with the classic nn / ops API (many mint kernels lack CPU registrations): GroupNorm
written out from mean and variance, exact-erf GELU (ops.gelu approximate="none", as torch.nn.GELU), the blur
resampling as a one-channel conv over (B*C, 1, H, W) (no grouped conv), plain softmax attention (genvs may not
import mvdream's attention, tests/test_layering.py). Static shapes, no host randomness: runs in PyNative and under
ms.jit; the dropouts act only after set_train(True).
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.common.initializer import Normal, Orthogonal, Zero, initializer

from neutral.genvs.denoiser_config import block_widths, denoiser_config, groups, level_plan

LINEAR_KERNEL = (1 / 8, 3 / 8, 3 / 8, 1 / 8)  # k_diffusion/layers.py _kernels['linear']


def group_norm(x, num_groups: int, eps: float):
    """GroupNorm without affine, biased variance (torch.nn.functional.group_norm), float32."""
    b, c, h, w = x.shape
    g = x.reshape(b, num_groups, -1)
    mean = g.mean(axis=2, keep_dims=True)
    var = ops.square(g - mean).mean(axis=2, keep_dims=True)
    return ((g - mean) / ops.sqrt(var + eps)).reshape(b, c, h, w)


def gelu(x):
    return ops.gelu(x, approximate="none")


class GELU(nn.Cell):
    """torch.nn.GELU (exact erf; MindSpore's nn.GELU defaults to the tanh approximation)."""

    def construct(self, x):
        return gelu(x)


class Passthrough(nn.Cell):
    """Identity with the (x, cond) call of the blocks, in the place of the resampling level 0 does not have."""

    def construct(self, x, cond):
        return x


class AdaGN(nn.Cell):
    """GroupNorm without affine, then x (1 + scale) + shift, (scale, shift) = mapper(cond) (layers.py AdaGN)."""

    def __init__(self, feats_in, channels, num_groups, eps=1e-5):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.channels = channels
        self.mapper = nn.Dense(feats_in, channels * 2)

    def construct(self, x, cond):
        wb = self.mapper(cond)
        weight = wb[:, :self.channels].reshape(wb.shape[0], self.channels, 1, 1)
        bias = wb[:, self.channels:].reshape(wb.shape[0], self.channels, 1, 1)
        return bias + group_norm(x, self.num_groups, self.eps) * (weight + 1)


def conv3x3(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 3, pad_mode="pad", padding=1, has_bias=True)


def conv1x1(c_in, c_out, bias=True, weight_init=None):
    return nn.Conv2d(c_in, c_out, 1, pad_mode="valid", has_bias=bias, weight_init=weight_init)


class ResConvBlock(nn.Cell):
    """main = [AdaGN, GELU, conv3x3, Dropout2d, AdaGN, GELU, conv3x3, Dropout2d] + skip (1x1, no bias, orthogonal,
    when the width changes; image_v1.py ResConvBlock)."""

    def __init__(self, feats_in, c_in, c_mid, c_out, group_size=32, dropout=0.0):
        super().__init__()
        self.main = nn.SequentialCell([
            AdaGN(feats_in, c_in, groups(c_in, group_size)), GELU(), conv3x3(c_in, c_mid), nn.Dropout2d(p=dropout),
            AdaGN(feats_in, c_mid, groups(c_mid, group_size)), GELU(), conv3x3(c_mid, c_out),
            nn.Dropout2d(p=dropout)])
        self.has_skip = c_in != c_out
        if self.has_skip:
            self.skip = conv1x1(c_in, c_out, bias=False, weight_init=Orthogonal())

    def construct(self, x, cond):
        m = self.main
        h = m[3](m[2](m[1](m[0](x, cond))))
        h = m[7](m[6](m[5](m[4](h, cond))))
        return h + (self.skip(x) if self.has_skip else x)


def attention_weights(q, k):
    """softmax((q s)(k s)^T), s = d^-1/4 on both sides (layers.py SelfAttention2d); q, k (B, heads, L, d)."""
    scale = k.shape[-1] ** -0.25
    return ops.softmax(ops.matmul(q * scale, (k * scale).swapaxes(-1, -2)), axis=-1)


class SelfAttention2d(nn.Cell):
    """x + out_proj(attention(qkv_proj(AdaGN(x)))) over the h*w pixels (layers.py SelfAttention2d); qkv channels
    [q | k | v], each split into heads of contiguous channels."""

    def __init__(self, feats_in, channels, n_head, group_size=32, dropout=0.0):
        super().__init__()
        self.n_head = n_head
        self.norm_in = AdaGN(feats_in, channels, groups(channels, group_size))
        self.qkv_proj = conv1x1(channels, channels * 3)
        self.out_proj = conv1x1(channels, channels)
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, x, cond):
        n, c, h, w = x.shape
        nh = self.n_head
        qkv = self.qkv_proj(self.norm_in(x, cond))
        qkv = qkv.reshape(n, nh * 3, c // nh, h * w).swapaxes(2, 3)
        q, k, v = qkv[:, :nh], qkv[:, nh:2 * nh], qkv[:, 2 * nh:]
        att = self.dropout(attention_weights(q, k))
        # contiguous() before the reshape of a transposed view (mindspore_impl/mvdream/attention.py says why)
        y = ops.matmul(att, v).swapaxes(2, 3).contiguous().reshape(n, c, h, w)
        return x + self.out_proj(y)


def _kernel_2d(scale: float) -> ms.Parameter:
    k = np.asarray([LINEAR_KERNEL], np.float32) * scale
    return ms.Parameter(ms.Tensor(k.T @ k), name="kernel", requires_grad=False)


def _reflect_pad1(x):
    return ops.pad(x, (1, 1, 1, 1), mode="reflect")


class Downsample2d(nn.Cell):
    """Reflect-pad 1, the 4x4 linear kernel with stride 2 on every channel (layers.py Downsample2d): channels go to
    the batch axis so one single-channel conv serves every width."""

    def __init__(self):
        super().__init__()
        self.kernel = _kernel_2d(1.0)
        self.conv = ops.Conv2D(out_channel=1, kernel_size=4, stride=2)

    def construct(self, x, cond):
        b, c, h, w = x.shape
        y = self.conv(_reflect_pad1(x.reshape(b * c, 1, h, w)), self.kernel.reshape(1, 1, 4, 4))
        return y.reshape(b, c, h // 2, w // 2)


class Upsample2d(nn.Cell):
    """Reflect-pad 1, transposed conv with 2 x the kernel, stride 2, padding 3 (layers.py Upsample2d), per channel
    as in Downsample2d."""

    def __init__(self):
        super().__init__()
        self.kernel = _kernel_2d(2.0)
        self.conv_t = ops.Conv2DTranspose(out_channel=1, kernel_size=4, pad_mode="pad", pad=3, stride=2)

    def construct(self, x, cond):
        b, c, h, w = x.shape
        y = self.conv_t(_reflect_pad1(x.reshape(b * c, 1, h, w)), self.kernel.reshape(1, 1, 4, 4),
                        (b * c, 1, 2 * h, 2 * w))
        return y.reshape(b, c, 2 * h, 2 * w)


class ConditionedSequential(nn.SequentialCell):
    """Children named 0, 1, ... (as torch); all take (x, cond)."""

    def construct(self, x, cond):
        for cell in self.cell_list:
            x = cell(x, cond)
        return x


def _level_cells(cfg, widths, c_mid, attn):
    out = []
    for c_in, c_out in widths:
        out.append(ResConvBlock(cfg.mapping_width, c_in, c_mid, c_out, cfg.group_size, cfg.dropout))
        if attn:
            out.append(SelfAttention2d(cfg.mapping_width, c_out, max(1, c_out // cfg.head_size), cfg.group_size,
                                       cfg.dropout))
    return out


class DBlock(ConditionedSequential):
    """[Downsample2d or Passthrough, ResConvBlock (+ SelfAttention2d), ...] (image_v1.py DBlock)."""

    def __init__(self, cfg, level):
        c_in, c_mid, c_out = level["down"]
        first = Downsample2d() if level["resample"] else Passthrough()
        super().__init__([first] + _level_cells(cfg, block_widths(level["depth"], c_in, c_mid, c_out), c_mid,
                                                level["attn"]))


class UBlock(ConditionedSequential):
    """[ResConvBlock (+ SelfAttention2d), ..., Upsample2d or Passthrough] on concat[x, skip] (image_v1.py UBlock)."""

    def __init__(self, cfg, level):
        c_in, c_mid, c_out = level["up"]
        last = Upsample2d() if level["resample"] else Passthrough()
        super().__init__(_level_cells(cfg, block_widths(level["depth"], c_in, c_mid, c_out), c_mid,
                                      level["attn"]) + [last])

    def construct(self, x, cond, skip=None):
        if skip is not None:
            x = ops.concat((x, skip), axis=1)
        for cell in self.cell_list:
            x = cell(x, cond)
        return x


class UNet(nn.Cell):
    """d_blocks from level 0 down; u_blocks from the deepest level up, with the skip of their level except the
    deepest (layers.py UNet, skip_stages 0)."""

    def __init__(self, d_blocks, u_blocks):
        super().__init__()
        self.d_blocks = nn.CellList(d_blocks)
        self.u_blocks = nn.CellList(u_blocks)
        self.n_levels = len(d_blocks)

    def construct(self, x, cond):
        skips = []
        for block in self.d_blocks:
            x = block(x, cond)
            skips.append(x)
        for i in range(self.n_levels):
            x = self.u_blocks[i](x, cond, skips[self.n_levels - 1 - i] if i > 0 else None)
        return x


class FourierFeatures(nn.Cell):
    """[cos, sin](2 pi c W^T), W (out/2, 1) ~ N(0, std^2), fixed (layers.py FourierFeatures; a buffer there)."""

    def __init__(self, out_features, std=1.0):
        super().__init__()
        self.weight = ms.Parameter(initializer(Normal(sigma=std), (out_features // 2, 1), ms.float32),
                                   name="weight", requires_grad=False)

    def construct(self, c):
        f = ops.matmul(2 * math.pi * c, self.weight.swapaxes(0, 1))
        return ops.concat((ops.cos(f), ops.sin(f)), axis=-1)


class GeNVSDenoiserUNet(nn.Cell):
    """See the module docstring; config: DenoiserConfig or its dict."""

    def __init__(self, config=None):
        super().__init__()
        cfg = self.config = denoiser_config(config)
        w, c0 = cfg.mapping_width, cfg.channels[0]
        self.image_channels, self.cond_channels, self.variance = cfg.image_channels, cfg.cond_channels, cfg.variance
        self.timestep_embed = FourierFeatures(w)
        self.mapping = nn.SequentialCell([nn.Dense(w, w, weight_init=Orthogonal()), GELU(),
                                          nn.Dense(w, w, weight_init=Orthogonal()), GELU()])
        self.proj_in = conv1x1(cfg.image_channels + cfg.cond_channels, c0)
        n_out = cfg.image_channels + (0 if cfg.variance == "none" else 1)
        self.proj_out = nn.Conv2d(c0, n_out, 1, pad_mode="valid", has_bias=True, weight_init=Zero(),
                                  bias_init=Zero())  # the untrained net predicts F = 0 and u = 0 (image_v1.py)
        plan = level_plan(cfg)
        self.u_net = UNet([DBlock(cfg, lv) for lv in plan], [UBlock(cfg, lv) for lv in reversed(plan)])

    def construct(self, x_in, c_noise, cond=None):
        emb = self.mapping(self.timestep_embed(c_noise.reshape(-1, 1)))
        if self.cond_channels > 0:
            if cond is None:
                b, _, h, w = x_in.shape
                cond = ops.zeros((b, self.cond_channels, h, w), x_in.dtype)
            x_in = ops.concat((x_in, cond), axis=1)
        out = self.proj_out(self.u_net(self.proj_in(x_in), emb))
        f = out[:, :self.image_channels]
        if self.variance == "none":
            return f
        if self.variance == "pixel":
            return f, out[:, self.image_channels:]
        return f, out[:, self.image_channels].reshape(out.shape[0], -1).mean(axis=1)
