"""PyTorch reference of mindspore_impl/lift3d/background/neural_environment_map.py (threestudio
"neural-environment-map-background", with the random augmentation drawn on the host by `draw_aug`)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from neutral.config import parse_structured
from neutral.registry import register
from neutral.lift3d.background import (NeuralEnvironmentMapBackgroundConfig, check_env_map_config,
                                                  draw_aug_color)
from torch_ref.lift3d.geometry.mlp import get_mlp
from torch_ref.lift3d.ops import activate, sh_encode


    # mlp_network_config is checked by geometry.mlp.get_mlp


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

    def draw_aug(self, rng: np.random.Generator, batch_size: int, training: bool = True) -> Optional[np.ndarray]:
        """Host-side: with probability random_aug_prob one random colour (n,) for all batch_size images."""
        return draw_aug_color(rng, self.cfg, training)

    def forward(self, dirs: torch.Tensor, aug_color: Optional[torch.Tensor] = None) -> torch.Tensor:
        lead = tuple(dirs.shape[:-1])
        if aug_color is not None:
            return broadcast_color(aug_color.to(dirs), lead, self.n_output_dims)
        x01 = (dirs + 1.0) / 2.0  # (-1, 1) -> (0, 1): the tcnn SH input range
        emb = sh_encode(x01.reshape(-1, 3), self.degree)
        color = self.network(emb).reshape(lead + (self.n_output_dims,))
        return activate(color, self.cfg.color_activation)
