"""Framework-neutral part of training a Zero-1-to-3 model (numpy only, no MindSpore or torch import): the step's
input names, the host-side draw of every random number of a step, view pairs and their T, and the image layout.
Shared by mindspore_impl/zero123/training.py, torch_ref/zero123/training.py and the view-pair data module
(mindspore_impl/zero123/data.py).

Upstream: cvlab-columbia/zero123 zero123/ldm/data/simple.py (`ObjaverseData.__getitem__`: two different views of
one object, `random.sample(range(total_view), 2)`, the condition and the target, RGBA composited over white, and
`get_T` of the pair) and zero123/ldm/models/diffusion/ddpm.py (`LatentDiffusion.get_input`: with one uniform draw
r per sample and uncond = 0.05, the image embedding is replaced by the null embedding (zeros) when r < 2 uncond and
c_concat is zeroed when uncond <= r < 3 uncond: the embedding alone 5%, both 5%, the concat image alone 5%;
`p_losses`: t uniform over the timesteps, eps-MSE).
"""
from __future__ import annotations

import numpy as np

from neutral.zero123.camera import relative_camera_T

# inputs of the loss cell, in order (mindspore_impl/zero123/training.py Zero123DiffusionLoss.construct)
STEP_INPUTS = ("target", "cond", "T", "t", "noise", "fs_noise", "drop_embedding", "drop_image")
# what a dropped image embedding becomes (system.null_crossattn):
# "embedding": upstream's training, zeros in place of the image embedding, T still projected;
# "projected": c_crossattn itself zeros (image embedding and T), exactly the unconditional branch that upstream's
#              samplers and the zero123 guidance feed at classifier-free guidance
NULL_CROSSATTN = ("embedding", "projected")


def sample_pairs(rng: np.random.Generator, num_objects: int, num_views: int, batch: int):
    """(objects, condition views, target views), each int64 (batch,): objects with replacement, and per object two
    different views uniformly over ordered pairs (upstream's random.sample(range(total_view), 2))."""
    if num_views < 2:
        raise ValueError(f"view pairs need at least 2 views per object, got {num_views}")
    objects = rng.integers(0, num_objects, batch)
    cond = rng.integers(0, num_views, batch)
    target = (cond + rng.integers(1, num_views, batch)) % num_views
    return objects, cond, target


def condition_dropout(rng: np.random.Generator, batch: int, uncond: float):
    """(drop_embedding, drop_image) float32 (batch,) in {0, 1} from one uniform draw per sample, as upstream's
    get_input: embedding dropped for r < 2 uncond, the concat image for uncond <= r < 3 uncond."""
    if not 0.0 <= uncond <= 1.0 / 3.0:
        raise ValueError(f"uncond must be in [0, 1/3], got {uncond}")
    r = rng.random(batch)
    drop_embedding = (r < 2.0 * uncond).astype(np.float32)
    drop_image = ((r >= uncond) & (r < 3.0 * uncond)).astype(np.float32)
    return drop_embedding, drop_image


def sample_step_noise(rng: np.random.Generator, batch: int, latent_shape, num_timesteps: int,
                      uncond: float) -> dict[str, np.ndarray]:
    """The random numbers of one step after the pairs, in a fixed order: t, condition dropout, noise, fs_noise
    (the first stage's posterior noise; unused in pixel space but drawn, so the stream does not depend on it)."""
    t = rng.integers(0, num_timesteps, batch).astype(np.int32)
    drop_embedding, drop_image = condition_dropout(rng, batch, uncond)
    noise = rng.standard_normal((batch,) + tuple(latent_shape), dtype=np.float32)
    fs_noise = rng.standard_normal((batch,) + tuple(latent_shape), dtype=np.float32)
    return {"t": t, "drop_embedding": drop_embedding, "drop_image": drop_image, "noise": noise,
            "fs_noise": fs_noise}


def pair_T(elevation: np.ndarray, azimuth: np.ndarray, distance: np.ndarray, objects, cond, target) -> np.ndarray:
    """(B, 4) float32 T of each target view relative to its condition view; per-view camera arrays (N, V) in
    degrees, degrees and scene units (a primitives dataset's elevation / azimuth / distance)."""
    return relative_camera_T(elevation[objects, target], azimuth[objects, target], distance[objects, target],
                             elevation[objects, cond], azimuth[objects, cond], distance[objects, cond])


def on_white(images_u8: np.ndarray, masks_u8: np.ndarray, background) -> np.ndarray:
    """Renders over a solid `background` (3,) in [0, 1] -> the same over white (upstream composites its RGBA renders
    over white), uint8. Exact up to rounding: a render is albedo-shaded colour x alpha + (1 - alpha) x background."""
    bg = np.asarray(background, np.float64).reshape(3)
    if np.all(bg == 1.0):
        return images_u8
    alpha = masks_u8.astype(np.float64)[..., None] / 255.0
    out = images_u8.astype(np.float64) + (1.0 - alpha) * (1.0 - bg) * 255.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def images_to_model(images_u8: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]."""
    x = images_u8.astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def images_from_model(x: np.ndarray) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), as LDM's samplers save images."""
    x = np.clip((np.asarray(x, np.float32) + 1.0) * 0.5, 0.0, 1.0)
    return np.round(x.transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)
