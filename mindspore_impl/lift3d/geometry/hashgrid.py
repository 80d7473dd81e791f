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

from neutral.lift3d.hashgrid import HASH_PRIMES, build_layout, init_hashgrid_params


class HashGridLookupAutodiff(nn.Cell):
    """The grid lookup as a function of (points, table), differentiated by autodiff (any order).

    Hash math is int32: products wrap modulo 2^32 like tcnn's uint32, and hashed levels have
    power-of-two sizes (grid.h), so `idx & (size - 1)` equals the uint32 `idx % size`.
    """

    def __init__(self, layouts, n_features: int):
        super().__init__()
        self.n_levels = len(layouts)
        self.n_features = n_features
        self.n_rows = layouts[-1].offset + layouts[-1].size
        # dense levels come first (resolution grows with the level): two contiguous groups
        self.n_dense = sum(1 for l in layouts if l.dense)
        if any(l.dense for l in layouts[self.n_dense:]):
            raise ValueError("hash grid: dense levels must precede hashed ones")
        for l in layouts[self.n_dense:]:
            if l.size & (l.size - 1):
                raise ValueError(f"hash grid: hashed level size {l.size} is not a power of two")
        if self.n_rows >= 2 ** 24:
            raise ValueError(f"hash grid: {self.n_rows} table rows; at most 2^24 are supported (float32 row math)")
        f32 = lambda v, shape: ms.Tensor(np.array(v, np.float32).reshape(shape))
        self.scales = f32([l.scale for l in layouts], (1, -1, 1))
        dense, hashed = layouts[:self.n_dense], layouts[self.n_dense:]
        self.dense_res = f32([l.resolution for l in dense], (1, -1, 1))
        self.dense_res2 = f32([l.resolution ** 2 for l in dense], (1, -1, 1))
        self.dense_sizes = f32([l.size for l in dense], (1, -1, 1, 1, 1))
        self.hash_masks = ms.Tensor(np.array([l.size - 1 for l in hashed], np.int32).reshape(1, -1, 1, 1, 1))
        self.offsets = f32([l.offset for l in layouts], (1, -1, 1))
        self.primes = tuple(ms.Tensor(np.uint32(p).view(np.int32), ms.int32) for p in HASH_PRIMES)
        self.step = ms.Tensor(np.array([0, 1], np.float32))
        sign = np.array([-1.0, 1.0], np.float32)  # d weight / d frac of the lower / upper corner
        self.signs = tuple(ms.Tensor(sign.reshape(s)) for s in ((1, 1, 1, 1, 2), (1, 1, 1, 2, 1), (1, 1, 2, 1, 1)))

    @staticmethod
    def _cube(tx, ty, tz):
        """Per-axis (N, L, 2) lower/upper terms -> broadcastable (N, L, 2z, 2y, 2x) views.

        Flattening (z, y, x) with x fastest gives tcnn's corner order (bit d of the corner id = axis d)."""
        return (ops.reshape(tx, tx.shape[:2] + (1, 1, 2)),
                ops.reshape(ty, ty.shape[:2] + (1, 2, 1)),
                ops.reshape(tz, tz.shape[:2] + (2, 1, 1)))

    def corner_rows(self, lower):
        """(N, L, 3) lower cell corner (float, integral) -> (N, L, 8) int32 table rows (grid.h grid_index).

        Dense index x + y*res + z*res^2 and hash x*1 ^ y*2654435761 ^ z*805459861 are both sums / XORs
        of one term per axis, so the terms are computed for 2 coordinates per axis and combined.
        Dense indices and row offsets stay below 2^24, so float32 holds them exactly; that path is used
        because MindSpore's CPU kernels for broadcast int32 add / floor_mod keep ~4 temporaries each.
        """
        c = ops.expand_dims(lower, -1) + self.step                    # (N, L, 3, 2)
        groups = []
        if self.n_dense:
            d = c[:, :self.n_dense]
            dx, dy, dz = self._cube(d[:, :, 0], d[:, :, 1] * self.dense_res, d[:, :, 2] * self.dense_res2)
            idx = dx + dy + dz
            # the upper corner may sit one past the grid: idx < 2 size, so one subtraction is the modulo
            groups.append(idx - self.dense_sizes * ops.cast(idx >= self.dense_sizes, idx.dtype))
        if self.n_dense < self.n_levels:
            h = ops.cast(c[:, self.n_dense:], ms.int32)
            hx, hy, hz = self._cube(h[:, :, 0] * self.primes[0], h[:, :, 1] * self.primes[1],
                                    h[:, :, 2] * self.primes[2])
            hashed = ops.bitwise_and(ops.bitwise_xor(ops.bitwise_xor(hx, hy), hz), self.hash_masks)
            groups.append(ops.cast(hashed, c.dtype))
        idx = groups[0] if len(groups) == 1 else ops.concat(groups, 1)
        return ops.cast(ops.reshape(idx, idx.shape[:2] + (8,)) + self.offsets, ms.int32)

    def _weights(self, frac):
        """(N, L, 3) cell fractions -> per-axis (N, L, 2) weights [1 - f, f] and their (N, L, 8) product."""
        w = ops.stack([1.0 - frac, frac], -1)                         # (N, L, 3, 2)
        wx, wy, wz = self._cube(w[:, :, 0], w[:, :, 1], w[:, :, 2])
        return (wx, wy, wz), ops.reshape(wz * wy * wx, frac.shape[:2] + (8,))

    def _locate(self, x):
        """(N, 3) points -> (N, L, 8) rows, (N, L, 3) fractions."""
        pos = ops.expand_dims(x, 1) * self.scales + 0.5               # (N, L, 3)
        pos_floor = ops.floor(pos)
        return self.corner_rows(pos_floor), pos - pos_floor

    def construct(self, x, table):
        n = x.shape[0]
        rows, frac = self._locate(x)
        _, weight = self._weights(frac)
        feats = ops.gather(table, rows, 0)                            # (N, L, 8, F)
        out = ops.sum(feats * ops.expand_dims(weight, -1), 2)         # (N, L, F)
        return ops.reshape(out, (n, self.n_levels * self.n_features))



