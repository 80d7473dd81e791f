"""Colour straight from the geometry features (threestudio "no-material"): activation(features),
or a small MLP first when input_feature_dims and mlp_network_config are set.
Twin: torch_ref/lift3d/materials/no_material.py."""
from __future__ import annotations

from typing import Any

from mindspore import nn, ops

from neutral.config import parse_structured
from neutral.registry import register
from mindspore_impl.lift3d.geometry.mlp import get_mlp
from mindspore_impl.lift3d.ops import activate
from neutral.lift3d.materials import NoMaterialConfig


@register("no-material")
class NoMaterial(nn.Cell):
    Config = NoMaterialConfig
    requires_normal = False

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(NoMaterialConfig, cfg, "no-material")
        self.n_output_dims = self.cfg.n_output_dims
        self.color_activation = self.cfg.color_activation
        self.use_network = self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None
        if self.use_network:
            self.network = get_mlp(self.cfg.input_feature_dims, self.n_output_dims, self.cfg.mlp_network_config)

    def draw_shading(self, rng=None, training: bool = True):
        """Interface parity with the shaded material: no randomness, one mode."""
        return {"shading": "diffuse", "ambient_color": None, "diffuse_color": None}

    def export(self, features):
        """Mesh texture: {"albedo": the first 3 colour channels clamped to [0, 1]}."""
        return {"albedo": ops.clamp(self(features), 0.0, 1.0)[..., :3]}

    def construct(self, features, viewdirs=None, positions=None, light_positions=None, shading_normal=None,
                  shading="diffuse", ambient_color=None, diffuse_color=None):
        """features (N, F) -> rgb (N, n_output_dims); the other inputs are accepted and ignored."""
        if self.use_network:
            color = self.network(features.reshape(-1, features.shape[-1]))
            color = color.reshape(features.shape[:-1] + (self.n_output_dims,))
        else:
            if features.shape[-1] != self.n_output_dims:
                raise ValueError("no-material: features must have n_output_dims channels")
            color = features
        return activate(color, self.color_activation)
