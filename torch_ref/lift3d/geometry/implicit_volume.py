"""Geometry "implicit-volume" (PyTorch reference): threestudio ImplicitVolume on the plain-torch hash grid.

Twin of mindspore_impl/lift3d/geometry/implicit_volume.py; same parameter names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mindspore_impl.core.config import parse_structured
from mindspore_impl.core.registry import register
from torch_ref.lift3d.geometry.hashgrid import get_encoding
from torch_ref.lift3d.geometry.mlp import get_mlp
from torch_ref.lift3d.ops import activate, check_activation

NORMAL_TYPES = (None, "finite_difference", "finite_difference_laplacian", "analytic")
DENSITY_BIASES = ("blob_magic3d", "blob_dreamfusion")


def _default_pos_encoding():
    return {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
            "base_resolution": 16, "per_level_scale": 1.447269237440378}


def _default_mlp():
    return {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
            "n_neurons": 64, "n_hidden_layers": 1}


@dataclass
class ImplicitVolumeConfig:
    radius: float = 1.0
    n_input_dims: int = 3
    n_feature_dims: int = 3
    density_activation: str = "softplus"
    density_bias: Any = "blob_magic3d"
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    pos_encoding_config: dict = field(default_factory=_default_pos_encoding)
    mlp_network_config: dict = field(default_factory=_default_mlp)
    normal_type: Optional[str] = None
    finite_difference_normal_eps: float = 0.01
    isosurface_threshold: float = 25.0


def parse_config(cfg) -> ImplicitVolumeConfig:
    c = parse_structured(ImplicitVolumeConfig, cfg, where="geometry implicit-volume")
    if c.normal_type not in NORMAL_TYPES:
        raise ValueError(f"normal_type must be one of {NORMAL_TYPES}, got '{c.normal_type}'")
    if isinstance(c.density_bias, str) and c.density_bias not in DENSITY_BIASES:
        raise ValueError(f"density_bias must be one of {DENSITY_BIASES} or a float, got '{c.density_bias}'")
    if not isinstance(c.density_bias, str):
        c.density_bias = float(c.density_bias)
    if c.n_feature_dims <= 0:
        raise ValueError("n_feature_dims must be positive (the renderer needs features)")
    return c


def _fd_offsets(eps: float, laplacian: bool) -> np.ndarray:
    eye = np.eye(3, dtype=np.float32) * eps
    if not laplacian:
        return eye
    return np.stack([eye, -eye], axis=1).reshape(6, 3)


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
            _fd_offsets(self.fd_eps, c.normal_type == "finite_difference_laplacian")), persistent=False)

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
        dens = torch.cat([self.forward_density(pts[s:s + chunk])[:, 0] for s in range(0, len(pts), chunk)])
        return dens.numpy().reshape(resolution, resolution, resolution)
