"""Lambertian shading with a point light and an ambient term (threestudio
"diffuse-with-point-light-material"). Twin: torch_ref/lift3d/materials/diffuse_with_point_light.py.

Defaults are threestudio's; MVDream's shading config sets ambient_light_color [1,1,1],
diffuse_light_color [0,0,0], ambient_only_steps 5000, textureless_prob 0.5, soft_shading true.

Randomness (soft-shading light mix, which shading mode) is drawn on the host by `draw_shading`, in
threestudio's order, and enters `construct` as a Python str (one compiled graph per mode) and two (3,)
colour tensors (no recompilation when the mix changes).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from neutral.config import parse_structured
from neutral.registry import register
from mindspore_impl.lift3d.ops import activate, dot, normalize
from neutral.lift3d.materials import SHADING_MODES, DiffuseWithPointLightMaterialConfig, draw_shading


@register("diffuse-with-point-light-material")
@register("diffuse-with-point-light")
class DiffuseWithPointLightMaterial(nn.Cell):
    Config = DiffuseWithPointLightMaterialConfig
    requires_normal = True

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(DiffuseWithPointLightMaterialConfig, cfg, "diffuse-with-point-light-material")
        self.albedo_activation = self.cfg.albedo_activation
        # torch buffers: in the state dict, never trained
        self.ambient_light_color = Parameter(ms.Tensor(np.asarray(self.cfg.ambient_light_color, np.float32)),
                                             name="ambient_light_color", requires_grad=False)
        self.diffuse_light_color = Parameter(ms.Tensor(np.asarray(self.cfg.diffuse_light_color, np.float32)),
                                             name="diffuse_light_color", requires_grad=False)
        self.ambient_only = False

    def update_step(self, global_step: int, rng: Optional[np.random.Generator] = None) -> None:
        """Albedo only (no shading) for the first ambient_only_steps steps."""
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def draw_shading(self, rng: np.random.Generator, training: bool = True,
                     ambient_ratio: Optional[float] = None) -> Dict[str, Any]:
        return draw_shading(rng, self.cfg, self.ambient_only, training, ambient_ratio)

    def export(self, features):
        """Mesh texture: {"albedo": clamp(activation(features[..., :3]), 0, 1)}."""
        return {"albedo": ops.clamp(activate(features[..., :3], self.albedo_activation), 0.0, 1.0)}

    def construct(self, features, viewdirs, positions, light_positions, shading_normal=None,
                  shading="diffuse", ambient_color=None, diffuse_color=None):
        """features (N, F>=3), positions / light_positions / shading_normal (N, 3) -> rgb (N, 3)."""
        albedo = activate(features[..., :3], self.albedo_activation)
        if shading == "albedo":
            return albedo
        if shading not in SHADING_MODES:
            raise ValueError("unknown shading mode (albedo | textureless | diffuse)")
        if shading_normal is None:
            raise ValueError("diffuse-with-point-light needs shading_normal for textureless/diffuse shading")
        ambient = self.ambient_light_color if ambient_color is None else ambient_color
        diffuse = self.diffuse_light_color if diffuse_color is None else diffuse_color
        light_dirs = normalize(light_positions - positions)
        diffuse_light = ops.clamp(dot(shading_normal, light_dirs), min=0.0) * diffuse
        textureless = diffuse_light + ambient
        if shading == "textureless":
            return textureless
        return ops.clamp(albedo, 0.0, 1.0) * textureless
