"""Background colour from the ray direction: SH(degree 3) encoding + small MLP (threestudio
"neural-environment-map-background"). Twin: torch_ref/lift3d/background/neural_environment_map.py.

Random colour augmentation is decided on the host (`draw_aug`) and passed in as a tensor, so
`construct` has no randomness and compiles in GRAPH mode.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from mindspore import nn, ops

from neutral.config import parse_structured
from neutral.registry import register
from mindspore_impl.lift3d.geometry.mlp import get_mlp
from mindspore_impl.lift3d.ops import activate, sh_encode
from neutral.lift3d.background import (NeuralEnvironmentMapBackgroundConfig, check_env_map_config,
                                                  draw_aug_color)


    # mlp_network_config is checked by geometry.mlp.get_mlp


def broadcast_color(color, lead_shape: tuple, n: int):
    """(n,) or (B, n) colour -> (*lead_shape, n); a (B, n) colour is per image (first lead axis)."""
    if color.ndim == 2:
        color = color.reshape((color.shape[0],) + (1,) * (len(lead_shape) - 1) + (n,))
    return ops.broadcast_to(color, lead_shape + (n,))


@register("neural-environment-map-background")
class NeuralEnvironmentMapBackground(nn.Cell):
    Config = NeuralEnvironmentMapBackgroundConfig

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(NeuralEnvironmentMapBackgroundConfig, cfg, "neural-environment-map-background")
        check_env_map_config(self.cfg)
        self.degree = int(self.cfg.dir_encoding_config.get("degree", 3))
        self.n_output_dims = self.cfg.n_output_dims
        self.color_activation = self.cfg.color_activation
        self.network = get_mlp(self.degree ** 2, self.n_output_dims, self.cfg.mlp_network_config)

    def draw_aug(self, rng: np.random.Generator, batch_size: int, training: bool = True) -> Optional[np.ndarray]:
        """Host-side: with probability random_aug_prob one random colour (n,) for all batch_size images."""
        return draw_aug_color(rng, self.cfg, training)

    def construct(self, dirs, aug_color=None):
        """dirs (..., 3) unit directions -> colour (..., n_output_dims); aug_color (n,) replaces it."""
        lead = dirs.shape[:-1]
        if aug_color is not None:
            return broadcast_color(aug_color, lead, self.n_output_dims)
        x01 = (dirs + 1.0) / 2.0  # (-1, 1) -> (0, 1): the tcnn SH input range
        emb = sh_encode(x01.reshape(-1, 3), self.degree)
        color = self.network(emb).reshape(lead + (self.n_output_dims,))
        return activate(color, self.color_activation)
