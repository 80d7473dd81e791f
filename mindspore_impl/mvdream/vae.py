"""AutoencoderKL (the SD 2.1 / LDM VAE) in MindSpore, parameter tree mirroring the original.

Images are [B, 3, H, W] in [-1, 1]; latents are [B, z, H/f, W/f], f = 2^(len(ch_mult)-1)
(unscaled: multiply by scale_factor 0.18215 before the UNet). Static shapes throughout and
no host sync, so `encode` is differentiable and compiles in GRAPH mode (SDS trains through it).
Twin: torch_ref/mvdream/vae.py. Converted names: norms weight/bias -> gamma/beta, the rest as is.
"""
from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from neutral.mvdream.vae import DDConfig, parse_config


def _conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad", padding=pad, has_bias=True)


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def silu(x):
    return x * ops.sigmoid(x)


class ResnetBlock(nn.Cell):
    """norm1-swish-conv1-norm2-swish-conv2 plus a 1x1 nin_shortcut when channels change (no temb)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = _conv(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels)
        self.use_dropout = dropout > 0
        if self.use_dropout:
            self.dropout = nn.Dropout(p=dropout)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, 1)
        self.has_shortcut = in_channels != out_channels
        if self.has_shortcut:
            self.nin_shortcut = _conv(in_channels, out_channels, 1)

    def construct(self, x):
        h = self.conv1(silu(self.norm1(x)))
        h = silu(self.norm2(h))
        if self.use_dropout:
            h = self.dropout(h)
        h = self.conv2(h)
        if self.has_shortcut:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Cell):
    """Single-head spatial self-attention with 1x1-conv q/k/v/proj_out."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = _conv(channels, channels, 1)
        self.k = _conv(channels, channels, 1)
        self.v = _conv(channels, channels, 1)
        self.proj_out = _conv(channels, channels, 1)
        self.scale = channels ** -0.5

    def construct(self, x):
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = ops.transpose(self.q(h).reshape(b, c, hh * ww), (0, 2, 1))  # [b, hw, c]
        k = self.k(h).reshape(b, c, hh * ww)  # [b, c, hw]
        v = self.v(h).reshape(b, c, hh * ww)
        w = ops.softmax(ops.bmm(q, k) * self.scale, axis=2)  # [b, hw_q, hw_k]
        out = ops.bmm(v, ops.transpose(w, (0, 2, 1))).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Cell):
    """Pad right/bottom by one, then a stride-2 3x3 conv (the original's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv(channels, channels, 3, 2, 0)
        # the Pad primitive, not ops.pad: on MindSpore 2.7.2 CPU, ops.pad's gradient is wrong from the
        # second run of a compiled (GRAPH) graph on (tests/test_guidance_parity.py graph test)
        self.pad = ops.Pad(((0, 0), (0, 0), (0, 1), (0, 1)))

    def construct(self, x):
        return self.conv(self.pad(x))


def upsample_nearest2x(x):
    """Nearest 2x upsampling by broadcasting (static shapes, exact, differentiable)."""
    b, c, h, w = x.shape
    x = ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, 2, w, 2))
    return x.reshape(b, c, 2 * h, 2 * w)


class Upsample(nn.Cell):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv(channels, channels, 3, 1, 1)

    def construct(self, x):
        return self.conv(upsample_nearest2x(x))


class Level(nn.Cell):
    """One resolution level: `block` (ResnetBlocks) and `attn` (one per block, or empty)."""

    def __init__(self, blocks, attns):
        super().__init__()
        self.block = nn.CellList(blocks)
        self.attn = nn.CellList(attns)
        self.has_attn = len(attns) > 0

    def run_blocks(self, h):
        for j in range(len(self.block)):
            h = self.block[j](h)
            if self.has_attn:
                h = self.attn[j](h)
        return h


class DownLevel(Level):
    """Encoder level; every level but the last ends with `downsample`."""

    def __init__(self, blocks, attns, downsample: Optional[Downsample]):
        super().__init__(blocks, attns)
        self.has_resample = downsample is not None
        if downsample is not None:
            self.downsample = downsample

    def construct(self, h):
        h = self.run_blocks(h)
        if self.has_resample:
            h = self.downsample(h)
        return h


class UpLevel(Level):
    """Decoder level; every level but level 0 ends with `upsample`."""

    def __init__(self, blocks, attns, upsample: Optional[Upsample]):
        super().__init__(blocks, attns)
        self.has_resample = upsample is not None
        if upsample is not None:
            self.upsample = upsample

    def construct(self, h):
        h = self.run_blocks(h)
        if self.has_resample:
            h = self.upsample(h)
        return h


class Mid(nn.Cell):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def construct(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Cell):
    """[B, in_channels, H, W] -> [B, 2*z_channels (double_z) or z_channels, H/f, W/f]."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        ch, mult = cfg.ch, list(cfg.ch_mult)
        n = len(mult)
        self.conv_in = _conv(cfg.in_channels, ch, 3, 1, 1)
        in_mult = [1] + mult
        res = cfg.resolution
        levels = []
        block_in = ch
        for i in range(n):
            blocks, attns = [], []
            block_in, block_out = ch * in_mult[i], ch * mult[i]
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            down = Downsample(block_in) if i != n - 1 else None
            if down is not None:
                res //= 2
            levels.append(DownLevel(blocks, attns, down))
        self.down = nn.CellList(levels)
        self.mid = Mid(block_in, cfg.dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = _conv(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, 1, 1)

    def construct(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(silu(self.norm_out(h)))


class Decoder(nn.Cell):
    """[B, z_channels, h, w] -> [B, out_ch, h*f, w*f]; `up` is indexed by level (up.0 = finest)."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        ch, mult = cfg.ch, list(cfg.ch_mult)
        n = len(mult)
        block_in = ch * mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = _conv(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = Mid(block_in, cfg.dropout)
        levels = [None] * n
        for i in reversed(range(n)):  # built coarse to fine, stored by level like the original
            blocks, attns = [], []
            block_out = ch * mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            up = Upsample(block_in) if i != 0 else None
            if up is not None:
                res *= 2
            levels[i] = UpLevel(blocks, attns, up)
        self.up = nn.CellList(levels)
        self.num_resolutions = n
        self.norm_out = Normalize(block_in)
        self.conv_out = _conv(block_in, cfg.out_ch, 3, 1, 1)

    def construct(self, z):
        h = self.mid(self.conv_in(z))
        for i in range(self.num_resolutions - 1, -1, -1):
            h = self.up[i](h)
        return self.conv_out(silu(self.norm_out(h)))


def split_moments(moments):
    """moments [B, 2z, h, w] -> (mean, logvar clamped to [-30, 20]), each [B, z, h, w]."""
    z = moments.shape[1] // 2
    return moments[:, :z], ops.clamp(moments[:, z:], -30.0, 20.0)


def sample_moments(moments, noise):
    """Posterior sample mean + exp(logvar / 2) * noise, usable inside compiled code."""
    mean, logvar = split_moments(moments)
    return mean + ops.exp(0.5 * logvar) * noise


class DiagonalGaussianDistribution:
    """Posterior from the encoder moments (PyNative convenience; compiled code uses
    AutoencoderKL.encode_sample / encode_mode, which return tensors only)."""

    def __init__(self, moments):
        self.mean, self.logvar = split_moments(moments)
        self.std = ops.exp(0.5 * self.logvar)
        self.var = ops.exp(self.logvar)

    def sample(self, noise):
        """mean + std * noise; `noise` ~ N(0, 1) with the mean's shape, supplied by the caller."""
        return self.mean + self.std * noise

    def mode(self):
        return self.mean


class AutoencoderKL(nn.Cell):
    def __init__(self, embed_dim: int, ddconfig: DDConfig):
        super().__init__()
        if not ddconfig.double_z:
            raise ValueError("AutoencoderKL needs ddconfig.double_z = true (mean and log-variance)")
        self.encoder = Encoder(ddconfig)
        self.decoder = Decoder(ddconfig)
        self.quant_conv = _conv(2 * ddconfig.z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = _conv(embed_dim, ddconfig.z_channels, 1)
        self.embed_dim = embed_dim

    def encode_moments(self, x):
        """[B, 3, H, W] -> moments [B, 2*embed_dim, H/f, W/f] (mean first, then log-variance)."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.encode_moments(x))

    def encode_sample(self, x, noise):
        """encode(x).sample(noise) as one tensor op chain (GRAPH mode, differentiable in x)."""
        return sample_moments(self.encode_moments(x), noise)

    def encode_mode(self, x):
        return split_moments(self.encode_moments(x))[0]

    def decode(self, z):
        """[B, embed_dim, h, w] (unscaled latents) -> [B, out_ch, h*f, w*f]."""
        return self.decoder(self.post_quant_conv(z))

    def construct(self, x):
        return self.decode(self.encode_mode(x))


def build_from_config(params) -> AutoencoderKL:
    """AutoencoderKL from `first_stage_config.params` of the original YAML."""
    cfg = parse_config(params)
    return AutoencoderKL(cfg.embed_dim, cfg.ddconfig)
