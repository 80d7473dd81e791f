"""Framework-neutral part of the CLIP image tower that Zero-1-to-3 conditions on: arch table, config schema,
preprocessing constants and the cubic kernel of the resize.

Upstream: cvlab-columbia/zero123 zero123/ldm/modules/encoders/modules.py (`FrozenCLIPImageEmbedder`: openai CLIP
'ViT-L/14' loaded with `clip.load`, text transformer deleted, inputs in [-1, 1] resized to 224 x 224 with
kornia's bicubic resize, align_corners=True, antialias False by default, then mapped to [0, 1] and normalised
with CLIP's mean / std); openai/CLIP clip/model.py (`VisionTransformer`, and `CLIP.__init__`: vision heads =
width // 64). Shared by mindspore_impl/zero123/clip_image_encoder.py and its torch_ref twin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neutral.config import ConfigError, parse_structured

# openai CLIP's image normalisation (FrozenCLIPImageEmbedder's `mean` / `std` buffers)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# torch's upsample_bicubic2d (and so kornia's resize) uses the cubic convolution kernel with A = -0.75
CUBIC_A = -0.75


@dataclass
class VisionArch:
    """openai CLIP VisionTransformer sizes; `image_size` is both its input_resolution and the resize target."""
    width: int = 1024
    layers: int = 24
    heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    output_dim: int = 768


ARCHS = {"ViT-L/14": VisionArch(width=1024, layers=24, heads=16, patch_size=14, image_size=224, output_dim=768)}


@dataclass
class FrozenCLIPImageEmbedderConfig:
    """`cond_stage_config.params` (upstream's constructor arguments); `model` is an openai CLIP name in ARCHS or
    a dict of VisionArch fields (tiny test models). jit / device are accepted for the original YAML."""
    model: Any = "ViT-L/14"
    jit: bool = False
    device: str = "cpu"
    antialias: bool = False


def parse_config(params) -> tuple[VisionArch, FrozenCLIPImageEmbedderConfig]:
    """-> (resolved arch, config); unknown keys, names or inconsistent sizes raise ConfigError."""
    cfg = parse_structured(FrozenCLIPImageEmbedderConfig, params or {}, "cond_stage_config.params")
    if isinstance(cfg.model, str):
        if cfg.model not in ARCHS:
            raise ConfigError(f"unknown CLIP image model {cfg.model!r}; known: {sorted(ARCHS)} or a dict of "
                              f"{list(VisionArch.__dataclass_fields__)}")
        arch = ARCHS[cfg.model]
    else:
        arch = parse_structured(VisionArch, cfg.model, "cond_stage_config.params.model")
    if arch.heads < 1 or arch.width % arch.heads:
        raise ConfigError(f"CLIP image width {arch.width} is not divisible by heads {arch.heads}")
    if arch.patch_size < 1 or arch.image_size % arch.patch_size:
        raise ConfigError(f"CLIP image_size {arch.image_size} is not a multiple of patch_size {arch.patch_size}")
    if cfg.antialias:
        # kornia blurs with a Gaussian before downscaling then; upstream's config leaves it off
        raise ConfigError("cond_stage_config.params.antialias=True is not implemented (upstream's default is False)")
    return arch, cfg


def num_positions(arch: VisionArch) -> int:
    """Tokens of the tower: one per patch plus the class token (rows of `positional_embedding`)."""
    return (arch.image_size // arch.patch_size) ** 2 + 1


def cubic_tap_weights(t):
    """Weights of the 4 taps at floor(src) - 1 .. floor(src) + 2 for the fraction t = src - floor(src) in [0, 1);
    plain arithmetic, so it runs on numpy arrays and framework tensors alike."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def align_corners_scale(n_in: int, n_out: int) -> float:
    """Source step per output pixel with align_corners=True (corner pixels map onto corner pixels)."""
    return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
