"""Framework-neutral part of the NeRF volume renderer: config, config checks, the sub-module holder
and the host-side jitter (numpy). Shared by mindspore_impl/ and torch_ref/lift3d/renderers/nerf_volume_renderer.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from neutral.config import ConfigError, parse_structured


IMAGE_KEYS = ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth", "z_variance", "comp_normal")


@dataclass
class Config:
    radius: float = 1.0
    num_samples_per_ray: int = 64          # uniform (coarse) samples per ray
    num_importance_samples: int = 0        # extra inverse-CDF samples per ray; 0 disables the coarse pass
    randomized: bool = True                # stratified jitter (from the `jitter` input) when training
    eval_chunk_size: int = 16384           # rays per chunk in render_chunked
    grid_prune: bool = True
    prune_alpha_threshold: bool = True     # accepted for upstream configs; static shapes never drop samples
    grid_resolution: int = 32
    occ_threshold: float = 0.01
    occ_ema_decay: float = 0.95
    occ_update_interval: int = 16
    occ_step_samples: int = 512            # occupancy alpha uses upstream render_step_size 1.732*2*radius/512
    return_comp_normal: bool = False
    # empty-space skipping in deferred training steps (system.render_chunk_rays > 0): buffer sizes for the
    # occupied samples of a ray chunk, as fractions of its samples, ascending (e.g. [0.125, 0.25, 0.5, 1.0]);
    # each step takes the smallest that holds every occupied sample. Empty: every sample is evaluated.
    compaction_buckets: list = field(default_factory=list)
    return_normal_perturb: bool = False


class SubModules:
    """Plain holder: the system owns geometry/material/background (and their parameter names); the renderer only
    calls them, as threestudio's renderer does."""

    def __init__(self, geometry, material, background):
        self.geometry, self.material, self.background = geometry, material, background


def check_config(cfg: Config, geometry, material) -> None:
    if cfg.return_normal_perturb:
        raise ConfigError(f"nerf-volume-renderer: return_normal_perturb=True is not supported")
    buckets = list(cfg.compaction_buckets)
    if any(not 0 < float(f) <= 1 for f in buckets) or buckets != sorted(buckets) or (buckets and buckets[-1] != 1):
        raise ConfigError(f"nerf-volume-renderer: compaction_buckets must be ascending fractions in (0, 1] ending at "
                         f"1.0 (e.g. [0.125, 0.25, 0.5, 1.0]), got {buckets}")
    if cfg.num_samples_per_ray < 2 or cfg.num_importance_samples < 0:
        raise ConfigError(f"nerf-volume-renderer: need num_samples_per_ray >= 2 and num_importance_samples >= 0, "
                         f"got {cfg.num_samples_per_ray}, {cfg.num_importance_samples}")
    if abs(cfg.radius - float(geometry.cfg.radius)) > 1e-6:
        raise ConfigError(f"nerf-volume-renderer: radius {cfg.radius} differs from geometry radius {geometry.cfg.radius}")
    if material.requires_normal and geometry.cfg.normal_type is None:
        raise ConfigError(f"nerf-volume-renderer: the material needs normals but geometry.normal_type is None")


def make_jitter(shape, seed: int) -> np.ndarray:
    """Host-side stratification jitter (B,H,W,S) in [0,1) from an explicit seed."""
    return np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)


def parse_renderer_config(cfg, geometry, material) -> tuple[Config, float, bool]:
    """-> (config, occupancy-update step size, whether normals are computed), checked against the
    geometry and material the renderer will call."""
    parsed = parse_structured(Config, cfg, "nerf-volume-renderer")
    check_config(parsed, geometry, material)
    occ_step_size = math.sqrt(3.0) * 2.0 * parsed.radius / parsed.occ_step_samples
    need_normal = geometry.cfg.normal_type is not None and (material.requires_normal or parsed.return_comp_normal)
    return parsed, occ_step_size, need_normal
