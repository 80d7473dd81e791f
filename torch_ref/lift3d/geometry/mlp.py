"""Geometry networks (PyTorch reference): twin of mindspore_impl/lift3d/geometry/mlp.py."""
from __future__ import annotations

import torch.nn as nn

from neutral.lift3d.mlp import layer_dims, parse_mlp_config
from neutral.lift3d.ops import check_activation
from torch_ref.lift3d.ops import activate


class VanillaMLP(nn.Module):
    """threestudio VanillaMLP: Linear (no bias) + ReLU blocks; parameters `layers.{0,2,...}.weight`."""

    def __init__(self, dim_in: int, dim_out: int, config):
        super().__init__()
        c = parse_mlp_config(config)
        dims = layer_dims(dim_in, dim_out, c)
        layers = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=False))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)
        self.output_activation = check_activation(c.output_activation)

    def forward(self, x):
        return activate(self.layers(x), self.output_activation)


def get_mlp(dim_in: int, dim_out: int, config) -> VanillaMLP:
    return VanillaMLP(dim_in, dim_out, config)
