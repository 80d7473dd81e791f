"""Geometry networks: threestudio VanillaMLP / `get_mlp` and the density activations.

Twin: torch_ref/lift3d/geometry/mlp.py. Activations are chosen by a name string inside
`construct`, which GRAPH mode folds to one branch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mindspore import nn

from mindspore_impl.core.config import parse_structured
from mindspore_impl.lift3d.ops import activate, check_activation


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


class VanillaMLP(nn.Cell):
    """Linear (no bias) + ReLU blocks; parameters `layers.{0,2,...}.weight` like threestudio."""

    def __init__(self, dim_in: int, dim_out: int, config):
        super().__init__()
        c = parse_mlp_config(config)
        dims = [dim_in] + [c.n_neurons] * c.n_hidden_layers + [dim_out]
        cells = []
        for i in range(len(dims) - 1):
            cells.append(nn.Dense(dims[i], dims[i + 1], has_bias=False))
            if i < len(dims) - 2:
                cells.append(nn.ReLU())
        self.layers = nn.SequentialCell(cells)
        self.output_activation = check_activation(c.output_activation)

    def construct(self, x):
        return activate(self.layers(x), self.output_activation)


def get_mlp(dim_in: int, dim_out: int, config) -> VanillaMLP:
    return VanillaMLP(dim_in, dim_out, config)
