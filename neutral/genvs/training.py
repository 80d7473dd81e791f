"""The host half of one GeNVS training step (jfozard/genvs_unofficial genvs_model.py NerfDiffDLV3.forward,
k_pipeline.py KPipeline.train_step): a data-module batch (neutral/genvs/srn_dataset.py) plus every random number
of the step, as the float32 arrays the loss cells of mindspore_impl/genvs/training.py and torch_ref/genvs/training.py
take, in STEP_INPUTS order. Framework-neutral (numpy), so both trees see the same numbers.

One step, as upstream:
- every source slot is encoded (B*N images, Gaussian input noise on half of them: model_config.draw_input_noise);
  slots beyond this step's number of source views are masked out of the field's mean (src_valid);
- the target view is rendered at half resolution (upstream: 64 x 64 for 128 x 128 images), and so is source
  view 0 when `render_source` (upstream renders [source 0, target] together, Q = 2);
- losses: the EDM denoising loss on the target, conditioned on the nearest-x2 upsampled feature render, replaced
  by uniform noise with p 0.1; an RGB MSE of the render's first 3 channels (target 1.0, source 0 0.01); opacity
  0.001 mean(o); depth 1.0 mean(o (d / (o + 1e-6) - camera_d)^2) over the rendered views.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from neutral.genvs.edm import draw_cond_dropout, sample_training_sigmas
from neutral.genvs.model_config import draw_input_noise

LOSS_TERMS = ("diffusion", "rgb_target", "rgb_source", "opacity", "depth")
# upstream's weights (config/config_mid_noise.yaml nerf_diff; genvs_model.py defaults for lambda_depth, which no
# config overrides); lambda_rgb_source is upstream's lambda_rgb_first (0.0 in its high- and low-noise configs)
DEFAULT_LOSS_WEIGHTS = {"lambda_diffusion": 1.0, "lambda_rgb_target": 1.0, "lambda_rgb_source": 0.01,
                        "lambda_opacity": 0.001, "lambda_depth": 1.0}
DEPTH_EPS = 1e-6  # genvs_model.py: d1 / (o1 + 1e-6)

STEP_INPUTS = (
    "src_images",         # (B, N, 3, H, W) source views in [-1, 1]
    "src_noise",          # (B, N, 3, H, W) encoder input noise
    "src_c2w",            # (B, N, 4, 4)
    "src_intrinsics",     # (B, N, 4) [fx, fy, cx, cy] in pixels of the image (= of the volume)
    "src_valid",          # (B, N) 1 for the source slots in use this step
    "render_c2w",         # (B, Q, 4, 4) the rendered cameras: the target, then source 0 when render_source
    "render_intrinsics",  # (B, Q, 4) in pixels of the half-resolution render
    "ray_u",              # (B, Q * h * w, n_samples + n_importance) the renderer's uniforms
    "render_rgb",         # (B, Q, 3, h, w) the rendered views' images in [0, 1], 2 x 2 box-averaged
    "render_distance",    # (B, Q) the rendered cameras' distance to the origin (the depth term's camera_d)
    "tgt_image",          # (B, 3, H, W) the target in [-1, 1], what the denoiser learns
    "sigma",              # (B,) training noise levels
    "noise",              # (B, 3, H, W) N(0, I)
    "drop_mask",          # (B,) 1 where the conditioning is replaced by noise
    "drop_noise",         # (B, F, H, W) uniform [0, 1) replacement conditioning
    "loss_weights",       # (len(LOSS_TERMS),) lambda of each term, in LOSS_TERMS order
)


def loss_weight_vector(weights: Mapping[str, float]) -> np.ndarray:
    """{lambda_<term>: value} -> float32 (len(LOSS_TERMS),) in LOSS_TERMS order (missing terms: 0)."""
    return np.array([float(weights.get(f"lambda_{t}", 0.0)) for t in LOSS_TERMS], np.float32)


def box_down2(images: np.ndarray) -> np.ndarray:
    """(..., H, W, C) averaged over 2 x 2 blocks -> (..., H/2, W/2, C). The MSE of a render against it has the
    same gradient as upstream's MSE of the nearest-x2 upsampled render against the full-size image."""
    *lead, h, w, c = images.shape
    return images.reshape(*lead, h // 2, 2, w // 2, 2, c).mean(axis=(-4, -2))


def batch_intrinsics(batch: Mapping[str, Any], scale: float = 1.0) -> np.ndarray:
    """(B, 4) [fx, fy, cx, cy] from the batch's focal, cx, cy (square pixels), times scale."""
    f = np.asarray(batch["focal"], np.float64)
    k = np.stack([f, f, np.asarray(batch["cx"], np.float64), np.asarray(batch["cy"], np.float64)], -1)
    return (k * scale).astype(np.float32)


def to_signed_chw(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) in [0, 1] -> (..., 3, H, W) in [-1, 1]."""
    x = np.asarray(rgb, np.float32) * 2.0 - 1.0
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def step_arrays(batch: Mapping[str, Any], rng: np.random.Generator, *, n_uniforms: int, cond_channels: int,
                render_source: bool = True, loss_weights: Mapping[str, float] = DEFAULT_LOSS_WEIGHTS,
                sigma_p_mean: float = 0.5, sigma_p_std: float = 1.4, sigma_min: float = 0.03,
                sigma_max: float = 50.0, cond_drop_prob: float = 0.1) -> Dict[str, np.ndarray]:
    """The inputs of one step: the batch's arrays rearranged, then the random draws from `rng` in this order:
    encoder input noise, ray uniforms, sigmas, diffusion noise, conditioning dropout (mask, then noise)."""
    src_rgb = np.asarray(batch["src_rgb"], np.float32)
    b, n, h, w, _ = src_rgb.shape
    tgt_rgb = np.asarray(batch["tgt_rgb"], np.float32)
    k_full = batch_intrinsics(batch)
    valid = batch.get("src_valid")
    valid = np.ones((b, n), np.float32) if valid is None else np.asarray(valid, np.float32)
    src_c2w = np.asarray(batch["src_c2w"], np.float32)
    tgt_c2w = np.asarray(batch["tgt_c2w"], np.float32)
    render_c2w = [tgt_c2w] + ([src_c2w[:, 0]] if render_source else [])
    render_rgb = [tgt_rgb] + ([src_rgb[:, 0]] if render_source else [])
    q = len(render_c2w)
    render_c2w = np.stack(render_c2w, 1)
    out = {
        "src_images": to_signed_chw(src_rgb),
        "src_c2w": src_c2w,
        "src_intrinsics": np.ascontiguousarray(np.broadcast_to(k_full[:, None], (b, n, 4))),
        "src_valid": valid,
        "render_c2w": render_c2w,
        "render_intrinsics": np.ascontiguousarray(np.broadcast_to(0.5 * k_full[:, None], (b, q, 4))),
        "render_rgb": np.ascontiguousarray(np.moveaxis(box_down2(np.stack(render_rgb, 1)), -1, -3)),
        "render_distance": np.linalg.norm(render_c2w[:, :, :3, 3], axis=-1).astype(np.float32),
        "tgt_image": to_signed_chw(tgt_rgb),
        "loss_weights": loss_weight_vector(loss_weights),
    }
    out["src_noise"] = draw_input_noise(rng, (b * n, 3, h, w)).reshape(b, n, 3, h, w)
    out["ray_u"] = rng.random((b, q * (h // 2) * (w // 2), int(n_uniforms)), dtype=np.float32)
    out["sigma"] = sample_training_sigmas(rng, b, sigma_p_mean, sigma_p_std, sigma_min, sigma_max)
    out["noise"] = rng.standard_normal((b, 3, h, w)).astype(np.float32)
    out["drop_mask"], out["drop_noise"] = draw_cond_dropout(rng, b, (cond_channels, h, w), cond_drop_prob)
    return {k: np.ascontiguousarray(out[k], dtype=np.float32) for k in STEP_INPUTS}
