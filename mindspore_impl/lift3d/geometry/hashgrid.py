"""Multiresolution hash-grid encoding with tinycudann "HashGrid" semantics, in plain MindSpore ops.

Source of truth: NVlabs/tiny-cuda-nn include/tiny-cuda-nn/encodings/grid.h (offset table, grid_index,
fast_hash, kernel_grid). Twin: torch_ref/lift3d/geometry/hashgrid.py.

Parameter layout is tcnn's: one flat `params` vector, level l occupying rows
[offset_l, offset_l + size_l) of a (total_rows, n_features_per_level) table.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from mindspore_impl.lift3d.spec.hashgrid import HASH_PRIMES, UINT32_MASK, build_layout, init_hashgrid_params


class HashGrid(nn.Cell):
    """(N, 3) points in [0, 1]^3 -> (N, n_levels * n_features_per_level), level-major like tcnn.

    All levels are evaluated at once: 8 corner rows per level (dense or hashed, chosen per level
    by a constant mask), one gather from the table, trilinear weights from the cell fraction.
    Index math runs in int64 and is masked to 32 bits, which reproduces tcnn's uint32 arithmetic.
    """

    def __init__(self, n_input_dims: int, config, params: Optional[np.ndarray] = None):
        super().__init__()
        self.cfg, self.layouts, self.n_rows = build_layout(n_input_dims, config)
        self.n_input_dims = n_input_dims
        self.n_levels = self.cfg.n_levels
        self.n_features = self.cfg.n_features_per_level
        self.n_output_dims = self.n_levels * self.n_features
        if params is None:
            params = init_hashgrid_params(self.n_rows * self.n_features, self.cfg.seed)
        self.params = ms.Parameter(ms.Tensor(params, ms.float32), name="params")

        lay = self.layouts
        self.scales = ms.Tensor(np.array([l.scale for l in lay], np.float32).reshape(1, -1, 1))
        # per-level constants, shaped (1, L, 1) to broadcast against per-axis (N, L, 2) coordinates
        as_col = lambda v: ms.Tensor(np.array(v, np.int64).reshape(1, -1, 1))
        self.res = as_col([l.resolution for l in lay])
        self.res2 = as_col([l.resolution ** 2 for l in lay])
        self.sizes = as_col([l.size for l in lay])
        self.offsets = as_col([l.offset for l in lay])
        self.dense = ms.Tensor(np.array([l.dense for l in lay]).reshape(1, -1, 1, 1, 1))
        self.step = ms.Tensor(np.array([0, 1], np.int64))
        self.mask32 = ms.Tensor(UINT32_MASK, ms.int64)
        self.prime_x, self.prime_y, self.prime_z = (ms.Tensor(p, ms.int64) for p in HASH_PRIMES)

    @staticmethod
    def _cube(tx, ty, tz):
        """Per-axis (N, L, 2) lower/upper terms -> broadcastable (N, L, 2z, 2y, 2x) views.

        Flattening (z, y, x) with x fastest gives tcnn's corner order (bit d of the corner id = axis d)."""
        return (ops.reshape(tx, tx.shape[:2] + (1, 1, 2)),
                ops.reshape(ty, ty.shape[:2] + (1, 2, 1)),
                ops.reshape(tz, tz.shape[:2] + (2, 1, 1)))

    def corner_rows(self, lower):
        """(N, L, 3) int64 lower cell corner -> (N, L, 8) int32 table rows (grid.h grid_index).

        Dense index x + y*res + z*res^2 and hash x*1 ^ y*2654435761 ^ z*805459861 are both sums / XORs
        of one term per axis, so the terms are computed for 2 coordinates per axis and combined.
        """
        c = ops.expand_dims(lower, -1) + self.step                    # (N, L, 3, 2)
        x, y, z = c[:, :, 0], c[:, :, 1], c[:, :, 2]                  # (N, L, 2) each
        dx, dy, dz = self._cube(x, y * self.res, z * self.res2)
        dense_idx = ops.bitwise_and(dx + dy + dz, self.mask32)
        hx, hy, hz = self._cube(ops.bitwise_and(x * self.prime_x, self.mask32),
                                ops.bitwise_and(y * self.prime_y, self.mask32),
                                ops.bitwise_and(z * self.prime_z, self.mask32))
        hashed = ops.bitwise_xor(ops.bitwise_xor(hx, hy), hz)
        idx = ops.select(ops.broadcast_to(self.dense, hashed.shape), dense_idx, hashed)
        idx = ops.reshape(idx, idx.shape[:2] + (8,))
        return ops.cast(ops.floor_mod(idx, self.sizes) + self.offsets, ms.int32)

    def trilinear_weights(self, frac):
        """(N, L, 3) cell fractions -> (N, L, 8) weights in the corner order of corner_rows."""
        w = ops.stack([1.0 - frac, frac], -1)                         # (N, L, 3, 2)
        wx, wy, wz = self._cube(w[:, :, 0], w[:, :, 1], w[:, :, 2])
        weight = wz * wy * wx
        return ops.reshape(weight, weight.shape[:2] + (8,))

    def construct(self, x):
        n = x.shape[0]
        pos = ops.expand_dims(x, 1) * self.scales + 0.5               # (N, L, 3)
        pos_floor = ops.stop_gradient(ops.floor(pos))
        rows = self.corner_rows(ops.cast(pos_floor, ms.int64))        # (N, L, 8)
        weight = self.trilinear_weights(pos - pos_floor)              # (N, L, 8)
        table = ops.reshape(self.params, (-1, self.n_features))
        feats = ops.gather(table, rows, 0)                            # (N, L, 8, F)
        out = ops.sum(feats * ops.expand_dims(weight, -1), 2)         # (N, L, F)
        return ops.reshape(out, (n, self.n_output_dims))


class HashGridEncoding(nn.Cell):
    """Mirrors threestudio's TCNNEncoding (holds the grid as `.encoding`)."""

    def __init__(self, n_input_dims: int, config):
        super().__init__()
        self.n_input_dims = n_input_dims
        self.encoding = HashGrid(n_input_dims, config)
        self.n_output_dims = self.encoding.n_output_dims

    def construct(self, x):
        return self.encoding(x)


class CompositeEncoding(nn.Cell):
    """Mirrors threestudio's CompositeEncoding (include_xyz=False), so parameter names match upstream:
    `encoding.encoding.encoding.params` on the geometry."""

    def __init__(self, encoding: nn.Cell):
        super().__init__()
        self.encoding = encoding
        self.n_input_dims = encoding.n_input_dims
        self.n_output_dims = encoding.n_output_dims

    def construct(self, x):
        return self.encoding(x)


def get_encoding(n_input_dims: int, config) -> CompositeEncoding:
    """threestudio get_encoding for the HashGrid otype (input expected in [0, 1])."""
    return CompositeEncoding(HashGridEncoding(n_input_dims, config))
