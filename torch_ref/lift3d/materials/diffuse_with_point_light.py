"""PyTorch reference of mindspore_impl/lift3d/materials/diffuse_with_point_light.py (threestudio
"diffuse-with-point-light-material"; randomness drawn on the host by `draw_shading`)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from neutral.config import parse_structured
from neutral.registry import register
from neutral.lift3d.materials import SHADING_MODES, DiffuseWithPointLightMaterialConfig, draw_shading
from torch_ref.lift3d.ops import activate, dot, normalize


@register("torch_ref:diffuse-with-point-light-material")
class DiffuseWithPointLightMaterial(nn.Module):
    Config = DiffuseWithPointLightMaterialConfig
    requires_normal = True

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(DiffuseWithPointLightMaterialConfig, cfg, "diffuse-with-point-light-material")
        self.register_buffer("ambient_light_color", torch.as_tensor(self.cfg.ambient_light_color, dtype=torch.float32))
        self.register_buffer("diffuse_light_color", torch.as_tensor(self.cfg.diffuse_light_color, dtype=torch.float32))
        self.ambient_only = False

    def update_step(self, global_step: int, rng: Optional[np.random.Generator] = None) -> None:
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def draw_shading(self, rng: np.random.Generator, training: bool = True,
                     ambient_ratio: Optional[float] = None) -> Dict[str, Any]:
        return draw_shading(rng, self.cfg, self.ambient_only, training, ambient_ratio)

    def export(self, features):
        return {"albedo": activate(features[..., :3], self.cfg.albedo_activation).clamp(0.0, 1.0)}

    def forward(self, features, viewdirs, positions, light_positions, shading_normal=None,
                shading="diffuse", ambient_color=None, diffuse_color=None) -> torch.Tensor:
        albedo = activate(features[..., :3], self.cfg.albedo_activation)
        if shading == "albedo":
            return albedo
        if shading not in SHADING_MODES:
            raise ValueError(f"unknown shading mode '{shading}' (albedo | textureless | diffuse)")
        if shading_normal is None:
            raise ValueError("diffuse-with-point-light needs shading_normal for textureless/diffuse shading")
        ambient = self.ambient_light_color if ambient_color is None else ambient_color
        diffuse = self.diffuse_light_color if diffuse_color is None else diffuse_color
        light_dirs = normalize(light_positions - positions)
        diffuse_light = dot(shading_normal, light_dirs).clamp(min=0.0) * diffuse
        textureless = diffuse_light + ambient
        if shading == "textureless":
            return textureless
        return albedo.clamp(0.0, 1.0) * textureless
