"""Geometry networks: threestudio VanillaMLP / `get_mlp` and the density activations.

Twin: torch_ref/lift3d/geometry/mlp.py. Activations are chosen by a name string inside
`construct`, which GRAPH mode folds to one branch.
"""
from __future__ import annotations

from mindspore import nn

from mindspore_impl.lift3d.ops import activate
from neutral.lift3d.mlp import layer_dims, parse_mlp_config
from neutral.lift3d.ops import check_activation


class VanillaMLP(nn.Cell):
    """Linear (no bias) + ReLU blocks; parameters `layers.{0,2,...}.weight` like threestudio."""

    def __init__(self, dim_in: int, dim_out: int, config):
        super().__init__()
        c = parse_mlp_config(config)
        dims = layer_dims(dim_in, dim_out, c)
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
