"""The relative camera condition T of Zero-1-to-3, computed on the host (numpy).

Upstream sources:
- training data, cvlab-columbia/zero123 zero123/ldm/data/simple.py (`get_T`, `cartesian_to_spherical`): the
  camera centre in spherical coordinates, polar angle theta measured down from +Z, azimuth atan2(y, x), radius;
  T = [theta_target - theta_cond, sin d_az, cos d_az, r_target - r_cond], angles in radians;
- guidance, threestudio-project/threestudio threestudio/models/guidance/zero123_guidance.py (`get_cond`):
  from elevations (degrees up from the equator), azimuths (degrees) and camera distances, with polar = 90 - elevation.
"""
from __future__ import annotations

import numpy as np


def relative_camera_T(elevation_deg, azimuth_deg, distance, ref_elevation_deg, ref_azimuth_deg,
                      ref_distance) -> np.ndarray:
    """[B, 4] float32 rows [d_polar, sin d_az, cos d_az, d_radius] of target views relative to the reference view.

    Units and signs (threestudio's zero123 guidance):
    - d_polar = radians((90 - elevation) - (90 - ref_elevation)) = radians(ref_elevation - elevation): a view
      above the reference (higher elevation) has a negative d_polar;
    - d_az = radians(azimuth - ref_azimuth), fed only through sin and cos (so any multiple of 360 degrees is equal);
    - d_radius = distance - ref_distance, in the scene's length unit.
    Inputs are scalars or 1-D arrays (degrees, degrees, length) broadcast against each other; the reference
    values are usually scalars.
    """
    elevation, azimuth, dist, ref_el, ref_az, ref_dist = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in
          (elevation_deg, azimuth_deg, distance, ref_elevation_deg, ref_azimuth_deg, ref_distance)))
    if elevation.ndim > 1:
        raise ValueError(f"relative_camera_T takes scalars or 1-D arrays, got shape {elevation.shape}")
    d_polar = np.deg2rad((90.0 - elevation) - (90.0 - ref_el))
    d_az = np.deg2rad(azimuth - ref_az)
    T = np.stack([d_polar, np.sin(d_az), np.cos(d_az), dist - ref_dist], axis=-1)
    return np.atleast_2d(T).astype(np.float32)