class HashGridLookup(HashGridLookupAutodiff):
    """The same lookup with a backward that stores nothing (first-order gradients only).

    Autodiff keeps every index and weight tensor of the forward pass for the backward (about 20 KB per
    sample at 16 levels). `bprop` recomputes the corner rows and trilinear weights from the points instead,
    so the backward holds only the points and the output, as tcnn's kernel does. MindSpore cannot
    differentiate a custom bprop again, so analytic normals (a gradient of the density that is itself
    trained) use HashGridLookupAutodiff.
    """

    def bprop(self, x, table, out, dout):
        n = x.shape[0]
        rows, frac = self._locate(x)
        (wx, wy, wz), weight = self._weights(frac)
        g = ops.reshape(dout, (n, self.n_levels, 1, self.n_features))
        contrib = ops.expand_dims(weight, -1) * g                     # (N, L, 8, F)
        d_table = ops.unsorted_segment_sum(ops.reshape(contrib, (-1, self.n_features)), ops.reshape(rows, (-1,)),
                                           self.n_rows)
        # d out / d x: the weights' derivative along each axis (-1 / +1 for the lower / upper corner) x scale
        fg = ops.sum(ops.gather(table, rows, 0) * g, -1)              # (N, L, 8): feature . upstream gradient
        fg = ops.reshape(fg, fg.shape[:2] + (2, 2, 2))
        sx, sy, sz = self.signs
        d_frac = ops.stack([ops.sum(fg * (sx * wy * wz), (2, 3, 4)), ops.sum(fg * (wx * sy * wz), (2, 3, 4)),
                            ops.sum(fg * (wx * wy * sz), (2, 3, 4))], -1)     # (N, L, 3)
        d_x = ops.sum(d_frac * self.scales, 1)
        return d_x, d_table


class HashGrid(nn.Cell):
    """(N, 3) points in [0, 1]^3 -> (N, n_levels * n_features_per_level), level-major like tcnn.

    All levels are evaluated at once: 8 corner rows per level (dense or hashed), one gather from the
    table, trilinear weights from the cell fraction. `second_order=True` keeps the lookup differentiable
    twice (analytic normals) at the cost of autodiff's stored intermediates.
    """

    def __init__(self, n_input_dims: int, config, params: Optional[np.ndarray] = None,
                 second_order: bool = False):
        super().__init__()
        self.cfg, self.layouts, self.n_rows = build_layout(n_input_dims, config)
        self.n_input_dims = n_input_dims
        self.n_levels = self.cfg.n_levels
        self.n_features = self.cfg.n_features_per_level
        self.n_output_dims = self.n_levels * self.n_features
        if params is None:
            params = init_hashgrid_params(self.n_rows * self.n_features, self.cfg.seed)
        self.params = ms.Parameter(ms.Tensor(params, ms.float32), name="params")
        lookup = HashGridLookupAutodiff if second_order else HashGridLookup
        self.lookup = lookup(self.layouts, self.n_features)

    def construct(self, x):
        return self.lookup(x, ops.reshape(self.params, (-1, self.n_features)))


class HashGridEncoding(nn.Cell):
    """Mirrors threestudio's TCNNEncoding (holds the grid as `.encoding`)."""

    def __init__(self, n_input_dims: int, config, second_order: bool = False):
        super().__init__()
        self.n_input_dims = n_input_dims
        self.encoding = HashGrid(n_input_dims, config, second_order=second_order)
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


def get_encoding(n_input_dims: int, config, second_order: bool = False) -> CompositeEncoding:
    """threestudio get_encoding for the HashGrid otype (input expected in [0, 1]); `second_order` when a
    gradient of the encoding is itself differentiated (analytic normals)."""
    return CompositeEncoding(HashGridEncoding(n_input_dims, config, second_order))
