"""Occupancy grid over the scene box (PyTorch reference; nerfacc OccGridEstimator state names: aabbs, occs, binaries).

The grid never changes shapes: rendering looks cells up per sample and zeroes the density of samples in empty cells;
`update` is called on the host every few steps and re-evaluates the density at one jittered point per cell.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from neutral.lift3d.occupancy_grid import grid_update_points


class OccupancyGrid(nn.Module):
    def __init__(self, radius: float, resolution: int = 32):
        super().__init__()
        self.resolution = resolution
        self.radius = radius
        self.register_buffer("aabbs", torch.tensor([[-radius] * 3 + [radius] * 3], dtype=torch.float32))
        self.register_buffer("occs", torch.zeros(resolution ** 3, dtype=torch.float32))
        # all cells start occupied so a renderer that was never updated renders everything
        self.register_buffer("binaries", torch.ones((1, resolution, resolution, resolution), dtype=torch.bool))

    def cell_index(self, positions: torch.Tensor) -> torch.Tensor:
        """(M,3) points in the box -> flat cell index (M,), clamped to the grid."""
        unit = (positions + self.radius) / (2.0 * self.radius)
        ijk = torch.floor(unit * self.resolution).clamp(0, self.resolution - 1).long()
        res = self.resolution
        return ijk[:, 0] * (res * res) + ijk[:, 1] * res + ijk[:, 2]

    def occupied(self, positions: torch.Tensor) -> torch.Tensor:
        """(M,3) -> (M,1) float, 1 where the sample's cell is occupied."""
        flat = self.binaries.reshape(-1).to(positions.dtype)
        return flat[self.cell_index(positions)][:, None]

    @torch.no_grad()
    def update(self, density_fn: Callable[[torch.Tensor], torch.Tensor], step_size: float, seed: int,
               ema_decay: float, threshold: float) -> None:
        """nerfacc's update rule over every cell: occ = density * step_size (alpha ~ sigma delta),
        occs = max(occs * decay, occ), occupied = occs > min(mean(occs), threshold)."""
        points = torch.from_numpy(grid_update_points(self.resolution, self.radius, seed)).to(self.occs.device)
        occ = density_fn(points).reshape(-1) * step_size
        occs = torch.maximum(self.occs * ema_decay, occ)
        thre = torch.clamp(occs.mean(), max=threshold)
        self.occs.copy_(occs)
        self.binaries.copy_((occs > thre).reshape(self.binaries.shape))
