"""Framework-neutral part of the multiview diffusion guidance: config, validation, checkpoint checks,
the host-side timestep schedule and the random step inputs (numpy).

Shared by mindspore_impl/lift3d/guidance/multiview_diffusion_guidance.py and its torch_ref twin
(no MindSpore or torch import here).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from neutral.errors import UserError
from neutral.schedule import C, check_schedules

GUIDANCE_MODES = ("x0", "sds", "sjc")
CHECKPOINT_URL = "https://huggingface.co/MVDream/MVDream"
DEFAULT_MODEL_CONFIGS = {"sd-v2.1-base-4view": "configs/sd-v2-base.yaml"}


@dataclass
class Config:
    model_name: str = "sd-v2.1-base-4view"
    ckpt_path: Optional[str] = None  # converted checkpoint (python -m convert.pt2ms ...)
    config_path: Optional[str] = None  # original model YAML; default from model_name
    guidance_scale: float = 50.0
    grad_clip: Optional[Any] = None  # scheduled value, e.g. [0, 2.0, 8.0, 1000]
    half_precision_weights: bool = False  # fp16 UNet weights (norms fp32); VAE and SDS math fp32
    min_step_percent: Any = 0.02  # scheduled value, MVDream: [0, 0.98, 0.02, 8000]
    max_step_percent: Any = 0.98  # scheduled value, MVDream: [0, 0.98, 0.50, 8000]
    camera_condition_type: str = "rotation"
    view_dependent_prompting: bool = False
    n_view: int = 4
    image_size: int = 256
    recon_loss: bool = True  # upstream switch: x0 (True) or plain SDS (False)
    recon_std_rescale: float = 0.5
    guidance_mode: Optional[str] = None  # "x0" | "sds" | "sjc"; null: from recon_loss
    lora_path: Optional[str] = None  # LoRA adapters (lora.safetensors, mvdream/lora.py) folded into the UNet


class GuidanceError(UserError, ValueError):
    """A guidance config or checkpoint problem found before any work starts."""


def resolve_mode(cfg: Config) -> str:
    mode = cfg.guidance_mode if cfg.guidance_mode is not None else ("x0" if cfg.recon_loss else "sds")
    if mode not in GUIDANCE_MODES:
        raise GuidanceError(f"guidance_mode must be one of {GUIDANCE_MODES}, got {mode!r}")
    return mode


def check_config(cfg: Config) -> str:
    """Validate what does not need the checkpoint; returns the guidance mode."""
    mode = resolve_mode(cfg)
    check_schedules([cfg.min_step_percent, cfg.max_step_percent]
                    + ([cfg.grad_clip] if cfg.grad_clip is not None else []))
    if cfg.camera_condition_type != "rotation":
        raise GuidanceError(f"camera_condition_type {cfg.camera_condition_type!r} is not supported "
                            "(MVDream checkpoints use 'rotation')")
    if cfg.n_view < 1:
        raise GuidanceError(f"n_view must be >= 1, got {cfg.n_view}")
    if not 0.0 <= cfg.recon_std_rescale <= 1.0:
        raise GuidanceError(f"recon_std_rescale must be in [0, 1], got {cfg.recon_std_rescale}")
    return mode


def unet_precision(half_precision_weights: bool, unet_params: Optional[dict] = None) -> tuple[str, str]:
    """(dtype, the setting that chose it) of the frozen UNet the guidance builds: float16 with
    half_precision_weights, else what the model YAML's unet_config.params ask (use_bf16 / use_fp16, as
    mindspore_impl/lift3d/guidance/multiview_diffusion_guidance.py load_frozen_models builds it), else float32.
    The device check of that dtype is mindspore_impl/core/device.py check_precision (the system calls both).
    GuidanceError when two settings ask for different half precisions (the UNet cannot be both: building it
    would fail inside the model code)."""
    params = unet_params or {}
    if params.get("use_fp16") and params.get("use_bf16"):
        raise GuidanceError("the model config sets both unet_config.params.use_fp16 and use_bf16; keep one")
    if half_precision_weights:
        if params.get("use_bf16"):
            raise GuidanceError("half_precision_weights=true (float16 UNet weights) conflicts with use_bf16: true "
                                "in the model config's unet_config.params; set half_precision_weights=false to "
                                "run bfloat16, or drop use_bf16 to run float16")
        return "float16", "half_precision_weights=true"
    if params.get("use_bf16"):
        return "bfloat16", "use_bf16: true in the model config (unet_config.params)"
    if params.get("use_fp16"):
        return "float16", "use_fp16: true in the model config (unet_config.params)"
    return "float32", "half_precision_weights=false"


# models whose checkpoint does not come from the hub: (where it normally lives, how to get it there)
LOCAL_CHECKPOINTS = {
    "tiny-mvdream": ("pretrained/tiny-mvdream/tiny-mvdream.ckpt",
                     "make it (random tiny weights, a few seconds) with: python scripts/make_tiny_checkpoint.py"
                     " --out {folder}"
                     " (it writes {dst})"),
    "demo-mvdream": ("pretrained/demo/model.ckpt",
                     "it ships with the repository: restore it with git checkout -- pretrained/demo/model.ckpt"
                     " (or retrain it: python launch.py --config configs/demo-mvdiffusion.yaml --train,"
                     " then cp outputs/demo-mvdiffusion/<trial>/save/it3000-export/model.ckpt {dst})"),
}


def missing_checkpoint_message(path: Optional[str], model_name: str) -> str:
    """One line: which checkpoint is missing and how to get it for this model (download + convert for the
    real MVDream models, make_tiny_checkpoint for the tiny test model, the shipped file for the demo model)."""
    if model_name in LOCAL_CHECKPOINTS:
        default, how = LOCAL_CHECKPOINTS[model_name]
        dst = path or default
        if model_name == "tiny-mvdream":  # the script names its file itself
            dst = os.path.join(os.path.dirname(dst), os.path.basename(default))
        where = f"the {model_name} checkpoint {path!r} does not exist" if path else \
            f"no {model_name} checkpoint given (system.guidance.ckpt_path is null)"
        return (f"{where}; {how.format(dst=dst, folder=os.path.dirname(dst) or '.')}, "
                f"then set system.guidance.ckpt_path={dst}")
    src = f"{model_name}.pt"
    dst = path or f"pretrained/{model_name}.ckpt"
    cfg = DEFAULT_MODEL_CONFIGS.get(model_name, "configs/sd-v2-base.yaml")
    where = f"the MVDream checkpoint {path!r} does not exist" if path else \
        "no MVDream checkpoint given (system.guidance.ckpt_path is null)"
    return (f"{where}; download the original {src} (about 5 GB) from {CHECKPOINT_URL} and convert it with: "
            f"python -m convert.pt2ms --src {src} --dst {dst} --config {cfg}, "
            f"then set system.guidance.ckpt_path={dst}")


def check_checkpoint(cfg: Config) -> tuple[str, str]:
    """(ckpt_path, config_path) after checking both files exist; clear error otherwise."""
    if not cfg.ckpt_path or not os.path.isfile(cfg.ckpt_path):
        raise GuidanceError(missing_checkpoint_message(cfg.ckpt_path, cfg.model_name))
    config_path = cfg.config_path or DEFAULT_MODEL_CONFIGS.get(cfg.model_name)
    if config_path is None:
        raise GuidanceError(f"no config_path given and no default config for model_name {cfg.model_name!r} "
                            f"(known: {sorted(DEFAULT_MODEL_CONFIGS)})")
    if not os.path.isfile(config_path):
        raise GuidanceError(f"the model config {config_path!r} does not exist (the original YAML the "
                            f"checkpoint was trained with, e.g. configs/sd-v2-base.yaml)")
    if cfg.lora_path is not None and not os.path.isfile(cfg.lora_path):
        raise GuidanceError(f"lora_path {cfg.lora_path!r} does not exist (a LoRA run's export "
                            f"<trial>/save/it<N>-export/lora.safetensors)")
    return cfg.ckpt_path, config_path


def step_range(cfg: Config, num_train_timesteps: int, global_step: int) -> tuple[int, int]:
    """(min_step, max_step) for this step, as threestudio's set_min_max_steps."""
    min_pct = C(cfg.min_step_percent, global_step)
    max_pct = C(cfg.max_step_percent, global_step)
    return int(num_train_timesteps * min_pct), int(num_train_timesteps * max_pct)


