"""FeatureRenderer: volume-render the projected feature field into a feature image of a target camera
(PyTorch reference; twin of mindspore_impl/genvs/renderer.py, which documents it), plus the full-image helper
and the nearest x2 upsample that conditions the denoiser.

Upstream: jfozard/genvs_unofficial nerf/renderer_multi.py (run), nerf/utils.py (render_multi_view),
genvs_model.py (F.interpolate(scale_factor=2) of the render). Sampling and compositing: the shared
torch_ref/rendering/ray_sampling.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neutral.genvs.model_config import parse_renderer
from torch_ref.rendering.ray_sampling import (composite_weights, merged_intervals, normalize, ray_box_intersect,
                                              sample_pdf, stratified_t, uniform_intervals)


def upsample_nearest2x(x):
    """(B, C, H, W) -> (B, C, 2H, 2W), nearest (upstream's F.interpolate(scale_factor=2))."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


class FeatureRenderer(nn.Module):
    """forward(rays_o, rays_d (B, R, 3), c2w (B, N, 4, 4), intrinsics (B, N, 4), volumes (B, N, C, D, H, W),
    u (B, R, n_samples + n_importance) in [0, 1) or None, view_mask (B, N) or None) -> {"features": (B, R, F),
    "opacity": (B, R, 1), "depth": (B, R, 1)}."""

    def __init__(self, cfg, field):
        super().__init__()
        self.cfg = parse_renderer(cfg)
        self.field = field
        self.n_coarse = self.cfg.n_samples
        self.n_importance = self.cfg.n_importance

    @property
    def n_uniforms(self) -> int:
        return self.n_coarse + self.n_importance

    def near_far(self, rays_o, rays_d):
        if self.cfg.near is not None:
            ones = torch.ones_like(rays_o[:, :1])
            return ones * self.cfg.near, ones * self.cfg.far
        return ray_box_intersect(rays_o, rays_d, self.cfg.radius)

    def _uniforms(self, u, n_rays: int, ref):
        sc, si = self.n_coarse, self.n_importance
        k = torch.arange(si, dtype=ref.dtype, device=ref.device)
        if u is None:
            return ref.new_full((n_rays, sc), 0.5), ((k + 0.5) / si).expand(n_rays, si)
        return u[:, :sc], (k + u[:, sc:]) / si

    def _field(self, pts, b: int, c2w, intrinsics, volumes, view_mask=None):
        n_rays, s, _ = pts.shape
        sigma, feat = self.field(pts.reshape(b, -1, 3), c2w, intrinsics, volumes, view_mask)
        return sigma.reshape(n_rays, s), feat.reshape(n_rays, s, -1)

    def forward(self, rays_o, rays_d, c2w, intrinsics, volumes, u=None, view_mask=None):
        b, r, _ = rays_o.shape
        n_rays = b * r
        o, d = rays_o.reshape(n_rays, 3), rays_d.reshape(n_rays, 3)
        near, far = self.near_far(o, d)
        u_c, u_i = self._uniforms(None if u is None else u.reshape(n_rays, -1), n_rays, o)
        step = (far - near) / self.n_coarse
        t_c = stratified_t(near, step, u_c)
        if self.n_importance == 0:
            t = t_c
            starts, ends = uniform_intervals(near, step, self.n_coarse)
        else:
            with torch.no_grad():  # upstream samples under no_grad as well
                sigma_c, _ = self._field(o[:, None] + d[:, None] * t_c[..., None], b, c2w, intrinsics, volumes,
                                         view_mask)
                w_c = composite_weights(sigma_c, step.expand_as(t_c))
                t_i = sample_pdf(near, step, w_c, u_i)
                t = torch.sort(torch.cat([t_c, t_i], -1), dim=-1).values
            starts, ends = merged_intervals(t, near, far)
        sigma, feat = self._field(o[:, None] + d[:, None] * t[..., None], b, c2w, intrinsics, volumes, view_mask)
        weights = composite_weights(sigma, ends - starts)
        opacity = weights.sum(-1, keepdim=True)
        depth = (weights * t).sum(-1, keepdim=True)
        comp = (weights[..., None] * feat).sum(1) + self.cfg.background * (1.0 - opacity)
        return {"features": comp.reshape(b, r, -1), "opacity": opacity.reshape(b, r, 1),
                "depth": depth.reshape(b, r, 1)}


def camera_rays(c2w, intrinsics, height: int, width: int):
    """Rays through the pixel centres (B, H*W, 3) of cameras c2w (B, 4, 4), intrinsics (B, 4) [fx, fy, cx, cy]."""
    kw = dict(dtype=c2w.dtype, device=c2w.device)
    y, x = torch.meshgrid(torch.arange(height, **kw) + 0.5, torch.arange(width, **kw) + 0.5, indexing="ij")
    x, y = x.reshape(1, -1), y.reshape(1, -1)
    k = intrinsics
    dx = (x - k[:, 2:3]) / k[:, 0:1]
    dy = -(y - k[:, 3:4]) / k[:, 1:2]
    dirs = torch.stack([dx, dy, -torch.ones_like(dx)], -1)
    rays_d = normalize(dirs @ c2w[:, :3, :3].transpose(1, 2))
    rays_o = c2w[:, None, :3, 3].expand_as(rays_d)
    return rays_o, rays_d


def render_image(renderer: FeatureRenderer, c2w, intrinsics, height: int, width: int, src_c2w, src_intrinsics,
                 volumes, u=None, view_mask=None):
    """-> features (B, F, H, W), opacity (B, 1, H, W), depth (B, 1, H, W)."""
    rays_o, rays_d = camera_rays(c2w, intrinsics, height, width)
    out = renderer(rays_o, rays_d, src_c2w, src_intrinsics, volumes, u, view_mask)
    b = c2w.shape[0]

    def image(x):
        return x.reshape(b, height, width, -1).permute(0, 3, 1, 2)

    return image(out["features"]), image(out["opacity"]), image(out["depth"])
