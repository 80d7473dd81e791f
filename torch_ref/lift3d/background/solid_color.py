"""PyTorch reference of mindspore_impl/lift3d/background/solid_color.py (threestudio "solid-color-background")."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from neutral.registry import register
from neutral.lift3d.background import SolidColorBackgroundConfig, draw_aug_colors, parse_solid_color_config
from torch_ref.lift3d.background.neural_environment_map import broadcast_color


@register("torch_ref:solid-color-background")
class SolidColorBackground(nn.Module):
    Config = SolidColorBackgroundConfig

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_solid_color_config(cfg)
        self.n_output_dims = self.cfg.n_output_dims
        color = torch.as_tensor(self.cfg.color, dtype=torch.float32)
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def draw_aug(self, rng: np.random.Generator, batch_size: int, training: bool = True) -> Optional[np.ndarray]:
        """Host-side: with probability random_aug_prob a random colour per image, (batch_size, n)."""
        return draw_aug_colors(rng, self.cfg, batch_size, training)

    def forward(self, dirs: torch.Tensor, aug_color: Optional[torch.Tensor] = None) -> torch.Tensor:
        lead = tuple(dirs.shape[:-1])
        color = torch.ones(lead + (self.n_output_dims,), dtype=dirs.dtype, device=dirs.device) * self.env_color.to(dirs)
        if aug_color is not None:
            color = color * 0.0 + broadcast_color(aug_color.to(dirs), lead, self.n_output_dims)
        return color
