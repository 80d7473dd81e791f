"""Multiresolution hash-grid encoding with tinycudann "HashGrid" semantics, in plain PyTorch.

Twin of mindspore_impl/lift3d/geometry/hashgrid.py (same layout, index math and parameter names);
stands in for tcnn.Encoding, which needs CUDA.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from neutral.lift3d.hashgrid import HASH_PRIMES, UINT32_MASK, build_layout, init_hashgrid_params


class HashGrid(nn.Module):
    """(N, 3) in [0, 1]^3 -> (N, n_levels * n_features_per_level); stands where tcnn.Encoding stood."""

    def __init__(self, n_input_dims: int, config, params: Optional[np.ndarray] = None):
        super().__init__()
        self.cfg, self.layouts, self.n_rows = build_layout(n_input_dims, config)
        self.n_input_dims = n_input_dims
        self.n_levels = self.cfg.n_levels
        self.n_features = self.cfg.n_features_per_level
        self.n_output_dims = self.n_levels * self.n_features
        if params is None:
            params = init_hashgrid_params(self.n_rows * self.n_features, self.cfg.seed)
        self.params = nn.Parameter(torch.from_numpy(np.asarray(params, np.float32)))

        lay = self.layouts
        col = lambda v, dt: torch.tensor(v, dtype=dt).view(1, -1, 1)
        self.register_buffer("scales", col([l.scale for l in lay], torch.float32), persistent=False)
        self.register_buffer("res", col([l.resolution for l in lay], torch.int64), persistent=False)
        self.register_buffer("res2", col([l.resolution ** 2 for l in lay], torch.int64), persistent=False)
        self.register_buffer("sizes", col([l.size for l in lay], torch.int64), persistent=False)
        self.register_buffer("offsets", col([l.offset for l in lay], torch.int64), persistent=False)
        self.register_buffer("dense", col([l.dense for l in lay], torch.bool), persistent=False)
        ids = torch.arange(2 ** n_input_dims)
        bits = (ids[:, None] >> torch.arange(n_input_dims)[None, :]) & 1
        self.register_buffer("corner_int", bits.view(1, 1, -1, n_input_dims), persistent=False)

    def level_indices(self, corners: torch.Tensor) -> torch.Tensor:
        """(N, L, 8, 3) int64 corners -> (N, L, 8) table rows (grid.h grid_index, uint32 via masking)."""
        x, y, z = corners.unbind(-1)
        dense_idx = (x + y * self.res + z * self.res2) & UINT32_MASK
        hashed = ((x * HASH_PRIMES[0]) & UINT32_MASK) ^ ((y * HASH_PRIMES[1]) & UINT32_MASK)
        hashed = hashed ^ ((z * HASH_PRIMES[2]) & UINT32_MASK)
        idx = torch.where(self.dense, dense_idx, hashed)
        return torch.remainder(idx, self.sizes) + self.offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = x[:, None, :] * self.scales + 0.5                 # (N, L, 3)
        pos_floor = torch.floor(pos).detach()
        frac = (pos - pos_floor)[:, :, None, :]                  # (N, L, 1, 3)
        corners = pos_floor.long()[:, :, None, :] + self.corner_int
        rows = self.level_indices(corners)                       # (N, L, 8)
        cf = self.corner_int.to(x.dtype)
        w = cf * frac + (1.0 - cf) * (1.0 - frac)
        weight = w[..., 0] * w[..., 1] * w[..., 2]
        feats = self.params.view(-1, self.n_features)[rows]      # (N, L, 8, F)
        out = (feats * weight[..., None]).sum(2)
        return out.reshape(x.shape[0], self.n_output_dims)


class HashGridEncoding(nn.Module):
    """threestudio TCNNEncoding stand-in (the grid is `.encoding`)."""

    def __init__(self, n_input_dims: int, config):
        super().__init__()
        self.n_input_dims = n_input_dims
        self.encoding = HashGrid(n_input_dims, config)
        self.n_output_dims = self.encoding.n_output_dims

    def forward(self, x):
        return self.encoding(x)


class CompositeEncoding(nn.Module):
    """threestudio CompositeEncoding with include_xyz=False."""

    def __init__(self, encoding: nn.Module):
        super().__init__()
        self.encoding = encoding
        self.n_input_dims = encoding.n_input_dims
        self.n_output_dims = encoding.n_output_dims

    def forward(self, x):
        return self.encoding(x)


def get_encoding(n_input_dims: int, config) -> CompositeEncoding:
    return CompositeEncoding(HashGridEncoding(n_input_dims, config))
