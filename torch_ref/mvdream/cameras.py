"""PyTorch twin of mindspore_impl/mvdream/cameras.py (same numpy math; torch tensors accepted)."""
from __future__ import annotations

import numpy as np
import torch

FLIP_YZ = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def create_camera_to_world_matrix(elevation: float, azimuth: float) -> np.ndarray:
    elevation, azimuth = np.radians(elevation), np.radians(azimuth)
    camera_pos = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                           np.cos(elevation) * np.cos(azimuth)])
    target, up = np.zeros(3), np.array([0.0, 1.0, 0.0])
    forward = target - camera_pos
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    new_up = np.cross(right, forward)
    new_up /= np.linalg.norm(new_up)
    cam2world = np.eye(4)
    cam2world[:3, :3] = np.array([right, new_up, -forward]).T
    cam2world[:3, 3] = camera_pos
    return cam2world


def convert_opengl_to_blender(camera_matrix):
    if isinstance(camera_matrix, np.ndarray):
        return np.dot(FLIP_YZ, camera_matrix) if camera_matrix.ndim == 2 else np.matmul(FLIP_YZ, camera_matrix)
    flip = torch.tensor(FLIP_YZ).to(camera_matrix)
    return torch.matmul(flip.unsqueeze(0) if camera_matrix.ndim == 3 else flip, camera_matrix)


def normalize_camera(camera_matrix):
    """Translation onto the unit sphere, (-1, 16); works on a copy (upstream edits in place)."""
    if isinstance(camera_matrix, np.ndarray):
        m = camera_matrix.reshape(-1, 4, 4).copy()
        t = m[:, :3, 3]
        m[:, :3, 3] = t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-8)
        return m.reshape(-1, 16)
    m = camera_matrix.reshape(-1, 4, 4).clone()
    t = m[:, :3, 3]
    m[:, :3, 3] = t / (torch.norm(t, dim=1, keepdim=True) + 1e-8)
    return m.reshape(-1, 16)


def get_camera(num_frames: int, elevation: float = 15, azimuth_start: float = 0, azimuth_span: float = 360,
               blender_coord: bool = True) -> torch.Tensor:
    """(num_frames, 16) float32 tensor, as upstream (n evenly spaced azimuths)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    cameras = []
    for i in range(num_frames):
        m = create_camera_to_world_matrix(elevation, azimuth_start + i * (azimuth_span / num_frames))
        if blender_coord:
            m = convert_opengl_to_blender(m)
        cameras.append(m.flatten())
    return torch.tensor(np.stack(cameras, 0)).float()
