"""PyTorch reference of mindspore_impl/lift3d/background/solid_color.py (threestudio "solid-color-background")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from mindspore_impl.core.config import parse_structured
from mindspore_impl.core.registry import register
from torch_ref.lift3d.background.neural_environment_map import broadcast_color


@dataclass
class SolidColorBackgroundConfig:
    n_output_dims: int = 3
    color: Tuple[float, ...] = (1.0, 1.0, 1.0)
    learned: bool = False
    random_aug: bool = False
    random_aug_prob: float = 0.5


@register("torch_ref:solid-color-background")
class SolidColorBackground(nn.Module):
    Config = SolidColorBackgroundConfig

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(SolidColorBackgroundConfig, cfg, "solid-color-background")
        if len(self.cfg.color) != self.cfg.n_output_dims:
            raise ValueError(f"color {list(self.cfg.color)} must have n_output_dims={self.cfg.n_output_dims} values")
        self.n_output_dims = self.cfg.n_output_dims
        color = torch.as_tensor(self.cfg.color, dtype=torch.float32)
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def draw_aug(self, rng: np.random.Generator, batch_size: int, training: bool = True) -> Optional[np.ndarray]:
        """Host-side: with probability random_aug_prob a random colour per image, (batch_size, n)."""
        if training and self.cfg.random_aug and rng.random() < self.cfg.random_aug_prob:
            return rng.random((batch_size, self.n_output_dims)).astype(np.float32)
        return None

    def forward(self, dirs: torch.Tensor, aug_color: Optional[torch.Tensor] = None) -> torch.Tensor:
        lead = tuple(dirs.shape[:-1])
        color = torch.ones(lead + (self.n_output_dims,), dtype=dirs.dtype) * self.env_color.to(dirs)
        if aug_color is not None:
            color = color * 0.0 + broadcast_color(aug_color.to(dirs), lead, self.n_output_dims)
        return color
