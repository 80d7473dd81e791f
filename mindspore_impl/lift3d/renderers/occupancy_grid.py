"""Occupancy grid over the scene box (MindSpore; nerfacc OccGridEstimator state names: aabbs, occs, binaries).

The grid never changes shapes: rendering looks cells up per sample and zeroes the density of samples in empty cells;
`update` is called on the host every few steps and re-evaluates the density at one jittered point per cell.
The state is held in non-trainable Parameters so it is saved in checkpoints.
"""
from __future__ import annotations

from typing import Callable

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from neutral.lift3d.occupancy_grid import grid_update_points
from mindspore_impl.core.parameters import write_parameter


class OccupancyGrid(nn.Cell):
    def __init__(self, radius: float, resolution: int = 32):
        super().__init__()
        self.resolution = resolution
        self.radius = radius
        self.aabbs = Parameter(Tensor(np.array([[-radius] * 3 + [radius] * 3], np.float32)),
                               name="aabbs", requires_grad=False)
        self.occs = Parameter(Tensor(np.zeros(resolution ** 3, np.float32)), name="occs", requires_grad=False)
        # all cells start occupied so a renderer that was never updated renders everything
        self.binaries = Parameter(Tensor(np.ones((1, resolution, resolution, resolution), np.bool_)),
                                  name="binaries", requires_grad=False)

    def cell_index(self, positions):
        """(M,3) points in the box -> flat cell index (M,), clamped to the grid."""
        unit = (positions + self.radius) / (2.0 * self.radius)
        ijk = ops.clamp(ops.floor(unit * self.resolution), 0.0, self.resolution - 1.0).astype(ms.int32)
        res = self.resolution
        return ijk[:, 0] * (res * res) + ijk[:, 1] * res + ijk[:, 2]

    def occupied(self, positions):
        """(M,3) -> (M,1) float, 1 where the sample's cell is occupied."""
        flat = self.binaries.reshape(-1).astype(positions.dtype)
        return ops.expand_dims(ops.gather(flat, self.cell_index(positions), 0), 1)

    def update(self, density_fn: Callable, step_size: float, seed: int, ema_decay: float, threshold: float) -> None:
        """nerfacc's update rule over every cell: occ = density * step_size (alpha ~ sigma delta),
        occs = max(occs * decay, occ), occupied = occs > min(mean(occs), threshold). Host-side, not traced."""
        points = Tensor(grid_update_points(self.resolution, self.radius, seed))
        occ = ops.stop_gradient(density_fn(points)).asnumpy().reshape(-1).astype(np.float32) * np.float32(step_size)
        occs = np.maximum(self.occs.asnumpy() * np.float32(ema_decay), occ).astype(np.float32)
        thre = min(float(occs.mean(dtype=np.float32)), threshold)
        write_parameter(self.occs, occs)  # in place: compiled steps read the new grid
        write_parameter(self.binaries, (occs > np.float32(thre)).reshape(self.binaries.shape))
