"""Framework-neutral part of the occupancy grid: cell coordinates and the jittered update points (numpy).
Shared by mindspore_impl/ and torch_ref/lift3d/renderers/occupancy_grid.py.
"""
from __future__ import annotations

import numpy as np


def grid_cell_coords(resolution: int) -> np.ndarray:
    """Integer (x, y, z) of every cell, x slowest ('ij' order, flat index x*res^2 + y*res + z). (res^3, 3) float32."""
    r = np.arange(resolution, dtype=np.float32)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)


def grid_update_points(resolution: int, radius: float, seed: int) -> np.ndarray:
    """One point per cell, uniformly jittered inside it from an explicit seed (shared by both frameworks)."""
    jitter = np.random.default_rng(seed).random((resolution ** 3, 3), dtype=np.float32)
    unit = (grid_cell_coords(resolution) + jitter) / resolution
    return (unit * (2.0 * radius) - radius).astype(np.float32)
