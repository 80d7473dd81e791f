"""Framework-neutral part of the tcnn "HashGrid" encoding: config, per-level table layout and the
parameter init (numpy). Source: tiny-cuda-nn include/tiny-cuda-nn/encodings/grid.h.
Shared by mindspore_impl/ and torch_ref/lift3d/geometry/hashgrid.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import numpy as np

from neutral.config import parse_structured


# fast_hash primes for x, y, z (tcnn grid.h); 1 keeps neighbouring x in one cache line.
HASH_PRIMES = (1, 2654435761, 805459861)


UINT32_MASK = 0xFFFFFFFF


INIT_RANGE = 1e-4  # tcnn initialize_params: uniform in [-1e-4, 1e-4]


@dataclass
class HashGridConfig:
    otype: str = "HashGrid"
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378
    seed: int = 1337  # tcnn's default encoding seed; our init draws from numpy with it


@dataclass(frozen=True)
class LevelLayout:
    scale: float       # s_l: a point p in [0,1] maps to p * s_l + 0.5
    resolution: int    # ceil(s_l) + 1, also the dense-index stride
    offset: int        # first table row of the level
    size: int          # rows of the level (hashmap_size in grid.h)
    dense: bool        # resolution**3 fits the level: index = x + y*res + z*res^2


def parse_hashgrid_config(cfg) -> HashGridConfig:
    parsed = parse_structured(HashGridConfig, cfg, where="pos_encoding_config")
    if parsed.otype not in ("HashGrid", "Grid"):
        raise ValueError(f"pos_encoding_config.otype must be 'HashGrid', got '{parsed.otype}'")
    return parsed


def level_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """exp2f(l * log2(per_level_scale)) * base - 1, in float32 like tcnn."""
    f32 = np.float32
    log2_pls = np.log2(f32(per_level_scale))
    return float(np.exp2(f32(level) * log2_pls) * f32(base_resolution) - f32(1.0))


def level_layouts(cfg: HashGridConfig, n_dims: int = 3) -> List[LevelLayout]:
    """The per-level table layout of grid.h's GridEncodingTemplated constructor (Hash grid type)."""
    layouts, offset = [], 0
    for level in range(cfg.n_levels):
        scale = level_scale(level, cfg.per_level_scale, cfg.base_resolution)
        resolution = int(math.ceil(scale)) + 1
        dense_params = resolution ** n_dims
        max_params = UINT32_MASK // 2
        params = min(dense_params, max_params)
        params = -(-params // 8) * 8  # next multiple of 8 (aligned accesses)
        size = min(params, 1 << cfg.log2_hashmap_size)
        layouts.append(LevelLayout(scale, resolution, offset, size, dense_params <= size))
        offset += size
    return layouts


def init_hashgrid_params(n_params: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return rng.uniform(-INIT_RANGE, INIT_RANGE, size=(n_params,)).astype(np.float32)



def build_layout(n_input_dims: int, config) -> tuple[HashGridConfig, List[LevelLayout], int]:
    """-> (parsed config, level layouts, total table rows); only 3-D inputs are supported."""
    if n_input_dims != 3:
        raise ValueError(f"HashGrid supports 3 input dims, got {n_input_dims}")
    cfg = parse_hashgrid_config(config)
    layouts = level_layouts(cfg, n_input_dims)
    return cfg, layouts, layouts[-1].offset + layouts[-1].size
