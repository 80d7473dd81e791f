"""Static-shape NeRF volume renderer (PyTorch reference; twin of mindspore_impl/.../nerf_volume_renderer.py).

Per ray: box intersection, `num_samples_per_ray` stratified samples (+ optional importance samples drawn by
inverse CDF from a density-only coarse pass), occupancy-grid pruning (empty cells get zero density), then
threestudio's compositing. All randomness enters through the `jitter` tensor (B,H,W,S), S = `jitter_samples`.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from neutral.lift3d.nerf_volume_renderer import IMAGE_KEYS, Config, SubModules, parse_renderer_config
from torch_ref.lift3d.renderers.occupancy_grid import OccupancyGrid
from torch_ref.rendering.ray_sampling import (compact_slots, composite_weights, merged_intervals, normalize,
                                                     ray_box_intersect, sample_pdf, scatter_back, stratified_t,
                                                     uniform_intervals)


class NeRFVolumeRenderer(nn.Module):
    Config = Config

    def __init__(self, cfg, geometry, material, background):
        super().__init__()
        self.cfg, self.occ_step_size, self.need_normal = parse_renderer_config(cfg, geometry, material)
        self.sub_modules = SubModules(geometry, material, background)
        self.estimator = OccupancyGrid(self.cfg.radius, self.cfg.grid_resolution)

    @property
    def geometry(self):
        return self.sub_modules.geometry

    @property
    def material(self):
        return self.sub_modules.material

    @property
    def background(self):
        return self.sub_modules.background

    @property
    def jitter_samples(self) -> int:
        """Last dimension of the `jitter` input."""
        return self.cfg.num_samples_per_ray + self.cfg.num_importance_samples

    # ---------------------------------------------------------------- sampling
    def _uniforms(self, jitter: Optional[torch.Tensor], n_rays: int, ref: torch.Tensor):
        sc, si = self.cfg.num_samples_per_ray, self.cfg.num_importance_samples
        k = torch.arange(si, dtype=ref.dtype, device=ref.device)
        if jitter is None or not self.cfg.randomized:
            return torch.full((n_rays, sc), 0.5, dtype=ref.dtype, device=ref.device), ((k + 0.5) / max(si, 1)).expand(n_rays, si)
        return jitter[:, :sc], (k + jitter[:, sc:]) / max(si, 1)

    def _occupancy(self, positions: torch.Tensor) -> torch.Tensor:
        if not self.cfg.grid_prune:
            return torch.ones_like(positions[:, :1])
        return self.estimator.occupied(positions)

    def bucket_sizes(self, n_rays: int, fraction: float) -> tuple[int, int]:
        """Buffer sizes (fine samples, coarse samples) of a compaction bucket for n_rays rays (0: dense)."""
        if fraction <= 0:
            return 0, 0
        size = lambda m: min(m, -(-int(math.ceil(fraction * m)) // 64) * 64)
        coarse = size(n_rays * self.cfg.num_samples_per_ray) if self.cfg.num_importance_samples else 0
        return size(n_rays * self.jitter_samples), coarse

    def _coarse_density(self, pos_c, bucket: int):
        occ = self._occupancy(pos_c)
        if not bucket:
            return self.geometry.forward_density(pos_c) * occ, (occ > 0.5).sum()
        slot, source, count = compact_slots(occ.reshape(-1) > 0.5, bucket)
        return scatter_back(self.geometry.forward_density(pos_c[source]), slot), count

    def _sample_intervals(self, rays_o, rays_d, near, far, u_c, u_i, bucket: int = 0):
        """-> t (R,S) sample positions, interval starts/ends (R,S) and the occupied coarse-sample count;
        detached (no gradient through sampling)."""
        sc = self.cfg.num_samples_per_ray
        step = (far - near) / sc
        t_c = stratified_t(near, step, u_c)
        if self.cfg.num_importance_samples == 0:
            starts, ends = uniform_intervals(near, step, sc)
            return t_c, starts, ends, torch.zeros((), dtype=torch.int64, device=near.device)
        with torch.no_grad():
            pos_c = (rays_o[:, None, :] + rays_d[:, None, :] * t_c[..., None]).reshape(-1, 3)
            sigma_c, count = self._coarse_density(pos_c, bucket)
            w_c = composite_weights(sigma_c.reshape(t_c.shape), step.expand_as(t_c))
            t_i = sample_pdf(near, step, w_c, u_i)
            t, _ = torch.sort(torch.cat([t_c, t_i], dim=-1), dim=-1)
            starts, ends = merged_intervals(t, near, far)
        return t, starts, ends, count

    def _shade(self, positions, t_dirs, t_light, shading, ambient_color, diffuse_color):
        """Occupancy-masked density (M,1), colour (M,3) and normal (M,3) or None at every sample."""
        normal = None
        if self.need_normal:
            density, features, normal = self.geometry.forward_with_normal(positions)
        else:
            density, features = self.geometry(positions)
        rgb = self.material(features, t_dirs, positions, t_light, normal, shading=shading, ambient_color=ambient_color,
                            diffuse_color=diffuse_color)
        return density * self._occupancy(positions), rgb, normal

    def _shade_occupied(self, positions, t_dirs, t_light, shading, ambient_color, diffuse_color, bucket: int):
        """_shade on a buffer of `bucket` occupied samples, scattered back -> density, rgb, normal, count."""
        slot, source, count = compact_slots(self._occupancy(positions).reshape(-1) > 0.5, bucket)
        density, rgb, normal = self._shade(positions[source], t_dirs[source], t_light[source], shading,
                                           ambient_color, diffuse_color)
        normal = None if normal is None else scatter_back(normal, slot)
        return scatter_back(density, slot), scatter_back(rgb, slot), normal, count

    # ---------------------------------------------------------------- rendering
    def render_rays(self, rays_o, rays_d, light_positions, u_c, u_i, bg_rgb, shading="diffuse",
                    ambient_color=None, diffuse_color=None, bucket=(0, 0)):
        """Flat rays (R,3) with per-ray light positions (R,3) and background colours (R,3) -> dict of (R,...) maps
        and per-sample tensors (R*S,...); bucket (fine, coarse) > 0: evaluate only occupied samples (see twin)."""
        n_rays = rays_o.shape[0]
        near, far = ray_box_intersect(rays_o, rays_d, self.cfg.radius)
        t, starts, ends, count_c = self._sample_intervals(rays_o, rays_d, near, far, u_c, u_i, bucket[1])
        n_s = t.shape[-1]
        positions = (rays_o[:, None, :] + rays_d[:, None, :] * t[..., None]).reshape(-1, 3)
        t_dirs = rays_d[:, None, :].expand(n_rays, n_s, 3).reshape(-1, 3)
        t_light = light_positions[:, None, :].expand(n_rays, n_s, 3).reshape(-1, 3)
        if bucket[0]:
            density, rgb, normal, count = self._shade_occupied(positions, t_dirs, t_light, shading, ambient_color,
                                                               diffuse_color, bucket[0])
        else:
            density, rgb, normal = self._shade(positions, t_dirs, t_light, shading, ambient_color, diffuse_color)
            count = (self._occupancy(positions) > 0.5).sum()

        weights = composite_weights(density.reshape(n_rays, n_s), ends - starts)
        opacity = weights.sum(dim=-1, keepdim=True)
        depth = (weights * t).sum(dim=-1, keepdim=True)
        z_variance = (weights * (t - depth) ** 2).sum(dim=-1, keepdim=True)
        comp_rgb_fg = (weights[..., None] * rgb.reshape(n_rays, n_s, -1)).sum(dim=1)
        out = {
            "comp_rgb": comp_rgb_fg + bg_rgb * (1.0 - opacity),
            "comp_rgb_fg": comp_rgb_fg,
            "comp_rgb_bg": bg_rgb,
            "opacity": opacity,
            "depth": depth,
            "z_variance": z_variance,
            "weights": weights.reshape(-1, 1),
            "t_points": t.reshape(-1, 1),
            "t_dirs": t_dirs,
            "occupied": torch.stack([count, count_c]),
        }
        if normal is not None:
            comp_normal = normalize((weights[..., None] * normal.reshape(n_rays, n_s, 3)).sum(dim=1))
            out["comp_normal"] = (comp_normal + 1.0) / 2.0 * opacity  # [0,1] for visualisation, as threestudio
            out["normal"] = normal
        return out

    def forward(self, rays_o, rays_d, light_positions, jitter=None, bg_aug_color=None, shading="diffuse",
                  ambient_color=None, diffuse_color=None):
        """rays_o, rays_d (B,H,W,3); light_positions (B,3); jitter (B,H,W,S) in [0,1) or None; bg_aug_color (3,)."""
        b, h, w, _ = rays_o.shape
        n_rays = b * h * w
        bg = self.background(rays_d, bg_aug_color).reshape(n_rays, 3)
        light = light_positions[:, None, :].expand(b, h * w, 3).reshape(n_rays, 3)
        flat_jitter = None if jitter is None else jitter.reshape(n_rays, -1)
        u_c, u_i = self._uniforms(flat_jitter, n_rays, rays_o)
        out = self.render_rays(rays_o.reshape(n_rays, 3), rays_d.reshape(n_rays, 3), light, u_c, u_i, bg, shading,
                               ambient_color, diffuse_color)
        for key in IMAGE_KEYS:
            if key in out:
                out[key] = out[key].reshape(b, h, w, -1)
        return out

    def render_ray_chunk(self, rays_o, rays_d, light_positions, jitter=None, bg_aug_color=None, shading="diffuse",
                         ambient_color=None, diffuse_color=None, bucket=(0, 0)):
        """Flat rays (C,3), light positions (C,3), jitter (C,S) or None -> render_rays' dict, background per ray."""
        c = rays_o.shape[0]
        bg = self.background(rays_d.reshape(1, 1, c, 3), bg_aug_color).reshape(c, 3)
        u_c, u_i = self._uniforms(jitter, c, rays_o)
        return self.render_rays(rays_o, rays_d, light_positions, u_c, u_i, bg, shading, ambient_color, diffuse_color,
                                bucket)

    @torch.no_grad()
    def render_chunked(self, rays_o, rays_d, light_positions, jitter=None, bg_aug_color=None, shading="diffuse",
                       ambient_color=None, diffuse_color=None, chunk_size: Optional[int] = None):
        """Same image outputs as forward, rendered in fixed-size ray chunks (the last one padded)."""
        chunk = int(chunk_size or self.cfg.eval_chunk_size)
        b, h, w, _ = rays_o.shape
        n_rays = b * h * w
        light = light_positions[:, None, :].expand(b, h * w, 3).reshape(n_rays, 3)
        flat_jitter = None if jitter is None else jitter.reshape(n_rays, -1)
        pad = (-n_rays) % chunk

        def padded(x):
            return torch.cat([x, x[-1:].expand(pad, *x.shape[1:])], dim=0) if pad else x

        o, d, lp = padded(rays_o.reshape(n_rays, 3)), padded(rays_d.reshape(n_rays, 3)), padded(light)
        jit = None if flat_jitter is None else padded(flat_jitter)
        pieces = {}
        for s in range(0, n_rays + pad, chunk):
            sl = slice(s, s + chunk)
            out = self.render_ray_chunk(o[sl], d[sl], lp[sl], None if jit is None else jit[sl], bg_aug_color, shading,
                                        ambient_color, diffuse_color)
            for key in IMAGE_KEYS:
                if key in out:
                    pieces.setdefault(key, []).append(out[key])
        return {key: torch.cat(v, dim=0)[:n_rays].reshape(b, h, w, -1) for key, v in pieces.items()}

    # ---------------------------------------------------------------- occupancy grid
    def update_step(self, global_step: int, rng: Optional[np.random.Generator] = None) -> bool:
        """Host-side occupancy update every `occ_update_interval` steps; returns whether it ran. The update's seed
        is drawn from rng every step (a fixed number of draws per step); rng None (after a checkpoint load): no
        update, the grid comes from the checkpoint."""
        if rng is None:
            return False
        rng_seed = int(rng.integers(0, 2 ** 31 - 1))
        if not self.cfg.grid_prune or global_step % self.cfg.occ_update_interval != 0:
            return False
        self.estimator.update(self.geometry.forward_density, self.occ_step_size, rng_seed,
                              self.cfg.occ_ema_decay, self.cfg.occ_threshold)
        return True
