"""Framework-neutral part of the materials: configs and the host-side shading draw (numpy).
Shared by mindspore_impl/ and torch_ref/lift3d/materials/{diffuse_with_point_light,no_material}.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np


SHADING_MODES = ("albedo", "textureless", "diffuse")


@dataclass
class DiffuseWithPointLightMaterialConfig:
    ambient_light_color: Tuple[float, float, float] = (0.1, 0.1, 0.1)
    diffuse_light_color: Tuple[float, float, float] = (0.9, 0.9, 0.9)
    ambient_only_steps: int = 1000
    diffuse_prob: float = 0.75
    textureless_prob: float = 0.5
    albedo_activation: str = "sigmoid"
    soft_shading: bool = False


def draw_shading(rng: np.random.Generator, cfg: DiffuseWithPointLightMaterialConfig, ambient_only: bool,
                 training: bool, ambient_ratio: Optional[float] = None) -> Dict[str, Any]:
    """Host-side choice of {shading, ambient_color, diffuse_color} for one batch (threestudio's logic).

    Colours None mean "use the configured light colours".
    """
    ambient = diffuse = None
    if ambient_ratio is not None:
        ambient = np.full(3, ambient_ratio, np.float32)
        diffuse = np.full(3, 1.0 - ambient_ratio, np.float32)
    elif training and cfg.soft_shading:
        diffuse = np.full(3, rng.random(), np.float32)
        ambient = (1.0 - diffuse).astype(np.float32)
    if training:
        if ambient_only or rng.random() > cfg.diffuse_prob:
            shading = "albedo"
        elif rng.random() < cfg.textureless_prob:
            shading = "textureless"
        else:
            shading = "diffuse"
    else:
        shading = "albedo" if ambient_only else "diffuse"
    return {"shading": shading, "ambient_color": ambient, "diffuse_color": diffuse}


@dataclass
class NoMaterialConfig:
    n_output_dims: int = 3
    color_activation: str = "sigmoid"
    input_feature_dims: Optional[int] = None
    mlp_network_config: Optional[dict] = None
