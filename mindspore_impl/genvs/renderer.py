"""FeatureRenderer: volume-render the projected feature field into a feature image of a target camera
(MindSpore; twin of torch_ref/genvs/renderer.py), plus the full-image helper and the nearest x2 upsample that
conditions the denoiser.

Upstream (jfozard/genvs_unofficial, nerf/renderer_multi.py run, nerf/utils.py render_multi_view, genvs_model.py):
64 samples between the ray's entry and exit of the box [-1, 1]^3, 64 more drawn from the coarse weights
(no gradient through the sampling), weights alpha * transmittance, features composited over a background of 1,
depth = sum(w t), opacity = sum(w); the 16-channel 64 x 64 render is upsampled x2 (nearest) for the denoiser.
The sampling and compositing here are the shared static-shape ones of mindspore_impl/rendering/ray_sampling.py
(stratified coarse samples, inverse-CDF importance samples, intervals split at the midpoints), combined as in
mindspore_impl/lift3d/renderers/nerf_volume_renderer.py. Random numbers come in as `u` (drawn on the host:
neutral/genvs/model_config.py draw_ray_uniforms); u None gives the deterministic midpoints.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from mindspore_impl.rendering.ray_sampling import (composite_weights, merged_intervals, normalize, ray_box_intersect,
                                                   sample_pdf, sort_samples, stratified_t, uniform_intervals)
from neutral.genvs.model_config import parse_renderer


def _arange(n: int, dtype):
    return ops.arange(0, n, 1, dtype=ms.int32).astype(dtype)


def upsample_nearest2x(x):
    """(B, C, H, W) -> (B, C, 2H, 2W), each pixel repeated 2 x 2 (F.interpolate(scale_factor=2), mode nearest).
    By broadcasting, so it runs on every backend and has the exact gradient (the sum over each 2 x 2 block)."""
    b, c, h, w = x.shape
    x = ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, 2, w, 2))
    return x.reshape(b, c, 2 * h, 2 * w)


class FeatureRenderer(nn.Cell):
    """construct(rays_o, rays_d (B, R, 3), c2w (B, N, 4, 4), intrinsics (B, N, 4), volumes (B, N, C, D, H, W),
    u (B, R, n_samples + n_importance) in [0, 1) or None, view_mask (B, N) or None: the field's) ->
    {"features": (B, R, F), "opacity": (B, R, 1), "depth": (B, R, 1)}. rays_d should be unit vectors (t is then a
    distance). The field is a child cell (parameters field.*)."""

    def __init__(self, cfg, field):
        super().__init__()
        self.cfg = parse_renderer(cfg)
        self.field = field
        self.n_coarse = self.cfg.n_samples
        self.n_importance = self.cfg.n_importance
        self.fixed_bounds = self.cfg.near is not None

    @property
    def n_uniforms(self) -> int:
        """Last dimension of the `u` input."""
        return self.n_coarse + self.n_importance

    def near_far(self, rays_o, rays_d):
        """(R, 3) rays -> near, far (R, 1); box misses get near = far = 0 (no weight: background)."""
        if self.fixed_bounds:
            ones = ops.ones_like(rays_o[:, :1])
            return ones * self.cfg.near, ones * self.cfg.far
        return ray_box_intersect(rays_o, rays_d, self.cfg.radius)

    def _uniforms(self, u, n_rays: int, ref):
        """Coarse (R, Sc) and sorted importance (R, Si) uniforms: stratified from u, midpoints when u is None."""
        sc, si = self.n_coarse, self.n_importance
        if u is None:
            u_c = ops.ones((n_rays, sc), ref.dtype) * 0.5
            u_i = ops.broadcast_to(ops.expand_dims((_arange(si, ref.dtype) + 0.5) / si, 0), (n_rays, si))
            return u_c, u_i
        return u[:, :sc], (_arange(si, ref.dtype) + u[:, sc:]) / si

    def _field(self, pts, b: int, c2w, intrinsics, volumes, view_mask=None):
        """Flat per-ray samples (B*R, S, 3) -> sigma (B*R, S), features (B*R, S, F)."""
        n_rays, s, _ = pts.shape
        sigma, feat = self.field(pts.reshape(b, -1, 3), c2w, intrinsics, volumes, view_mask)
        return sigma.reshape(n_rays, s), feat.reshape(n_rays, s, -1)

    def construct(self, rays_o, rays_d, c2w, intrinsics, volumes, u=None, view_mask=None):
        b, r, _ = rays_o.shape
        n_rays = b * r
        o, d = rays_o.reshape(n_rays, 3), rays_d.reshape(n_rays, 3)
        near, far = self.near_far(o, d)
        u_c, u_i = self._uniforms(None if u is None else u.reshape(n_rays, -1), n_rays, o)
        step = (far - near) / self.n_coarse
        t_c = stratified_t(near, step, u_c)
        o3, d3 = ops.expand_dims(o, 1), ops.expand_dims(d, 1)
        if self.n_importance == 0:
            t = t_c
            starts, ends = uniform_intervals(near, step, self.n_coarse)
        else:
            sigma_c, _ = self._field(o3 + d3 * ops.expand_dims(t_c, 2), b, c2w, intrinsics, volumes, view_mask)
            w_c = composite_weights(ops.stop_gradient(sigma_c), ops.broadcast_to(step, t_c.shape))
            t_i = sample_pdf(near, step, w_c, u_i)
            t = ops.stop_gradient(sort_samples(ops.concat([t_c, t_i], -1)))
            starts, ends = merged_intervals(t, near, far)
        sigma, feat = self._field(o3 + d3 * ops.expand_dims(t, 2), b, c2w, intrinsics, volumes, view_mask)
        weights = composite_weights(sigma, ends - starts)
        opacity = weights.sum(axis=-1, keepdims=True)
        depth = (weights * t).sum(axis=-1, keepdims=True)
        comp = (ops.expand_dims(weights, 2) * feat).sum(axis=1) + self.cfg.background * (1.0 - opacity)
        return {"features": comp.reshape(b, r, -1), "opacity": opacity.reshape(b, r, 1),
                "depth": depth.reshape(b, r, 1)}


def camera_rays(c2w, intrinsics, height: int, width: int):
    """Rays through the pixel centres of cameras c2w (B, 4, 4) with intrinsics (B, 4) [fx, fy, cx, cy] ->
    rays_o, rays_d (B, H*W, 3), row-major pixels, unit directions (the project's camera convention,
    neutral/lift3d/multiview_cameras.py get_ray_directions, with a general principal point)."""
    dtype = c2w.dtype
    x = ops.broadcast_to(ops.expand_dims(_arange(width, dtype) + 0.5, 0), (height, width)).reshape(1, -1)
    y = ops.broadcast_to(ops.expand_dims(_arange(height, dtype) + 0.5, 1), (height, width)).reshape(1, -1)
    k = intrinsics
    dx = (x - k[:, 2:3]) / k[:, 0:1]
    dy = -(y - k[:, 3:4]) / k[:, 1:2]
    dirs = ops.stack([dx, dy, -ops.ones_like(dx)], -1)                       # (B, HW, 3) camera space
    rays_d = normalize(ops.matmul(dirs, c2w[:, :3, :3].transpose(0, 2, 1)))  # rows: R dir
    rays_o = ops.broadcast_to(ops.expand_dims(c2w[:, :3, 3], 1), rays_d.shape)
    return rays_o, rays_d


def render_image(renderer: FeatureRenderer, c2w, intrinsics, height: int, width: int, src_c2w, src_intrinsics,
                 volumes, u=None, view_mask=None):
    """Render target cameras c2w (B, 4, 4), intrinsics (B, 4) at height x width from the source views ->
    features (B, F, H, W), opacity (B, 1, H, W), depth (B, 1, H, W) (channel-first, as upstream's
    render_multi_view). u: (B, H*W, renderer.n_uniforms) or None; view_mask (B, N) or None: the source slots in
    use (ProjectedFeatureField)."""
    rays_o, rays_d = camera_rays(c2w, intrinsics, height, width)
    out = renderer(rays_o, rays_d, src_c2w, src_intrinsics, volumes, u, view_mask)
    b = c2w.shape[0]

    def image(x):
        return x.reshape(b, height, width, -1).transpose(0, 3, 1, 2)

    return image(out["features"]), image(out["opacity"]), image(out["depth"])
