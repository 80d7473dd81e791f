"""The GeNVS denoiser UNet, PyTorch reference (twin: mindspore_impl/genvs/denoiser.py).

k-diffusion's ImageDenoiserModelV1 (crowsonkb/k-diffusion, k_diffusion/models/image_v1.py and
k_diffusion/layers.py, the 2022 version that jfozard/genvs_unofficial vendors in k_diffusion/layers.py) as GeNVS
builds it (jfozard/genvs_unofficial, k_pipeline.py: unet_cond_dim 16; k_configs/config_128_*.json). Written here
from those files; parameter and buffer names equal upstream's `ImageDenoiserModelV1` state-dict keys, except
`mapping_cond.weight` (the augmentation conditioning, which GeNVS feeds zeros at sampling) that this port leaves out.

    net(x_in (B, C, H, W), c_noise (B,), cond (B, C_cond, H, W) or None) -> (F (B, C, H, W), u)

- x_in is c_in x (EDMPrecond, edm.py) and c_noise = ln(sigma) / 4, which upstream computes from sigma inside;
- the input is concat[x_in, cond] on channels (image_v1.py forward, `unet_cond`); with cond None and
  cond_channels > 0 the port feeds zeros (upstream would fail on the channel count; its unconditional sampling,
  k_pipeline.py sample(unconditional=True), passes uniform noise instead, which a caller draws on the host);
- Fourier features of c_noise (layers.py FourierFeatures: 2 pi c W^T, W ~ N(0, 1) a buffer, [cos, sin]) ->
  mapping MLP (Linear, GELU) x 2 -> the embedding that every AdaGN turns into a per-channel scale and shift;
- levels: DBlock (blur-downsample except level 0, ResConvBlocks, self-attention where configured), UBlock
  (concat of the skip except at the deepest level, ResConvBlocks, attention, blur-upsample except level 0);
- u per config.variance: "sample" (upstream) the mean over pixels of one extra output channel, (B,);
  "pixel" that channel itself, (B, 1, H, W) (it broadcasts against F in edm_loss); "none": F only.
Config: neutral/genvs/denoiser_config.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neutral.genvs.denoiser_config import block_widths, denoiser_config, groups, level_plan

# layers.py _kernels['linear']: the 4-tap binomial-like filter of the blur resampling
LINEAR_KERNEL = (1 / 8, 3 / 8, 3 / 8, 1 / 8)


class Passthrough(nn.Module):
    """nn.Identity with the (x, cond) call of the blocks: holds the place (and the index in the state-dict names)
    of the resampling layer that level 0 does not have."""

    def forward(self, x, cond):
        return x


class AdaGN(nn.Module):
    """GroupNorm without affine, then x (1 + scale) + shift with (scale, shift) = mapper(cond) (layers.py AdaGN)."""

    def __init__(self, feats_in, channels, num_groups, eps=1e-5):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.mapper = nn.Linear(feats_in, channels * 2)

    def forward(self, x, cond):
        weight, bias = self.mapper(cond).chunk(2, dim=-1)
        x = F.group_norm(x, self.num_groups, eps=self.eps)
        return torch.addcmul(bias[:, :, None, None], x, weight[:, :, None, None] + 1)


class ResConvBlock(nn.Module):
    """main = [AdaGN, GELU, conv3x3, Dropout2d, AdaGN, GELU, conv3x3, Dropout2d], plus skip (a 1x1 conv without bias
    when the width changes; image_v1.py ResConvBlock)."""

    def __init__(self, feats_in, c_in, c_mid, c_out, group_size=32, dropout=0.0):
        super().__init__()
        self.main = nn.Sequential(
            AdaGN(feats_in, c_in, groups(c_in, group_size)), nn.GELU(), nn.Conv2d(c_in, c_mid, 3, padding=1),
            nn.Dropout2d(dropout),
            AdaGN(feats_in, c_mid, groups(c_mid, group_size)), nn.GELU(), nn.Conv2d(c_mid, c_out, 3, padding=1),
            nn.Dropout2d(dropout))
        self.has_skip = c_in != c_out
        if self.has_skip:
            self.skip = nn.Conv2d(c_in, c_out, 1, bias=False)
            nn.init.orthogonal_(self.skip.weight)

    def forward(self, x, cond):
        m = self.main
        h = m[3](m[2](m[1](m[0](x, cond))))
        h = m[7](m[6](m[5](m[4](h, cond))))
        return h + (self.skip(x) if self.has_skip else x)


def attention_weights(q, k):
    """softmax((q s)(k s)^T) with s = d^-1/4 on both sides (layers.py SelfAttention2d); q, k (B, heads, L, d)."""
    scale = k.shape[-1] ** -0.25
    return ((q * scale) @ (k.transpose(-1, -2) * scale)).softmax(-1)


class SelfAttention2d(nn.Module):
    """x + out_proj(attention(qkv_proj(AdaGN(x)))) over the h*w pixels (layers.py SelfAttention2d). The qkv
    channels are [q | k | v], each split into heads of head_dim contiguous channels."""

    def __init__(self, feats_in, channels, n_head, group_size=32, dropout=0.0):
        super().__init__()
        self.n_head = n_head
        self.norm_in = AdaGN(feats_in, channels, groups(channels, group_size))
        self.qkv_proj = nn.Conv2d(channels, channels * 3, 1)
        self.out_proj = nn.Conv2d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, cond):
        n, c, h, w = x.shape
        qkv = self.qkv_proj(self.norm_in(x, cond))
        qkv = qkv.view(n, self.n_head * 3, c // self.n_head, h * w).transpose(2, 3)
        q, k, v = qkv.chunk(3, dim=1)
        att = self.dropout(attention_weights(q, k))
        y = (att @ v).transpose(2, 3).contiguous().view(n, c, h, w)
        return x + self.out_proj(y)


def _kernel_2d(scale: float) -> torch.Tensor:
    k = torch.tensor([LINEAR_KERNEL], dtype=torch.float32) * scale
    return k.T @ k


class Downsample2d(nn.Module):
    """Reflect-pad 1, then the 4x4 linear kernel with stride 2 on every channel (layers.py Downsample2d). Upstream
    convolves with a C x C diagonal weight; a depthwise conv (groups=C) adds the same nonzero terms."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", _kernel_2d(1.0))

    def forward(self, x, cond):
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel.to(x)[None, None].expand(c, 1, 4, 4), stride=2, groups=c)


