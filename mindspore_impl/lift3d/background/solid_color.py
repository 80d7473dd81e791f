"""Constant background colour, optionally learned (threestudio "solid-color-background").
Twin: torch_ref/lift3d/background/solid_color.py."""
from __future__ import annotations

from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from neutral.registry import register
from mindspore_impl.lift3d.background.neural_environment_map import broadcast_color
from neutral.lift3d.background import SolidColorBackgroundConfig, draw_aug_colors, parse_solid_color_config


@register("solid-color-background")
class SolidColorBackground(nn.Cell):
    Config = SolidColorBackgroundConfig

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_solid_color_config(cfg)
        self.n_output_dims = self.cfg.n_output_dims
        # a buffer in torch when not learned: kept in the state dict either way
        self.env_color = Parameter(ms.Tensor(np.asarray(self.cfg.color, np.float32)), name="env_color",
                                   requires_grad=self.cfg.learned)

    def draw_aug(self, rng: np.random.Generator, batch_size: int, training: bool = True) -> Optional[np.ndarray]:
        """Host-side: with probability random_aug_prob a random colour per image, (batch_size, n)."""
        return draw_aug_colors(rng, self.cfg, batch_size, training)

    def construct(self, dirs, aug_color=None):
        """dirs (B, ..., 3) -> (B, ..., n); aug_color (n,) or (B, n) replaces the colour when given."""
        lead = dirs.shape[:-1]
        color = ops.ones(lead + (self.n_output_dims,), dirs.dtype) * self.env_color
        if aug_color is not None:
            color = color * 0.0 + broadcast_color(aug_color, lead, self.n_output_dims)
        return color
