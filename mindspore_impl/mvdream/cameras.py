"""MVDream camera conditioning: 4x4 camera-to-world matrices flattened to 16 values.

Conventions (MVDream camera_utils): OpenGL, y up, camera on the unit sphere at
(cos e sin a, sin e, cos e cos a) looking at the origin; columns [right, up, -forward].
`convert_opengl_to_blender` turns it z-up. MVDream azimuth a equals threestudio azimuth a - 90.
"""
from __future__ import annotations

import numpy as np
from mindspore import ops  # top level: GRAPH mode cannot compile a local import

FLIP_YZ = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def create_camera_to_world_matrix(elevation: float, azimuth: float) -> np.ndarray:
    """(4, 4) float64 camera-to-world matrix for angles in degrees."""
    e, a = np.radians(elevation), np.radians(azimuth)
    camera_pos = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
    up = np.array([0.0, 1.0, 0.0])
    forward = -camera_pos / np.linalg.norm(camera_pos)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    new_up = np.cross(right, forward)
    new_up /= np.linalg.norm(new_up)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, new_up, -forward], axis=1)
    c2w[:3, 3] = camera_pos
    return c2w


def convert_opengl_to_blender(camera_matrix: np.ndarray) -> np.ndarray:
    """Left-multiply by the y/z flip: (4,4) or (B,4,4) -> same shape."""
    return np.matmul(FLIP_YZ.astype(np.asarray(camera_matrix).dtype), camera_matrix)


def normalize_camera(camera_matrix):
    """Put the camera position on the unit sphere; (..., 4, 4) or (..., 16) -> (B, 16).

    Accepts numpy arrays and MindSpore tensors (ops only, so it works inside GRAPH mode).
    The input is never modified.
    """
    if isinstance(camera_matrix, np.ndarray):
        m = camera_matrix.reshape(-1, 4, 4).copy()
        t = m[:, :3, 3]
        m[:, :3, 3] = t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-8)
        return m.reshape(-1, 16)
    m = camera_matrix.reshape(-1, 4, 4)
    t = m[:, :3, 3:4]
    norm = ops.sqrt((t * t).sum(axis=1, keepdims=True)) + 1e-8
    top = ops.concat([m[:, :3, :3], t / norm], axis=2)
    return ops.concat([top, m[:, 3:, :]], axis=1).reshape(-1, 16)


def camera_azimuths(num_frames: int, azimuth_start: float = 0, azimuth_span: float = 360) -> np.ndarray:
    """num_frames azimuths (degrees) evenly spaced over the span, starting at azimuth_start.

    Upstream uses np.arange(start, start + span, span / n), which can yield n + 1 values
    through float rounding; start + i * span / n always yields exactly n.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return azimuth_start + np.arange(num_frames) * (azimuth_span / num_frames)


def get_camera(num_frames: int, elevation: float = 15, azimuth_start: float = 0, azimuth_span: float = 360,
               blender_coord: bool = True) -> np.ndarray:
    """(num_frames, 16) float32 flattened row-major camera-to-world matrices (no intrinsics)."""
    cams = []
    for azimuth in camera_azimuths(num_frames, azimuth_start, azimuth_span):
        m = create_camera_to_world_matrix(elevation, azimuth)
        if blender_coord:
            m = convert_opengl_to_blender(m)
        cams.append(m.flatten())
    return np.stack(cams, 0).astype(np.float32)
