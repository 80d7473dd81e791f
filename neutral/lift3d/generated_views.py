"""Host-side parts of generate-then-reconstruct (numpy): the camera path of the generated views and the
matte that turns a generated view on a plain background into RGBA.

The views follow one spiral (marching-waifu-x generates a sequence in which neighbours are close, because
its sliding window attends to view n - 1 and the anchor view 0): view k at azimuth k * 360 * turns / N and
elevation rising linearly over the elevation range, so consecutive views differ by 360 * turns / N degrees.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def spiral_angles(n_views: int, elevation_range: Sequence[float], turns: int, azimuth_start: float = 0.0):
    """(elevation, azimuth) in degrees, each (n_views,) float64: `turns` turns around the z axis while the
    elevation rises from elevation_range[0] to elevation_range[1]."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    k = np.arange(n_views, dtype=np.float64)
    azimuth = (azimuth_start + k * 360.0 * turns / n_views) % 360.0
    lo, hi = (float(v) for v in elevation_range)
    elevation = np.linspace(lo, hi, n_views) if n_views > 1 else np.full(1, lo)
    return elevation, azimuth


def _box_blur3(images: np.ndarray) -> np.ndarray:
    """3x3 mean over (N, H, W, C) with edge padding."""
    p = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    return sum(p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def background_matte(rgb: np.ndarray, low: float, high: float) -> np.ndarray:
    """Alpha (N, H, W) float32 of views (N, H, W, 3) in [0, 1] rendered on a plain background.

    The background colour of each view is the median of its border pixels; a pixel's alpha ramps from 0 to 1
    as the distance of its 3x3 mean colour from that colour goes from `low` to `high` (the mean keeps the
    sampling noise of a small diffusion model below `low`)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (N, H, W, 3), got {rgb.shape}")
    if not 0.0 <= low < high:
        raise ValueError(f"matte thresholds must satisfy 0 <= low < high, got {low}, {high}")
    border = np.concatenate([rgb[:, 0], rgb[:, -1], rgb[:, :, 0], rgb[:, :, -1]], axis=1)  # (N, 2H + 2W, 3)
    background = np.median(border, axis=1)[:, None, None, :]
    distance = np.linalg.norm(_box_blur3(rgb) - background, axis=-1)
    return np.clip((distance - low) / (high - low), 0.0, 1.0).astype(np.float32)
