"""Geometry networks: threestudio VanillaMLP / `get_mlp` and the density activations.

Twin: torch_ref/lift3d/geometry/mlp.py. Activations are chosen by a name string inside
`construct`, which GRAPH mode folds to one branch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mindspore import nn, ops

from mindspore_impl.core.config import parse_structured

TRUNC_EXP_MAX = 15.0  # threestudio trunc_exp: backward uses exp(clamp(x, max=15))
ACTIVATIONS = ("none", "relu", "softplus", "exp", "trunc_exp", "sigmoid")


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


def check_activation(name) -> str:
    key = "none" if name is None else str(name).lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACTIVATIONS)}")
    return key


SOFTPLUS_THRESHOLD = 20.0  # torch F.softplus default: returns x above it


def softplus(x):
    """torch F.softplus (beta 1, threshold 20) to float32 accuracy.

    The MindSpore CPU softplus / log1p kernels compute log(1 + e), which is 0 for e < 6e-8
    (x < -16.6) and loses relative precision well before that; empty space then has exactly zero
    density and finite-difference normals there turn into noise. Kahan's log1p(e) =
    log(u) * e / (u - 1), u = 1 + e, is exact to a few ulps and differentiable (safe denominator).
    """
    above = x > SOFTPLUS_THRESHOLD
    e = ops.exp(ops.where(above, ops.full_like(x, SOFTPLUS_THRESHOLD), x))
    u = 1.0 + e
    tiny = u == 1.0
    den = ops.where(tiny, ops.ones_like(u), u - 1.0)
    log1p_e = ops.where(tiny, e, ops.log(u) * (e / den))
    return ops.where(above, x, log1p_e)


def trunc_exp(x):
    """exp(x) whose gradient is exp(min(x, 15)), as threestudio's autograd.Function.

    Written with stop_gradient instead of a custom bprop so it compiles in GRAPH mode and stays
    twice differentiable (analytic normals): `m` equals min(x, 15) but has dm/dx = 1 everywhere.
    """
    m = x - ops.stop_gradient(ops.relu(x - TRUNC_EXP_MAX))
    em = ops.exp(m)
    return em + ops.stop_gradient(ops.exp(x) - em)


def activate(x, key: str):
    """threestudio get_activation(name)(x) for the names in ACTIVATIONS (key already lower-cased)."""
    if key == "relu":
        return ops.relu(x)
    if key == "softplus":
        return softplus(x)
    if key == "exp":
        return ops.exp(x)
    if key == "trunc_exp":
        return trunc_exp(x)
    if key == "sigmoid":
        return ops.sigmoid(x)
    return x


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
