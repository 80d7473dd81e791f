"""Static-shape NeRF volume renderer `nerf-volume-renderer` (MindSpore; twin of torch_ref/.../nerf_volume_renderer.py).

Per ray: box intersection, `num_samples_per_ray` stratified samples (+ optional importance samples drawn by
inverse CDF from a density-only coarse pass), occupancy-grid pruning (empty cells get zero density), then
threestudio's compositing. All shapes are static, so forward + backward compile in GRAPH mode.
All randomness enters through the `jitter` tensor (B,H,W,S), S = `jitter_samples`, drawn on the host from a seed.
"""
from __future__ import annotations

import math
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from neutral.registry import register
from mindspore_impl.lift3d.renderers.occupancy_grid import OccupancyGrid
from mindspore_impl.rendering.ray_sampling import (_arange, compact_slots, composite_weights, merged_intervals,
                                                          normalize, ray_box_intersect, sample_pdf, scatter_back,
                                                          sort_samples, stratified_t, uniform_intervals)
from neutral.lift3d.nerf_volume_renderer import IMAGE_KEYS, Config, SubModules, parse_renderer_config


@register("nerf-volume-renderer")
class NeRFVolumeRenderer(nn.Cell):
    Config = Config

    def __init__(self, cfg, geometry, material, background):
        super().__init__()
        self.cfg, self.occ_step_size, self.need_normal = parse_renderer_config(cfg, geometry, material)
        self.sub_modules = SubModules(geometry, material, background)
        self.estimator = OccupancyGrid(self.cfg.radius, self.cfg.grid_resolution)
        self.num_coarse = self.cfg.num_samples_per_ray
        self.num_importance = self.cfg.num_importance_samples
        self.radius = float(self.cfg.radius)
        self.randomized = self.cfg.randomized
        self.grid_prune = self.cfg.grid_prune
        self._eval_bucket_index = 0  # render_chunked: the compaction bucket that held the last chunk (host state)

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
        return self.num_coarse + self.num_importance

    # ---------------------------------------------------------------- sampling
    def _uniforms(self, jitter, n_rays: int, ref):
        sc, si = self.num_coarse, self.num_importance
        fixed = jitter is None or not self.randomized
        u_c = ops.ones((n_rays, sc), ref.dtype) * 0.5 if fixed else jitter[:, :sc]
        if si == 0:  # no importance pass: skip zero-size tensors (MindSpore's CPU kernels warn on them)
            return u_c, None
        k = _arange(si, ref.dtype)
        if fixed:
            return u_c, ops.broadcast_to(ops.expand_dims((k + 0.5) / si, 0), (n_rays, si))
        return u_c, (k + jitter[:, sc:]) / si

    def _occupancy(self, positions):
        if not self.grid_prune:
            return ops.ones_like(positions[:, :1])
        return self.estimator.occupied(positions)

    def bucket_sizes(self, n_rays: int, fraction: float) -> tuple[int, int]:
        """Buffer sizes (fine samples, coarse samples) of a compaction bucket for n_rays rays (0: dense)."""
        if fraction <= 0:
            return 0, 0
        size = lambda m: min(m, -(-int(math.ceil(fraction * m)) // 64) * 64)  # a multiple of 64, at most m
        coarse = size(n_rays * self.num_coarse) if self.num_importance else 0
        return size(n_rays * self.jitter_samples), coarse

    def _coarse_density(self, pos_c, bucket: int):
        """Occupancy-masked density of the coarse samples, evaluated only on occupied ones when bucket > 0
        -> (M,1) and the occupied count."""
        occ = self._occupancy(pos_c)
        if not bucket:
            return self.geometry.forward_density(pos_c) * occ, (occ > 0.5).astype(ms.int32).sum()
        slot, source, count = compact_slots(occ.reshape(-1) > 0.5, bucket)
        return scatter_back(self.geometry.forward_density(ops.gather(pos_c, source, 0)), slot), count

    def _sample_intervals(self, rays_o, rays_d, near, far, u_c, u_i, bucket: int = 0):
        """-> t (R,S) sample positions, interval starts/ends (R,S) and the occupied coarse-sample count;
        no gradient flows through sampling."""
        step = (far - near) / self.num_coarse
        t_c = stratified_t(near, step, u_c)
        if self.num_importance == 0:
            starts, ends = uniform_intervals(near, step, self.num_coarse)
            return t_c, starts, ends, ops.zeros((), ms.int32)
        pos_c = (ops.expand_dims(rays_o, 1) + ops.expand_dims(rays_d, 1) * ops.expand_dims(t_c, 2)).reshape(-1, 3)
        sigma_c, count = self._coarse_density(pos_c, bucket)
        sigma_c = sigma_c.reshape(t_c.shape)
        w_c = composite_weights(ops.stop_gradient(sigma_c), ops.broadcast_to(step, t_c.shape))
        t_i = sample_pdf(near, step, w_c, u_i)
        t = ops.stop_gradient(sort_samples(ops.concat([t_c, t_i], -1)))
        starts, ends = merged_intervals(t, near, far)
        return t, starts, ends, count

    def _shade(self, positions, t_dirs, t_light, shading, ambient_color, diffuse_color):
        """Occupancy-masked density (M,1) and colour (M,3) at every sample, plus the normal (M,3) when normals
        are on (no None in the tuple: GRAPH mode warns about None elements of returned tuples)."""
        if self.need_normal:
            density, features, normal = self.geometry.forward_with_normal(positions)
            rgb = self.material(features, t_dirs, positions, t_light, normal, shading=shading,
                                ambient_color=ambient_color, diffuse_color=diffuse_color)
            return density * self._occupancy(positions), rgb, normal
        density, features = self.geometry(positions)
        rgb = self.material(features, t_dirs, positions, t_light, None, shading=shading, ambient_color=ambient_color,
                            diffuse_color=diffuse_color)
        return density * self._occupancy(positions), rgb

    def _shade_occupied(self, positions, t_dirs, t_light, shading, ambient_color, diffuse_color, bucket: int):
        """_shade on a buffer of `bucket` occupied samples, scattered back (empty samples: density 0, colour 0,
        normal 0; they get no compositing weight either way) -> (occupied count, then _shade's outputs)."""
        slot, source, count = compact_slots(self._occupancy(positions).reshape(-1) > 0.5, bucket)
        pick = lambda x: ops.gather(x, source, 0)
        shaded = self._shade(pick(positions), pick(t_dirs), pick(t_light), shading, ambient_color, diffuse_color)
        return (count,) + tuple(scatter_back(x, slot) for x in shaded)

    # ---------------------------------------------------------------- rendering
    def render_rays(self, rays_o, rays_d, light_positions, u_c, u_i, bg_rgb, shading="diffuse",
                    ambient_color=None, diffuse_color=None, bucket=(0, 0)):
        """Flat rays (R,3) with per-ray light positions (R,3) and background colours (R,3) -> dict of (R,...) maps
        and per-sample tensors (R*S,...).

        bucket (fine, coarse) > 0 evaluates the field only on that many occupied samples (bucket_sizes); the
        result equals the dense render when the buffers hold every occupied sample, which the returned
        `occupied` counts (fine, coarse) let the caller check."""
        n_rays = rays_o.shape[0]
        near, far = ray_box_intersect(rays_o, rays_d, self.radius)
        t, starts, ends, count_c = self._sample_intervals(rays_o, rays_d, near, far, u_c, u_i, bucket[1])
        n_s = t.shape[-1]
        positions = (ops.expand_dims(rays_o, 1) + ops.expand_dims(rays_d, 1) * ops.expand_dims(t, 2)).reshape(-1, 3)
        t_dirs = ops.broadcast_to(ops.expand_dims(rays_d, 1), (n_rays, n_s, 3)).reshape(-1, 3)
        t_light = ops.broadcast_to(ops.expand_dims(light_positions, 1), (n_rays, n_s, 3)).reshape(-1, 3)
        if bucket[0]:
            compacted = self._shade_occupied(positions, t_dirs, t_light, shading, ambient_color, diffuse_color,
                                             bucket[0])
            count, shaded = compacted[0], compacted[1:]
        else:
            shaded = self._shade(positions, t_dirs, t_light, shading, ambient_color, diffuse_color)
            count = (self._occupancy(positions) > 0.5).astype(ms.int32).sum()
        density, rgb = shaded[0], shaded[1]
        normal = shaded[2] if self.need_normal else None

        weights = composite_weights(density.reshape(n_rays, n_s), ends - starts)
        opacity = weights.sum(axis=-1, keepdims=True)
        depth = (weights * t).sum(axis=-1, keepdims=True)
        z_variance = (weights * (t - depth) ** 2).sum(axis=-1, keepdims=True)
        comp_rgb_fg = (ops.expand_dims(weights, 2) * rgb.reshape(n_rays, n_s, -1)).sum(axis=1)
        comp_rgb = comp_rgb_fg + bg_rgb * (1.0 - opacity)
        if self.need_normal:
            comp_normal = normalize((ops.expand_dims(weights, 2) * normal.reshape(n_rays, n_s, 3)).sum(axis=1))
            comp_normal = (comp_normal + 1.0) / 2.0 * opacity  # [0,1] for visualisation, as threestudio
            return {"comp_rgb": comp_rgb, "comp_rgb_fg": comp_rgb_fg, "comp_rgb_bg": bg_rgb, "opacity": opacity,
                    "depth": depth, "z_variance": z_variance, "weights": weights.reshape(-1, 1),
                    "t_points": t.reshape(-1, 1), "t_dirs": t_dirs, "comp_normal": comp_normal, "normal": normal,
                    "occupied": ops.stack([count.astype(ms.int32), count_c.astype(ms.int32)])}
        return {"comp_rgb": comp_rgb, "comp_rgb_fg": comp_rgb_fg, "comp_rgb_bg": bg_rgb, "opacity": opacity,
                "depth": depth, "z_variance": z_variance, "weights": weights.reshape(-1, 1),
                "t_points": t.reshape(-1, 1), "t_dirs": t_dirs, "occupied": ops.stack([count.astype(ms.int32), count_c.astype(ms.int32)])}

    def construct(self, rays_o, rays_d, light_positions, jitter=None, bg_aug_color=None, shading="diffuse",
                  ambient_color=None, diffuse_color=None):
        """rays_o, rays_d (B,H,W,3); light_positions (B,3); jitter (B,H,W,S) in [0,1) or None; bg_aug_color (3,).

        Returns comp_rgb, comp_rgb_fg, comp_rgb_bg (B,H,W,3), opacity, depth, z_variance (B,H,W,1),
        comp_normal (B,H,W,3) when normals are on; per sample (M = B*H*W*S): weights, t_points (M,1), t_dirs (M,3),
        normal (M,3) when normals are on."""
        b, h, w, _ = rays_o.shape
        n_rays = b * h * w
        bg = self.background(rays_d, bg_aug_color).reshape(n_rays, 3)
        light = ops.broadcast_to(ops.expand_dims(light_positions, 1), (b, h * w, 3)).reshape(n_rays, 3)
        flat_jitter = None if jitter is None else jitter.reshape(n_rays, -1)
        u_c, u_i = self._uniforms(flat_jitter, n_rays, rays_o)
        out = self.render_rays(rays_o.reshape(n_rays, 3), rays_d.reshape(n_rays, 3), light, u_c, u_i, bg, shading,
                               ambient_color, diffuse_color)
        img = (b, h, w, -1)
        if self.need_normal:
            return {"comp_rgb": out["comp_rgb"].reshape(img), "comp_rgb_fg": out["comp_rgb_fg"].reshape(img),
                    "comp_rgb_bg": out["comp_rgb_bg"].reshape(img), "opacity": out["opacity"].reshape(img),
                    "depth": out["depth"].reshape(img), "z_variance": out["z_variance"].reshape(img),
                    "weights": out["weights"], "t_points": out["t_points"], "t_dirs": out["t_dirs"],
                    "comp_normal": out["comp_normal"].reshape(img), "normal": out["normal"],
                    "occupied": out["occupied"]}
        return {"comp_rgb": out["comp_rgb"].reshape(img), "comp_rgb_fg": out["comp_rgb_fg"].reshape(img),
                "comp_rgb_bg": out["comp_rgb_bg"].reshape(img), "opacity": out["opacity"].reshape(img),
                "depth": out["depth"].reshape(img), "z_variance": out["z_variance"].reshape(img),
                "weights": out["weights"], "t_points": out["t_points"], "t_dirs": out["t_dirs"],
                "occupied": out["occupied"]}

    def render_ray_chunk(self, rays_o, rays_d, light_positions, jitter=None, bg_aug_color=None, shading="diffuse",
                         ambient_color=None, diffuse_color=None, bucket=(0, 0)):
        """Flat rays (C,3) with per-ray light positions (C,3) and jitter (C,S) or None -> render_rays' dict,
        the background drawn per ray. One chunk of render_chunked and of deferred backpropagation."""
        c = rays_o.shape[0]
        bg = self.background(rays_d.reshape(1, 1, c, 3), bg_aug_color).reshape(c, 3)
        u_c, u_i = self._uniforms(jitter, c, rays_o)
        return self.render_rays(rays_o, rays_d, light_positions, u_c, u_i, bg, shading, ambient_color, diffuse_color,
                                bucket)

    def render_chunked(self, rays_o, rays_d, light_positions, jitter=None, bg_aug_color=None, shading="diffuse",
                       ambient_color=None, diffuse_color=None, chunk_size: Optional[int] = None):
        """Same image outputs as construct, rendered in fixed-size ray chunks (the last one padded), so a 512x512
        eval image reuses one compiled chunk shape. Host-side loop; no gradients.

        With compaction_buckets each chunk evaluates the field only on its occupied samples, in the smallest
        bucket that held the previous chunk's; a chunk that overflows it is rendered again with the bucket
        that holds it, so the images equal the dense render."""
        chunk = int(chunk_size or self.cfg.eval_chunk_size)
        b, h, w, _ = rays_o.shape
        n_rays = b * h * w
        light = ops.broadcast_to(ops.expand_dims(light_positions, 1), (b, h * w, 3)).reshape(n_rays, 3)
        flat_jitter = None if jitter is None else jitter.reshape(n_rays, -1)
        pad = (-n_rays) % chunk

        def padded(x):
            if not pad:
                return x
            return ops.concat([x, ops.broadcast_to(x[-1:], (pad,) + tuple(x.shape[1:]))], 0)

        o, d, lp = padded(rays_o.reshape(n_rays, 3)), padded(rays_d.reshape(n_rays, 3)), padded(light)
        jit = None if flat_jitter is None else padded(flat_jitter)
        fractions = [float(f) for f in self.cfg.compaction_buckets]
        index = min(self._eval_bucket_index, max(len(fractions) - 1, 0))
        pieces = {}
        for s in range(0, n_rays + pad, chunk):
            while True:
                bucket = self.bucket_sizes(chunk, fractions[index]) if fractions else (0, 0)
                out = self.render_ray_chunk(o[s:s + chunk], d[s:s + chunk], lp[s:s + chunk],
                                            None if jit is None else jit[s:s + chunk], bg_aug_color, shading,
                                            ambient_color, diffuse_color, bucket)
                if not fractions:
                    break
                occupied = out["occupied"].asnumpy()
                if np.all(occupied <= np.asarray(bucket)):
                    break
                index = next(i for i in range(index + 1, len(fractions))
                             if np.all(occupied <= np.asarray(self.bucket_sizes(chunk, fractions[i]))))
            for key in IMAGE_KEYS:
                if key in out:
                    pieces.setdefault(key, []).append(ops.stop_gradient(out[key]))
        self._eval_bucket_index = index  # the next view (an orbit renders one view per call) starts there
        return {key: ops.concat(v, 0)[:n_rays].reshape(b, h, w, -1) for key, v in pieces.items()}

    # ---------------------------------------------------------------- occupancy grid
    def update_step(self, global_step: int, rng: Optional[np.random.Generator] = None) -> bool:
        """Host-side occupancy update every `occ_update_interval` steps; returns whether it ran. The update's seed
        is drawn from rng every step (a fixed number of draws per step); rng None (after a checkpoint load): no
        update, the grid comes from the checkpoint."""
        if rng is None:
            return False
        rng_seed = int(rng.integers(0, 2 ** 31 - 1))
        if not self.grid_prune or global_step % self.cfg.occ_update_interval != 0:
            return False
        self.estimator.update(self.geometry.forward_density, self.occ_step_size, rng_seed,
                              self.cfg.occ_ema_decay, self.cfg.occ_threshold)
        return True
