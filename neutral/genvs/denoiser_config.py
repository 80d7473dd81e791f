"""Config of the GeNVS denoiser UNet (mindspore_impl/genvs/denoiser.py, torch_ref/genvs/denoiser.py).

The network is k-diffusion's `ImageDenoiserModelV1` (crowsonkb/k-diffusion, k_diffusion/models/image_v1.py, the
2022 version that jfozard/genvs_unofficial vendors: its k_diffusion/layers.py and k_configs/config_128_*.json)
as GeNVS configures it (k_pipeline.py sets unet_cond_dim = 16):
- channels [128, 128, 256, 512, 512], depths [2, 2, 2, 4, 4], self-attention at the last two levels,
  mapping_out 256, dropout_rate 0.05, has_variance true, group size 32, head size 64 (image_v1.py defaults);
- the learned variance is ONE extra output channel of proj_out, averaged over the pixels: one log-variance per
  sample, shape (B,) (image_v1.py forward: `input[:, -1].flatten(1).mean(1)`); k_diffusion/layers.py
  DenoiserWithVariance.loss uses it as mean(((F - target)^2 / e^u + u) / 2). `variance="sample"` is that;
  "pixel" keeps the extra channel per pixel (B, 1, H, W), an option of this port; "none" drops the channel.

Field names are this port's; the upstream JSON keys they stand for are in each comment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from neutral.config import ConfigError, parse_structured

VARIANCE_MODES = ("sample", "pixel", "none")


@dataclass
class DenoiserConfig:
    image_channels: int = field(default=3, metadata={"min": 1})     # input_channels
    cond_channels: int = field(default=16, metadata={"min": 0})     # unet_cond_dim: the upsampled feature render
    channels: List[int] = field(default_factory=lambda: [128, 128, 256, 512, 512])   # channels, one per level
    depths: List[int] = field(default_factory=lambda: [2, 2, 2, 4, 4])              # residual blocks per level
    attention_levels: List[int] = field(default_factory=lambda: [3, 4])  # levels with self_attn_depths true
    mapping_width: int = field(default=256, metadata={"min": 2})    # mapping_out: Fourier features and mapping MLP
    dropout: float = field(default=0.05, metadata={"min": 0.0, "max": 0.99})   # dropout_rate (off in eval)
    variance: str = "sample"                                        # has_variance true -> "sample"
    group_size: int = field(default=32, metadata={"min": 1})        # GroupNorm groups = max(1, channels // group_size)
    head_size: int = field(default=64, metadata={"min": 1})         # attention heads = max(1, channels // head_size)
    image_size: int = field(default=128, metadata={"min": 2})       # input_size: the side the net is checked for


def check_denoiser_config(cfg: DenoiserConfig, where: str = "denoiser") -> DenoiserConfig:
    """ConfigError naming the first bad field of cfg; returns cfg."""
    n = len(cfg.channels)
    if n < 1 or any(int(c) < 1 for c in cfg.channels):
        raise ConfigError(f"{where}.channels must be a non-empty list of positive widths, got {list(cfg.channels)}")
    if len(cfg.depths) != n or any(int(d) < 1 for d in cfg.depths):
        raise ConfigError(f"{where}.depths needs one count >= 1 per level ({n} levels: channels "
                          f"{list(cfg.channels)}), got {list(cfg.depths)}")
    bad = [i for i in cfg.attention_levels if not 0 <= int(i) < n]
    if bad or len(set(cfg.attention_levels)) != len(cfg.attention_levels):
        raise ConfigError(f"{where}.attention_levels must be distinct level indices in [0, {n - 1}], "
                          f"got {list(cfg.attention_levels)}")
    if cfg.variance not in VARIANCE_MODES:
        raise ConfigError(f"{where}.variance must be one of {', '.join(VARIANCE_MODES)}, got {cfg.variance!r}")
    if cfg.mapping_width % 2:
        raise ConfigError(f"{where}.mapping_width must be even (cos and sin Fourier halves), got {cfg.mapping_width}")
    for i in cfg.attention_levels:
        c, heads = int(cfg.channels[i]), max(1, int(cfg.channels[i]) // cfg.head_size)
        if c % heads:
            raise ConfigError(f"{where}: level {i} width {c} does not split into {heads} heads of head_size "
                              f"{cfg.head_size}")
    for lv in level_plan(cfg):   # every GroupNorm width (block inputs, middles, attention) splits evenly
        for key in ("down", "up"):
            for c_in, c_out in block_widths(lv["depth"], *lv[key]):
                for c in (c_in, lv[key][1]) + ((c_out,) if lv["attn"] else ()):
                    if c % groups(c, cfg.group_size):
                        raise ConfigError(f"{where}: width {c} does not split into {groups(c, cfg.group_size)} "
                                          f"GroupNorm groups of group_size {cfg.group_size}; pick widths that "
                                          f"are multiples of group_size")
    factor = 2 ** (n - 1)
    # each level below the first halves the side; the reflect padding of the resampling filters needs the
    # deepest side >= 2 (k_diffusion/layers.py Downsample2d / Upsample2d pad by 1 in 'reflect' mode)
    if cfg.image_size % factor or cfg.image_size // factor < 2:
        use = max(2 * factor, cfg.image_size // factor * factor)
        raise ConfigError(f"{where}.image_size {cfg.image_size} must be a multiple of {factor} (2^(levels-1)) with "
                          f"at least 2 pixels at the deepest level; use {use}")
    return cfg


def denoiser_config(cfg: Any = None, where: str = "denoiser") -> DenoiserConfig:
    """Parse a dict / DictConfig / DenoiserConfig (unknown keys fail) and check it."""
    return check_denoiser_config(parse_structured(DenoiserConfig, cfg, where), where)


def groups(channels: int, group_size: int) -> int:
    """GroupNorm groups of a layer of this width (image_v1.py: max(1, c // group_size))."""
    return max(1, int(channels) // int(group_size))


def level_plan(cfg: DenoiserConfig) -> list:
    """Per level i: dict(c_in, c_mid, c_out) of its down block and of its up block, with attention and resampling
    flags, as image_v1.py ImageDenoiserModelV1.__init__ lays them out (skip_stages 0)."""
    ch, n = [int(c) for c in cfg.channels], len(cfg.channels)
    plan = []
    for i in range(n):
        plan.append(dict(
            depth=int(cfg.depths[i]), attn=i in cfg.attention_levels, resample=i > 0,
            down=(ch[max(0, i - 1)], ch[i], ch[i]),                          # DBlock(c_in, c_mid, c_out)
            up=(ch[i] * 2 if i < n - 1 else ch[i], ch[i], ch[max(0, i - 1)]),  # UBlock: concat of the skip
        ))
    return plan


def block_widths(depth: int, c_in: int, c_mid: int, c_out: int) -> list:
    """(in, out) of each residual block of a level: the first takes c_in, the last gives c_out."""
    return [(c_in if j == 0 else c_mid, c_mid if j < depth - 1 else c_out) for j in range(depth)]


def denoiser_parameter_count(cfg: DenoiserConfig) -> int:
    """Trainable parameters of GeNVSDenoiserUNet(cfg), counted from the layout (no framework); the Fourier
    frequencies and resampling kernels are buffers, not counted (nor does k_diffusion/utils.py n_params)."""
    w = cfg.mapping_width
    total = 2 * (w * w + w)                                                    # mapping MLP
    c0 = int(cfg.channels[0])
    out = cfg.image_channels + (0 if cfg.variance == "none" else 1)
    total += (cfg.image_channels + cfg.cond_channels) * c0 + c0 + c0 * out + out   # proj_in, proj_out (1x1)

    def adagn(c):                                                              # its mapper Linear(w, 2c)
        return w * 2 * c + 2 * c

    def res(ci, cm, co):
        n = adagn(ci) + 9 * ci * cm + cm + adagn(cm) + 9 * cm * co + co          # two 3x3 convs with bias
        return n + (ci * co if ci != co else 0)                                # skip 1x1 without bias

    def attn(c):
        return adagn(c) + 3 * c * c + 3 * c + c * c + c                        # norm, qkv and out 1x1

    for lv in level_plan(cfg):
        for key in ("down", "up"):
            for ci, co in block_widths(lv["depth"], *lv[key]):
                total += res(ci, lv[key][1], co) + (attn(co) if lv["attn"] else 0)
    return int(total)
