"""Framework-neutral part of multiview diffusion training (numpy only, no MindSpore or torch import):
checkpoint prefixes (from neutral/mvdream/checkpoint_layout.py), the step's input names, the host-side draw
of every random number of a step, and the image layout. Shared by mindspore_impl/mvdream/training.py,
torch_ref/mvdream/training.py and the training data module (mindspore_impl/mvdream/data/datamodule.py, which
draws each step's random numbers with sample_step_noise).
"""
from __future__ import annotations

import numpy as np

from neutral.mvdream import checkpoint_layout

# the checkpoint prefixes, under the names mindspore_impl/mvdream/training.py imports
UNET_PREFIX = checkpoint_layout.UNET.prefix
FIRST_STAGE_PREFIX = checkpoint_layout.VAE.prefix
TEXT_PREFIX = checkpoint_layout.TEXT_ENCODER.prefix
TIMESTEP_SHARING = ("object", "view")


# ---------------------------------------------------------------- host-side randomness

def sample_step_noise(rng: np.random.Generator, batch: int, num_frames: int, latent_shape, num_timesteps: int,
                      drop_prob: float, timestep_sharing: str = "object") -> dict[str, np.ndarray]:
    """Every random number of one step, in a fixed draw order: t, drop, noise, fs_noise.

    timestep_sharing "object": one t per object, shared by its F views (they are denoised together at
    sampling and in SDS, so training sees the same noise level on all views); "view": one t per view.
    """
    if timestep_sharing not in TIMESTEP_SHARING:
        raise ValueError(f"timestep_sharing must be one of {TIMESTEP_SHARING}, got {timestep_sharing!r}")
    n = batch * num_frames
    if timestep_sharing == "object":
        t = np.repeat(rng.integers(0, num_timesteps, batch), num_frames)
    else:
        t = rng.integers(0, num_timesteps, n)
    drop = (rng.random(batch) < drop_prob).astype(np.float32)
    noise = rng.standard_normal((n,) + tuple(latent_shape), dtype=np.float32)
    fs_noise = rng.standard_normal((n,) + tuple(latent_shape), dtype=np.float32)
    return {"t": t.astype(np.int32), "drop": drop, "noise": noise, "fs_noise": fs_noise}


def images_to_model(images_u8: np.ndarray) -> np.ndarray:
    """uint8 (B, F, H, W, 3) -> float32 ((B F), 3, H, W) in [-1, 1]."""
    b, f, h, w, c = images_u8.shape
    x = images_u8.reshape(b * f, h, w, c).astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


STEP_INPUTS = ("images", "camera", "tokens", "drop", "t", "noise", "fs_noise")
