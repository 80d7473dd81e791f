"""Framework-neutral part of the "implicit-volume" geometry: config schema, validation and the
finite-difference probe offsets (numpy). Shared by mindspore_impl/ and torch_ref/lift3d/geometry/implicit_volume.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from neutral.config import parse_structured


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
    density_bias: Any = "blob_magic3d"  # "blob_magic3d" | "blob_dreamfusion" | float
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


def fd_offsets(eps: float, laplacian: bool) -> np.ndarray:
    """Finite-difference probe offsets: +eps per axis, or (+eps, -eps) pairs per axis."""
    eye = np.eye(3, dtype=np.float32) * eps
    if not laplacian:
        return eye
    return np.stack([eye, -eye], axis=1).reshape(6, 3)  # +x, -x, +y, -y, +z, -z