class GuidanceSchedule:
    """The host-side state of a guidance: step range and grad clip for the current global step."""

    def __init__(self, cfg: Config, num_train_timesteps: int):
        self.cfg = cfg
        self.num_train_timesteps = num_train_timesteps
        self.update(0)

    def update(self, global_step: int) -> None:
        self.global_step = int(global_step)
        self.min_step, self.max_step = step_range(self.cfg, self.num_train_timesteps, global_step)
        if not 0 <= self.min_step <= self.max_step < self.num_train_timesteps:
            raise GuidanceError(f"bad timestep range [{self.min_step}, {self.max_step}] at step {global_step} "
                                f"(num_train_timesteps {self.num_train_timesteps})")
        self.grad_clip_val = (None if self.cfg.grad_clip is None
                              else float(C(self.cfg.grad_clip, global_step)))

    def sample_timestep(self, rng: np.random.Generator) -> np.ndarray:
        """One timestep for the whole batch, uniform on [min_step, max_step]: int32 array (1,)."""
        return np.array([rng.integers(self.min_step, self.max_step + 1)], dtype=np.int32)


def sample_inputs(schedule: GuidanceSchedule, rng: np.random.Generator, batch_size: int,
                  latent_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The random inputs of one guidance step from an explicit Generator (same numbers for both frameworks)."""
    t = schedule.sample_timestep(rng)
    noise = rng.standard_normal((batch_size,) + tuple(latent_shape)).astype(np.float32)
    vae_noise = rng.standard_normal((batch_size,) + tuple(latent_shape)).astype(np.float32)
    return {"t": t, "noise": noise, "vae_noise": vae_noise}
