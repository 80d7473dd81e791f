"""PyTorch reference of mindspore_impl/lift3d/materials/no_material.py (threestudio "no-material")."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from neutral.config import parse_structured
from neutral.registry import register
from neutral.lift3d.materials import NoMaterialConfig
from torch_ref.lift3d.geometry.mlp import get_mlp
from torch_ref.lift3d.ops import activate


@register("torch_ref:no-material")
class NoMaterial(nn.Module):
    Config = NoMaterialConfig
    requires_normal = False

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(NoMaterialConfig, cfg, "no-material")
        self.n_output_dims = self.cfg.n_output_dims
        self.use_network = self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None
        if self.use_network:
            self.network = get_mlp(self.cfg.input_feature_dims, self.n_output_dims, self.cfg.mlp_network_config)

    def draw_shading(self, rng=None, training: bool = True):
        return {"shading": "diffuse", "ambient_color": None, "diffuse_color": None}

    def export(self, features):
        return {"albedo": self(features).clamp(0.0, 1.0)[..., :3]}

    def forward(self, features, viewdirs=None, positions=None, light_positions=None, shading_normal=None,
                shading="diffuse", ambient_color=None, diffuse_color=None) -> torch.Tensor:
        if self.use_network:
            color = self.network(features.reshape(-1, features.shape[-1]))
            color = color.reshape(tuple(features.shape[:-1]) + (self.n_output_dims,))
        else:
            if features.shape[-1] != self.n_output_dims:
                raise ValueError("no-material: features must have n_output_dims channels")
            color = features
        return activate(color, self.cfg.color_activation)