class Upsample2d(nn.Module):
    """Reflect-pad 1, then the transposed conv with 2 x the kernel, stride 2, padding 3 (layers.py Upsample2d);
    depthwise as in Downsample2d."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", _kernel_2d(2.0))

    def forward(self, x, cond):
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv_transpose2d(x, self.kernel.to(x)[None, None].expand(c, 1, 4, 4), stride=2, padding=3,
                                  groups=c)


class ConditionedSequential(nn.Sequential):
    """Children all take (x, cond)."""

    def forward(self, x, cond):
        for module in self:
            x = module(x, cond)
        return x


def _level_modules(cfg, widths, c_mid, attn):
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
        super().__init__(first, *_level_modules(cfg, block_widths(level["depth"], c_in, c_mid, c_out), c_mid,
                                                level["attn"]))


class UBlock(ConditionedSequential):
    """[ResConvBlock (+ SelfAttention2d), ..., Upsample2d or Passthrough] on concat[x, skip] (image_v1.py UBlock)."""

    def __init__(self, cfg, level):
        c_in, c_mid, c_out = level["up"]
        last = Upsample2d() if level["resample"] else Passthrough()
        super().__init__(*_level_modules(cfg, block_widths(level["depth"], c_in, c_mid, c_out), c_mid,
                                         level["attn"]), last)

    def forward(self, x, cond, skip=None):
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return super().forward(x, cond)


class UNet(nn.Module):
    """d_blocks from level 0 down; u_blocks from the deepest level up, each taking the skip of its level except
    the deepest (layers.py UNet, skip_stages 0)."""

    def __init__(self, d_blocks, u_blocks):
        super().__init__()
        self.d_blocks = nn.ModuleList(d_blocks)
        self.u_blocks = nn.ModuleList(u_blocks)

    def forward(self, x, cond):
        skips = []
        for block in self.d_blocks:
            x = block(x, cond)
            skips.append(x)
        for i, block in enumerate(self.u_blocks):
            x = block(x, cond, skips[-1 - i] if i > 0 else None)
        return x


class FourierFeatures(nn.Module):
    """[cos, sin](2 pi c W^T), W (out/2, 1) ~ N(0, std^2) a fixed buffer (layers.py FourierFeatures)."""

    def __init__(self, out_features, std=1.0):
        super().__init__()
        self.register_buffer("weight", torch.randn(out_features // 2, 1) * std)

    def forward(self, c):
        f = 2 * math.pi * c @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class GeNVSDenoiserUNet(nn.Module):
    """See the module docstring; config: DenoiserConfig or its dict."""

    def __init__(self, config=None):
        super().__init__()
        cfg = self.config = denoiser_config(config)
        w, c0 = cfg.mapping_width, cfg.channels[0]
        self.image_channels, self.cond_channels, self.variance = cfg.image_channels, cfg.cond_channels, cfg.variance
        self.timestep_embed = FourierFeatures(w)
        self.mapping = nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, w), nn.GELU())
        for layer in (self.mapping[0], self.mapping[2]):
            nn.init.orthogonal_(layer.weight)
        self.proj_in = nn.Conv2d(cfg.image_channels + cfg.cond_channels, c0, 1)
        n_out = cfg.image_channels + (0 if cfg.variance == "none" else 1)
        self.proj_out = nn.Conv2d(c0, n_out, 1)
        nn.init.zeros_(self.proj_out.weight)  # the untrained net predicts F = 0 and u = 0 (image_v1.py)
        nn.init.zeros_(self.proj_out.bias)
        plan = level_plan(cfg)
        self.u_net = UNet([DBlock(cfg, lv) for lv in plan], [UBlock(cfg, lv) for lv in reversed(plan)])

    def forward(self, x_in, c_noise, cond=None):
        emb = self.mapping(self.timestep_embed(c_noise[:, None]))
        if self.cond_channels:
            if cond is None:
                cond = x_in.new_zeros((x_in.shape[0], self.cond_channels) + tuple(x_in.shape[2:]))
            x_in = torch.cat([x_in, cond], dim=1)
        out = self.proj_out(self.u_net(self.proj_in(x_in), emb))
        f = out[:, :self.image_channels]
        if self.variance == "none":
            return f
        if self.variance == "pixel":
            return f, out[:, self.image_channels:]
        return f, out[:, self.image_channels].flatten(1).mean(1)
