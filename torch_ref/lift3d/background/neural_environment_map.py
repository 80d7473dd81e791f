"""PyTorch reference of mindspore_impl/lift3d/background/neural_environment_map.py (threestudio
"neural-environment-map-background", with the random augmentation drawn on the host by `draw_aug`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from mindspore_impl.core.config import parse_structured
from mindspore_impl.core.registry import register
from torch_ref.lift3d.geometry.mlp import get_mlp
from torch_ref.lift3d.ops import activate, sh_encode


@dataclass
class NeuralEnvironmentMapBackgroundConfig:
    n_output_dims: int = 3
    color_activation: str = "sigmoid"
    dir_encoding_config: dict = field(default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3})
    mlp_network_config: dict = field(default_factory=lambda: {
        "otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16, "n_hidden_layers": 2})
    random_aug: bool = False
    random_aug_prob: float = 0.5


def check_env_map_config(cfg: NeuralEnvironmentMapBackgroundConfig) -> None:
    enc = cfg.dir_encoding_config
    if enc.get("otype") != "SphericalHarmonics":
        raise ValueError(f"dir_encoding_config.otype must be SphericalHarmonics, got {enc.get('otype')}")
    # mlp_network_config is checked by geometry.mlp.get_mlp


def draw_aug_color(rng: np.random.Generator, cfg, training: bool) -> Optional[np.ndarray]:
    """Host-side: with probability random_aug_prob one random colour (n_output_dims,) for the whole batch."""
    if training and cfg.random_aug and rng.random() < cfg.random_aug_prob:
        return rng.random(cfg.n_output_dims).astype(np.float32)
    return None


def broadcast_color(color: torch.Tensor, lead_shape: tuple, n: int) -> torch.Tensor:
    """(n,) or (B, n) colour -> (*lead_shape, n); a (B, n) colour is per image (first lead axis)."""
    if color.ndim == 2:
        color = color.reshape((color.shape[0],) + (1,) * (len(lead_shape) - 1) + (n,))
    return color.expand(tuple(lead_shape) + (n,))


@register("torch_ref:neural-environment-map-background")
class NeuralEnvironmentMapBackground(nn.Module):
    Config = NeuralEnvironmentMapBackgroundConfig

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(NeuralEnvironmentMapBackgroundConfig, cfg, "neural-environment-map-background")
        check_env_map_config(self.cfg)
        self.degree = int(self.cfg.dir_encoding_config.get("degree", 3))
        self.n_output_dims = self.cfg.n_output_dims
        self.network = get_mlp(self.degree ** 2, self.n_output_dims, self.cfg.mlp_network_config)

    def draw_aug(self, rng: np.random.Generator, training: bool = True) -> Optional[np.ndarray]:
        return draw_aug_color(rng, self.cfg, training)

    def forward(self, dirs: torch.Tensor, aug_color: Optional[torch.Tensor] = None) -> torch.Tensor:
        lead = tuple(dirs.shape[:-1])
        if aug_color is not None:
            return broadcast_color(aug_color.to(dirs), lead, self.n_output_dims)
        x01 = (dirs + 1.0) / 2.0  # (-1, 1) -> (0, 1): the tcnn SH input range
        emb = sh_encode(x01.reshape(-1, 3), self.degree)
        color = self.network(emb).reshape(lead + (self.n_output_dims,))
        return activate(color, self.cfg.color_activation)
