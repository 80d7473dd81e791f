"""First stage of the diffusion model, chosen by the model YAML's `first_stage_config.target`.

- an AutoencoderKL target (SD / MVDream): latent diffusion, vae.py;
- `target: identity`: pixel-space diffusion. The "latents" are the images themselves in [-1, 1]
  (scale_factor 1 in the YAML), so the demo model needs no autoencoder to train or ship. With
  patch_size p > 1 they are the images pixel-unshuffled (space-to-depth, torch.nn.PixelUnshuffle's
  channel order): (B, C, H, W) -> (B, C p p, H/p, W/p), exactly invertible and parameter-free, so the
  UNet runs at 1/p the resolution (p = 2 makes the 32x32 demo ~3x cheaper to train on a CPU):

    first_stage_config:
      target: identity
      params: {channels: 3, patch_size: 2}

IdentityFirstStage has AutoencoderKL's method names (encode_sample / encode_mode / decode), no
parameters, and says its latent layout with `embed_dim` (C p p) and `downsample` (p).
Twin: torch_ref/mvdream/first_stage.py.
"""
from __future__ import annotations

from mindspore import nn

from neutral.mvdream.first_stage import (IDENTITY_TARGETS, IdentityFirstStageConfig,  # noqa: F401
                                                     downsample_of, is_identity, parse_identity)


# .contiguous() before the last reshape: on MindSpore 2.7.2 CPU PyNative, reshaping the strided view that
# transpose returns corrupts the glibc heap after a few UNet calls (abort at exit, "corrupted double-linked
# list"); the explicit copy avoids it and is free in graph mode.
def pixel_unshuffle(x, p: int):
    """(B, C, H, W) -> (B, C p p, H/p, W/p), channel index c p^2 + i p + j for pixel (p y + i, p x + j)."""
    if p == 1:
        return x
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).transpose(0, 1, 3, 5, 2, 4)
    return x.contiguous().reshape(b, c * p * p, h // p, w // p)


def pixel_shuffle(z, p: int):
    """Inverse of pixel_unshuffle."""
    if p == 1:
        return z
    b, cpp, h, w = z.shape
    c = cpp // (p * p)
    z = z.reshape(b, c, p, p, h, w).transpose(0, 1, 4, 2, 5, 3)
    return z.contiguous().reshape(b, c, h * p, w * p)


class IdentityFirstStage(nn.Cell):
    """Pixel space: images [B, C, H, W] in [-1, 1] <-> latents [B, C p p, H/p, W/p] (identity for p = 1)."""

    def __init__(self, channels: int = 3, patch_size: int = 1):
        super().__init__()
        self.channels = channels
        self.patch_size = patch_size
        self.downsample = patch_size
        self.embed_dim = channels * patch_size * patch_size

    def encode_sample(self, x, noise=None):
        return pixel_unshuffle(x, self.patch_size)

    def encode_mode(self, x):
        return pixel_unshuffle(x, self.patch_size)

    def decode(self, z):
        return pixel_shuffle(z, self.patch_size)

    def construct(self, x):
        return x


def build_from_config(params) -> IdentityFirstStage:
    cfg = parse_identity(params)
    return IdentityFirstStage(cfg.channels, cfg.patch_size)


def build_first_stage(entry: dict):
    """IdentityFirstStage or AutoencoderKL from a whole `first_stage_config` entry (target + params)."""
    params = dict(entry.get("params") or {})
    if is_identity(entry):
        return build_from_config(params)
    from mindspore_impl.mvdream import vae
    return vae.build_from_config(params)


def latent_shape(first_stage, image_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the latents of a built first stage for square images of `image_size`."""
    if isinstance(first_stage, IdentityFirstStage):
        p = first_stage.patch_size
        return (first_stage.embed_dim, image_size // p, image_size // p)
    down = 2 ** (len(first_stage.encoder.down) - 1)
    return (first_stage.embed_dim, image_size // down, image_size // down)
