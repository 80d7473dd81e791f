"""Framework-neutral part of threestudio's VanillaMLP: config schema and checks.
Shared by mindspore_impl/ and torch_ref/lift3d/geometry/mlp.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from neutral.config import parse_structured
from neutral.lift3d.ops import check_activation


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


def layer_dims(dim_in: int, dim_out: int, cfg: MLPConfig) -> list:
    """Widths of the linear layers' inputs and outputs: [dim_in, n_neurons x n_hidden_layers, dim_out]."""
    return [dim_in] + [cfg.n_neurons] * cfg.n_hidden_layers + [dim_out]
