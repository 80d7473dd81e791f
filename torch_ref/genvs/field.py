"""ProjectedFeatureField: density and features at world points, read from the source views' frustum volumes
(PyTorch reference; twin of mindspore_impl/genvs/field.py, which documents the projection).

Upstream: jfozard/genvs_unofficial nerf/network_multi.py (get_cam_coords, get_sigma_color_feat, forward):
project into each source camera, trilinear F.grid_sample with align_corners=True, MLP 16 -> 64 (softplus)
-> 17, mean over the source views, then sigma = softplus and features = sigmoid. Here the coordinates come
from the project's camera convention, the planes from neutral/genvs/model_config.py, and outside the frustum
the features are zero (upstream clamps into its box).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neutral.genvs.model_config import parse_field

_MIN_DEPTH = 1e-6
_GRID_LIMIT = 3.0
_MIN_NEAR = 1e-4


class ProjectedFeatureField(nn.Module):
    """forward(points (B, P, 3), c2w (B, N, 4, 4), intrinsics (B, N, 4) [fx, fy, cx, cy] in pixels of the
    volume, volumes (B, N, C, D, H, W), view_mask (B, N) or None: 1 for the slots in use) -> sigma (B, P),
    features (B, P, out_features)."""

    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = parse_field(cfg)
        cfg = self.cfg
        dims = [cfg.feature_channels] + [cfg.hidden] * cfg.n_hidden_layers + [1 + cfg.out_features]
        self.layers = nn.ModuleList([nn.Linear(dims[i], dims[i + 1], bias=True) for i in range(len(dims) - 1)])

    def plane_range(self, c2w):
        """near, far (B, N, 1) of each source view's depth planes."""
        if self.cfg.plane_near is not None:
            ones = c2w.new_ones(c2w.shape[:2] + (1,))
            return ones * self.cfg.plane_near, ones * self.cfg.plane_far
        dist = c2w[:, :, :3, 3].norm(dim=-1, keepdim=True)
        r = self.cfg.plane_radius
        return (dist - r).clamp(min=_MIN_NEAR), dist + r

    def grid_coords(self, points, c2w, intrinsics, size):
        """points (B, P, 3) -> grid_sample coordinates (B, N, P, 3) ordered (W, H, D) in [-1, 1]."""
        n_planes, height, width = size
        if height < 2 or width < 2:
            raise ValueError(f"ProjectedFeatureField: volumes need H, W >= 2, got {height}x{width}")
        rel = points[:, None] - c2w[:, :, None, :3, 3]
        cam = torch.einsum("bnij,bnpi->bnpj", c2w[:, :, :3, :3], rel)  # R^T (p - t), upstream's einsum
        depth = -cam[..., 2]
        inv = 1.0 / depth.clamp(min=_MIN_DEPTH)
        k = intrinsics[:, :, None]
        u = k[..., 2] + k[..., 0] * cam[..., 0] * inv
        v = k[..., 3] - k[..., 1] * cam[..., 1] * inv
        near, far = self.plane_range(c2w)
        gx = (u - 0.5) * (2.0 / (width - 1)) - 1.0
        gy = (v - 0.5) * (2.0 / (height - 1)) - 1.0
        gz = (depth - near) / (far - near) * 2.0 - 1.0
        return torch.stack([gx, gy, gz], -1).clamp(-_GRID_LIMIT, _GRID_LIMIT)

    def sample_features(self, points, c2w, intrinsics, volumes):
        """Trilinear features (B, N, P, C) of every point in every source volume (zero outside)."""
        b, n, c, d, h, w = volumes.shape
        p = points.shape[1]
        grid = self.grid_coords(points, c2w, intrinsics, (d, h, w)).reshape(b * n, 1, 1, p, 3)
        feat = F.grid_sample(volumes.reshape(b * n, c, d, h, w), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True)
        return feat.reshape(b, n, c, p).permute(0, 1, 3, 2)

    def mlp(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.softplus(x)
        return x

    def forward(self, points, c2w, intrinsics, volumes, view_mask=None):
        raw = self.mlp(self.sample_features(points, c2w, intrinsics, volumes))  # (B, N, P, 1 + F)
        if view_mask is None:
            raw = raw.mean(dim=1)  # over source views
        else:
            # upstream passes only the views in use (triplanes[:, :nv]); here the unused slots weigh 0
            m = view_mask.to(raw.dtype)[..., None, None]
            raw = (raw * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return F.softplus(raw[..., 0]), torch.sigmoid(raw[..., 1:])
