"""Geometry "implicit-volume" (PyTorch reference): threestudio ImplicitVolume on the plain-torch hash grid.

Twin of mindspore_impl/lift3d/geometry/implicit_volume.py; same parameter names.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from neutral.registry import register
from neutral.lift3d.implicit_volume import ImplicitVolumeConfig, fd_offsets, parse_config
from neutral.lift3d.ops import check_activation
from torch_ref.lift3d.geometry.hashgrid import get_encoding
from torch_ref.lift3d.geometry.mlp import get_mlp
from torch_ref.lift3d.ops import activate


@register("torch_ref:implicit-volume")
class ImplicitVolume(nn.Module):
    """points (N, 3) in world space -> activated density (N, 1), raw features (N, n_feature_dims)."""

    Config = ImplicitVolumeConfig

    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = parse_config(cfg)
        c = self.cfg
        self.radius = c.radius
        self.isosurface_threshold = c.isosurface_threshold
        self.encoding = get_encoding(c.n_input_dims, c.pos_encoding_config)
        self.density_network = get_mlp(self.encoding.n_output_dims, 1, c.mlp_network_config)
        self.feature_network = get_mlp(self.encoding.n_output_dims, c.n_feature_dims, c.mlp_network_config)
        self.density_act = check_activation(c.density_activation)
        self.normal_type = c.normal_type
        self.fd_eps = c.finite_difference_normal_eps
        self.register_buffer("fd_offsets", torch.from_numpy(
            fd_offsets(self.fd_eps, c.normal_type == "finite_difference_laplacian")), persistent=False)

    def contract(self, points):
        return ((points + self.radius) / (2.0 * self.radius)).clamp(0.0, 1.0)

    def density_bias(self, points):
        c = self.cfg
        if c.density_bias == "blob_magic3d":
            dist = torch.sqrt((points ** 2).sum(-1, keepdim=True))
            return c.density_blob_scale * (1.0 - dist / c.density_blob_std)
        if c.density_bias == "blob_dreamfusion":
            sq = (points ** 2).sum(-1, keepdim=True)
            return c.density_blob_scale * torch.exp(-0.5 * sq / c.density_blob_std ** 2)
        return c.density_bias

    def activated_density(self, points, density_raw_net):
        return activate(density_raw_net + self.density_bias(points), self.density_act)

    def forward_density(self, points):
        enc = self.encoding(self.contract(points))
        return self.activated_density(points, self.density_network(enc))

    def forward(self, points):
        enc = self.encoding(self.contract(points))
        return self.activated_density(points, self.density_network(enc)), self.feature_network(enc)

    def _probe_density(self, points):
        k = self.fd_offsets.shape[0]
        probes = (points[:, None, :] + self.fd_offsets).clamp(-self.radius, self.radius)
        return self.forward_density(probes.reshape(-1, 3)).reshape(-1, k)

    def finite_difference_normal(self, points, density):
        grad = (self._probe_density(points) - density) / self.fd_eps
        return F.normalize(-grad, dim=-1)

    def laplacian_normal(self, points):
        d = self._probe_density(points).reshape(-1, 3, 2)
        grad = 0.5 * (d[..., 0] - d[..., 1]) / self.fd_eps
        return F.normalize(-grad, dim=-1)

    def analytic_normal(self, points):
        with torch.enable_grad():
            if not points.requires_grad:
                points = points.detach().requires_grad_(True)
            density = self.forward_density(points)
            grad = torch.autograd.grad(density, points, torch.ones_like(density), create_graph=True)[0]
        return F.normalize(-grad, dim=-1)

    def forward_with_normal(self, points):
        density, features = self.forward(points)
        if self.normal_type == "finite_difference":
            normal = self.finite_difference_normal(points, density)
        elif self.normal_type == "finite_difference_laplacian":
            normal = self.laplacian_normal(points)
        elif self.normal_type == "analytic":
            normal = self.analytic_normal(points)
        else:
            raise ValueError("forward_with_normal needs normal_type set in the geometry config")
        return density, features, normal

    @torch.no_grad()
    def isosurface_grid(self, resolution: int, chunk: int = 65536) -> np.ndarray:
        ticks = np.linspace(-self.radius, self.radius, resolution, dtype=np.float32)
        pts = torch.from_numpy(np.stack(np.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3))
        pts = pts.to(self.fd_offsets.device)
        dens = torch.cat([self.forward_density(pts[s:s + chunk])[:, 0] for s in range(0, len(pts), chunk)])
        return dens.cpu().numpy().reshape(resolution, resolution, resolution)
