"""Geometry networks (PyTorch reference): twin of mindspore_impl/lift3d/geometry/mlp.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from mindspore_impl.core.config import parse_structured
from torch_ref.lift3d.ops import activate, check_activation


@dataclass
class MLPConfig:
    otype: str = "VanillaMLP"
    activation: str = "ReLU"
    output_activation: Optional[str] = None
    n_neurons: int = 64
    n_hidden_layers: int = 1


def parse_mlp_config(cfg) -> MLPConfig:
    parsed = parse_structured(MLPConfig, cfg, where="mlp_network_config")
    if parsed.otype != "VanillaMLP":
        raise ValueError(f"mlp_network_config.otype must be 'VanillaMLP', got '{parsed.otype}'")
    if parsed.activation != "ReLU":
        raise ValueError(f"VanillaMLP uses ReLU, got activation '{parsed.activation}'")
    check_activation(parsed.output_activation)
    return parsed


class VanillaMLP(nn.Module):
    """threestudio VanillaMLP: Linear (no bias) + ReLU blocks; parameters `layers.{0,2,...}.weight`."""

    def __init__(self, dim_in: int, dim_out: int, config):
        super().__init__()
        c = parse_mlp_config(config)
        dims = [dim_in] + [c.n_neurons] * c.n_hidden_layers + [dim_out]
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
