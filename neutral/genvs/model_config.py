"""Configs and host helpers of the GeNVS lifting model (jfozard/genvs_unofficial): the frustum encoder, the
projected feature field and the feature renderer, plus the camera math both trees' tests and data use.

Shared by mindspore_impl/genvs/{encoder,field,renderer}.py and their torch_ref twins. Upstream facts
(paths in jfozard/genvs_unofficial):
- genvs_model.py: the encoder sees images mapped from [-1, 1] to [0, 1], ImageNet-normalised, with Gaussian
  noise of a per-sample scale U(0, 1) added to half of them; its output is viewed as (16, 64, H, W);
- nerf/network_multi.py (get_cam_coords, get_sigma_color_feat): the depth planes are uniform and inclusive in
  [d - bound, d + bound], d the source camera's distance to the origin, bound 1 (nerf/renderer_multi.py);
  trilinear F.grid_sample with align_corners=True; MLP(16 -> 64 softplus -> 17), averaged over source views,
  sigma = softplus, features = sigmoid;
- nerf/renderer_multi.py (run): 64 uniform + 64 importance samples between the ray's entry and exit of the
  box [-1, 1]^3, background 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from neutral.config import ConfigError, parse_structured

# genvs_model.py (NerfDiffDLV3.forward): ImageNet statistics applied to [0, 1] images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderConfig:
    """FrustumEncoder: a conv encoder-decoder (levels = len(channel_mult); level i has base_channels *
    channel_mult[i] channels at 1 / 2^i resolution) whose last conv gives feature_channels * depth_planes
    channels at input resolution. Upstream: DeepLabV3+ (ResNet34), 16 x 64."""
    in_channels: int = 3
    base_channels: int = 32
    channel_mult: List[int] = field(default_factory=lambda: [1, 2, 4])
    norm_groups: int = 8
    feature_channels: int = 16  # C of the (C, D, H, W) volume
    depth_planes: int = 64      # D


@dataclass
class FieldConfig:
    """ProjectedFeatureField: MLP feature_channels -> hidden (softplus) x n_hidden_layers -> 1 + out_features.

    Depth planes of each source view lie uniformly (inclusive) in [plane_near, plane_far] when both are given,
    else in [d - plane_radius, d + plane_radius], d the source camera's distance to the origin (upstream,
    bound 1); plane 0 is the nearest."""
    feature_channels: int = 16
    hidden: int = 64
    n_hidden_layers: int = 1
    out_features: int = 16
    plane_radius: float = 1.0
    plane_near: Optional[float] = None
    plane_far: Optional[float] = None


@dataclass
class RendererConfig:
    """FeatureRenderer: n_samples stratified + n_importance inverse-CDF samples per ray in [near, far]: the
    ray's entry and exit of the box [-radius, radius]^3, or the fixed near / far when both are given.
    Background `background` for every feature channel (upstream 1)."""
    n_samples: int = 64
    n_importance: int = 64
    radius: float = 1.0
    near: Optional[float] = None
    far: Optional[float] = None
    background: float = 1.0


def _int_at_least(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _near_far(where: str, near, far, near_key: str, far_key: str) -> None:
    if (near is None) != (far is None):
        raise ConfigError(f"{where}: give both {near_key} and {far_key} or neither, got {near_key}={near}, "
                          f"{far_key}={far}")
    if near is not None:
        _positive(f"{where}.{near_key}", near)
        _positive(f"{where}.{far_key}", far)
        if not near < far:
            raise ConfigError(f"{where}: need {near_key} < {far_key}, got {near} and {far}")


def check_encoder(cfg: EncoderConfig) -> EncoderConfig:
    """ConfigError naming the first bad field; returns cfg."""
    for name in ("in_channels", "base_channels", "norm_groups", "feature_channels", "depth_planes"):
        _int_at_least(f"genvs encoder.{name}", getattr(cfg, name), 2 if name == "depth_planes" else 1)
    mult = list(cfg.channel_mult)
    if not mult:
        raise ConfigError("genvs encoder.channel_mult must list at least one level, got []")
    for i, m in enumerate(mult):
        _int_at_least(f"genvs encoder.channel_mult[{i}]", m, 1)
        if (cfg.base_channels * m) % cfg.norm_groups:
            raise ConfigError(f"genvs encoder: norm_groups {cfg.norm_groups} must divide every level's channels, "
                              f"level {i} has base_channels * channel_mult[{i}] = {cfg.base_channels * m}")
    return cfg


def check_field(cfg: FieldConfig) -> FieldConfig:
    """ConfigError naming the first bad field; returns cfg."""
    for name in ("feature_channels", "hidden", "out_features"):
        _int_at_least(f"genvs field.{name}", getattr(cfg, name), 1)
    _int_at_least("genvs field.n_hidden_layers", cfg.n_hidden_layers, 0)
    _positive("genvs field.plane_radius", cfg.plane_radius)
    _near_far("genvs field", cfg.plane_near, cfg.plane_far, "plane_near", "plane_far")
    return cfg


def check_renderer(cfg: RendererConfig) -> RendererConfig:
    """ConfigError naming the first bad field; returns cfg."""
    _int_at_least("genvs renderer.n_samples", cfg.n_samples, 2)
    _int_at_least("genvs renderer.n_importance", cfg.n_importance, 0)
    _positive("genvs renderer.radius", cfg.radius)
    _near_far("genvs renderer", cfg.near, cfg.far, "near", "far")
    if isinstance(cfg.background, bool) or not math.isfinite(cfg.background):
        raise ConfigError(f"genvs renderer.background must be a finite number, got {cfg.background!r}")
    return cfg


def check_model(encoder: EncoderConfig, field_cfg: FieldConfig, renderer: RendererConfig) -> None:
    """Each config's check, then that the field reads the encoder's feature channels."""
    check_encoder(encoder)
    check_field(field_cfg)
    check_renderer(renderer)
    if field_cfg.feature_channels != encoder.feature_channels:
        raise ConfigError(f"genvs field.feature_channels ({field_cfg.feature_channels}) must equal "
                          f"encoder.feature_channels ({encoder.feature_channels})")


def parse_encoder(cfg=None) -> EncoderConfig:
    return check_encoder(parse_structured(EncoderConfig, cfg, "genvs encoder"))


def parse_field(cfg=None) -> FieldConfig:
    return check_field(parse_structured(FieldConfig, cfg, "genvs field"))


def parse_renderer(cfg=None) -> RendererConfig:
    return check_renderer(parse_structured(RendererConfig, cfg, "genvs renderer"))


# ----------------------------------------------------------------------------- host helpers (numpy)
def encoder_downsampling(cfg: EncoderConfig) -> int:
    """Image sides must be multiples of this (2 ^ (levels - 1))."""
    return 2 ** (len(cfg.channel_mult) - 1)


def plane_depths(near: float, far: float, n_planes: int) -> np.ndarray:
    """Depths of the n_planes planes of a frustum volume: uniform, near and far included, plane 0 nearest
    (float64 (n_planes,)). Upstream (nerf/network_multi.py) spans the same depths with plane 0 farthest."""
    return np.linspace(float(near), float(far), int(n_planes))


def intrinsics_from_fovy(fovy_rad, height: int, width: int) -> np.ndarray:
    """[fx, fy, cx, cy] in pixels of the project's camera (neutral/lift3d/multiview_cameras.py: focal
    0.5 H / tan(fovy / 2), principal point at the image centre); float32 (..., 4)."""
    focal = 0.5 * height / np.tan(0.5 * np.asarray(fovy_rad, dtype=np.float64))
    return np.stack([focal, focal, np.full_like(focal, width / 2.0), np.full_like(focal, height / 2.0)],
                    -1).astype(np.float32)


def project_points(points, c2w, intrinsics):
    """World points (..., 3) into a camera (c2w (4, 4), OpenGL: columns right, up, -forward, position;
    intrinsics [fx, fy, cx, cy]) -> pixel coordinates (..., 2) (x right, y down, pixel i covers [i, i + 1])
    and depth along the forward axis (...). The inverse of unproject_pixels."""
    c2w = np.asarray(c2w, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64) - c2w[:3, 3]
    cam = p @ c2w[:3, :3]  # R^T p, row-vector form
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    depth = -cam[..., 2]
    return np.stack([cx + fx * cam[..., 0] / depth, cy - fy * cam[..., 1] / depth], -1), depth


def unproject_pixels(pixels, depth, c2w, intrinsics) -> np.ndarray:
    """Pixel coordinates (..., 2) at depths (...) -> world points (..., 3) (project_points' conventions);
    pixel (i + 0.5, j + 0.5) is the centre of column i, row j."""
    c2w = np.asarray(c2w, dtype=np.float64)
    px = np.asarray(pixels, dtype=np.float64)
    d = np.asarray(depth, dtype=np.float64)
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    cam = np.stack([(px[..., 0] - cx) / fx * d, -(px[..., 1] - cy) / fy * d, -d], -1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def draw_input_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Encoder input augmentation of genvs_model.py: per sample (shape[0]) with probability 0.5 a scale
    U(0, 1), else 0, times N(0, I) of `shape`; float32, added to the ImageNet-normalised image. Draw order:
    the coin, the scale, the normals."""
    shape = tuple(int(s) for s in shape)
    coin = rng.random(shape[0]) > 0.5
    scale = rng.random(shape[0])
    noise = rng.standard_normal(shape)
    return ((coin * scale).reshape((-1,) + (1,) * (len(shape) - 1)) * noise).astype(np.float32)


def draw_ray_uniforms(rng: np.random.Generator, shape, cfg: RendererConfig) -> np.ndarray:
    """Uniforms in [0, 1) for the renderer's u input: float32 shape + (n_samples + n_importance,)."""
    return rng.random(tuple(shape) + (cfg.n_samples + cfg.n_importance,), dtype=np.float32)
