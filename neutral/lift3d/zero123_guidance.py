"""Framework-neutral part of the Zero-1-to-3 guidance ("zero123-guidance"): config, checks, the reference image as
the model sees it, the relative cameras, and the host-side random inputs of one step (numpy).

Shared by mindspore_impl/lift3d/guidance/zero123_guidance.py and its torch_ref twin (no MindSpore or torch here).
Config names and defaults are threestudio's (threestudio/models/guidance/zero123_guidance.py upstream), except:
- `pretrained_model_name_or_path` is the CONVERTED checkpoint (python -m convert.zero123), not the Lightning .ckpt;
- `guidance_mode` "sjc" switches SDS to score Jacobian chaining (the MVDream guidance's SJC path);
- `cond_background_color` keys an RGB reference image (as data.background_color); `image_size` (default: the
  first stage's ddconfig resolution, 256 for zero123) replaces upstream's hard-coded 256;
- `vram_O` and `max_items_eval` are accepted so upstream configs parse; they change nothing here (the decoder is
  loaded but never run, and guidance_eval images are not rendered).
Timesteps: one per view, uniform on [min_step, max_step] (upstream `torch.randint(..., [batch_size])`), the range
annealed by the scheduled min/max_step_percent (GuidanceSchedule of the MVDream guidance).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np

from neutral.lift3d.multiview_diffusion_guidance import GuidanceError, GuidanceSchedule
from neutral.lift3d.single_image_datamodule import (check_background_color, over_white, read_reference_image,
                                                    resize_rgba)
from neutral.schedule import check_schedules
from neutral.zero123.camera import relative_camera_T

GUIDANCE_MODES = ("sds", "sjc")
DEFAULT_MODEL_CONFIG = "configs/sd-objaverse-finetune-c_concat-256.yaml"
DEMO_CHECKPOINT = "pretrained/demo-zero123/model.ckpt"  # the shipped demo model (configs/demo-image-to-3d.yaml)


@dataclass
class Config:
    pretrained_model_name_or_path: Optional[str] = None  # converted checkpoint (.ckpt / .safetensors)
    pretrained_config: str = DEFAULT_MODEL_CONFIG  # the original model YAML
    vram_O: bool = True
    cond_image_path: str = ""
    cond_elevation_deg: float = 0.0
    cond_azimuth_deg: float = 0.0
    cond_camera_distance: float = 1.2
    cond_background_color: Optional[List[float]] = None
    cond_background_tolerance: float = 0.02
    guidance_scale: float = 5.0
    grad_clip: Optional[Any] = None  # scheduled value, e.g. [0, 2.0, 8.0, 1000]
    half_precision_weights: bool = False  # fp16 UNet weights (norms fp32); VAE, CLIP and the SDS math fp32
    min_step_percent: Any = 0.02  # scheduled value; threestudio zero123.yaml: [0, 0.4, 0.2, 200]
    max_step_percent: Any = 0.98  # scheduled value; threestudio zero123.yaml: [0, 0.85, 0.5, 200]
    max_items_eval: int = 4
    guidance_mode: str = "sds"  # "sds" | "sjc"
    image_size: Optional[int] = None


def check_config(cfg: Config) -> str:
    """Everything that needs no file; returns the guidance mode."""
    if cfg.guidance_mode not in GUIDANCE_MODES:
        raise GuidanceError(f"zero123-guidance: guidance_mode must be one of {GUIDANCE_MODES}, "
                            f"got {cfg.guidance_mode!r}")
    clip = [cfg.grad_clip] if cfg.grad_clip is not None else []
    check_schedules([cfg.min_step_percent, cfg.max_step_percent] + clip)
    if not cfg.cond_camera_distance > 0:
        raise GuidanceError(f"zero123-guidance: cond_camera_distance must be > 0, got {cfg.cond_camera_distance}")
    if cfg.image_size is not None and cfg.image_size < 8:
        raise GuidanceError(f"zero123-guidance: image_size must be >= 8, got {cfg.image_size}")
    check_background_color(cfg.cond_background_color, "system.guidance.cond_background_color")
    return cfg.guidance_mode


def missing_checkpoint_message(ckpt: Optional[str]) -> str:
    """One line: which Zero123 checkpoint is missing and how to get it (the shipped demo model: git checkout or
    retrain; otherwise: convert the original zero123-xl.ckpt)."""
    where = (f"the Zero123 checkpoint {ckpt!r} does not exist" if ckpt else
             "no Zero123 checkpoint given (system.guidance.pretrained_model_name_or_path is null)")
    if ckpt and os.path.normpath(ckpt).endswith(os.path.normpath(DEMO_CHECKPOINT)):
        return (f"{where}; it ships with the repository: restore it with git checkout -- {DEMO_CHECKPOINT} (or "
                "retrain it: python launch.py --config configs/demo-zero123-training.yaml --train, then cp "
                f"outputs/demo-zero123-training/<trial>/save/it4000-export/model.ckpt {ckpt})")
    return (f"{where}; convert the original zero123-xl.ckpt (https://zero123.cs.columbia.edu/assets/zero123-xl.ckpt) "
            "once with: python -m convert.zero123 --src zero123-xl.ckpt --dst zero123-xl-ms.ckpt, then set "
            "system.guidance.pretrained_model_name_or_path")


def check_files(cfg: Config) -> tuple[str, str]:
    """(checkpoint, model YAML) after checking both exist and the reference image reads (one-line errors)."""
    from neutral.errors import MissingFileError
    ckpt = cfg.pretrained_model_name_or_path
    if not ckpt or not os.path.isfile(ckpt):
        raise MissingFileError(missing_checkpoint_message(ckpt))
    if not os.path.isfile(cfg.pretrained_config):
        raise MissingFileError(f"the Zero123 model config {cfg.pretrained_config!r} does not exist (the original "
                               f"YAML, e.g. {DEFAULT_MODEL_CONFIG})")
    read_reference_image(cfg.cond_image_path, cfg.cond_background_color, cfg.cond_background_tolerance)
    return ckpt, cfg.pretrained_config


def default_image_size(model_params: dict) -> int:
    """The first stage's training resolution (zero123: 256), the size the guidance resizes renders to."""
    fs = (model_params.get("first_stage_config") or {}).get("params") or {}
    return int((fs.get("ddconfig") or {}).get("resolution", 256))


def reference_image(cfg: Config, size: int) -> np.ndarray:
    """The reference image as upstream's prepare_embeddings makes it: RGBA resized by area to size x size, then
    composited over white; (size, size, 3) float32 in [0, 1]."""
    rgb, alpha = read_reference_image(cfg.cond_image_path, cfg.cond_background_color, cfg.cond_background_tolerance)
    rgb, alpha = resize_rgba(rgb, alpha, size, size)
    return over_white(rgb, alpha)


def camera_T(cfg: Config, elevation, azimuth, distance) -> np.ndarray:
    """(B, 4) float32 T of the views relative to the reference camera (neutral/zero123/camera.py)."""
    return relative_camera_T(elevation, azimuth, distance, cfg.cond_elevation_deg, cfg.cond_azimuth_deg,
                             cfg.cond_camera_distance)


def sample_timesteps(schedule: GuidanceSchedule, rng: np.random.Generator, batch_size: int) -> np.ndarray:
    """One timestep per view, uniform on [min_step, max_step]: int32 (B,)."""
    return rng.integers(schedule.min_step, schedule.max_step + 1, size=batch_size).astype(np.int32)


def sample_inputs(schedule: GuidanceSchedule, rng: np.random.Generator, batch_size: int,
                  latent_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The random inputs of one step from an explicit Generator, in a fixed order: t (B,), noise, vae_noise."""
    t = sample_timesteps(schedule, rng, batch_size)
    noise = rng.standard_normal((batch_size,) + tuple(latent_shape)).astype(np.float32)
    vae_noise = rng.standard_normal((batch_size,) + tuple(latent_shape)).astype(np.float32)
    return {"t": t, "noise": noise, "vae_noise": vae_noise}
