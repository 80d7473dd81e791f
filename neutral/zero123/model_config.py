"""The Zero-1-to-3 model YAML (`model.params` of upstream's LatentDiffusion config, for example
configs/sd-objaverse-finetune-c_concat-256.yaml): its schema and the sizes that tie the sub-models together.

Upstream: cvlab-columbia/zero123 zero123/configs/sd-objaverse-finetune-c_concat-256.yaml and
zero123/ldm/models/diffusion/ddpm.py (`LatentDiffusion.__init__`: `cc_projection = nn.Linear(772, 768)`, i.e.
CLIP embedding + 4 camera numbers -> the UNet's context; `DiffusionWrapper`: conditioning_key 'hybrid' concatenates
c_concat to the noisy latent along channels and feeds c_crossattn as the cross-attention context).
The first stage may also be this port's pixel-space identity (`first_stage_config: {target: identity, params:
{channels: 3, patch_size: p}}`, neutral/mvdream/first_stage.py), as in the demo model configs/demo-zero123-model.yaml:
the "latents" are then the pixel-unshuffled images and c_concat is the reference image itself.
Read with neutral/mvdream/model_config.py `load_model_config`; used by both model trees and convert/zero123.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from neutral.config import ConfigError, parse_structured
from neutral.mvdream.first_stage import is_identity, parse_identity
from neutral.mvdream.vae import parse_config as parse_vae_config
from neutral.zero123.image_encoder import parse_config as parse_image_config

T_DIM = 4  # [d_polar, sin d_az, cos d_az, d_radius] (neutral/zero123/camera.py)
BETA_SCHEDULES = ("linear", "sqrt_linear")


@dataclass
class Zero123ModelParams:
    """`model.params`; keys that only matter for training (keys of the data batch, logging, the LR schedule,
    EMA bookkeeping) are accepted so the original YAML reads as is, and ignored here."""
    linear_start: float = 0.00085
    linear_end: float = 0.012
    # LDM's DDPM argument: "linear" (SD's scaled linear, upstream zero123) or "sqrt_linear" (DDPM's true linear
    # schedule, which the pixel-space demo model uses; mindspore_impl/mvdream/schedule.py)
    beta_schedule: str = "linear"
    num_timesteps_cond: int = 1
    log_every_t: int = 200
    timesteps: int = 1000
    first_stage_key: str = "image_target"
    cond_stage_key: str = "image_cond"
    image_size: int = 32
    channels: int = 4
    cond_stage_trainable: bool = False
    conditioning_key: str = "hybrid"
    monitor: Optional[str] = None
    scale_factor: float = 0.18215
    use_ema: bool = True
    scheduler_config: Optional[Any] = None
    unet_config: Any = None
    first_stage_config: Any = None
    cond_stage_config: Any = None


@dataclass(frozen=True)
class Zero123Dims:
    latent_channels: int   # the VAE's embed_dim: channels of the noisy latent and of c_concat
    image_embed_dim: int   # CLIP image embedding (output_dim)
    context_dim: int       # UNet cross-attention width = cc_projection output
    scale_factor: float

    @property
    def cc_projection_in(self) -> int:
        return self.image_embed_dim + T_DIM


def _entry_params(params: Zero123ModelParams, key: str) -> dict:
    entry = getattr(params, key)
    if not isinstance(entry, dict):
        raise ConfigError(f"the Zero123 model config needs a '{key}' entry (target + params)")
    return dict(entry.get("params") or {})


def parse_model_params(model_params) -> tuple[Zero123ModelParams, Zero123Dims]:
    """Check `model.params` and return (the parsed params, the sizes that connect the sub-models)."""
    params = parse_structured(Zero123ModelParams, model_params, "model.params")
    if params.conditioning_key != "hybrid":
        raise ConfigError(f"Zero123 needs conditioning_key 'hybrid' (c_concat + c_crossattn), got "
                          f"{params.conditioning_key!r}")
    if params.beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"model.params.beta_schedule must be one of {BETA_SCHEDULES}, got {params.beta_schedule!r}")
    unet = _entry_params(params, "unet_config")
    arch, _ = parse_image_config(_entry_params(params, "cond_stage_config"))
    context_dim = unet.get("context_dim")
    if not isinstance(context_dim, int):
        raise ConfigError("unet_config.params.context_dim must be one int (the cc_projection width), "
                          f"got {context_dim!r}")
    latent = first_stage_channels(first_stage_entry(params))
    if unet.get("in_channels") != 2 * latent or unet.get("out_channels") != latent:
        raise ConfigError(f"unet_config.params in_channels / out_channels must be {2 * latent} / {latent} (noisy "
                          f"latent + reference latent in, eps out), got {unet.get('in_channels')} / "
                          f"{unet.get('out_channels')}")
    if params.channels != latent:
        raise ConfigError(f"model.params.channels {params.channels} differs from the VAE embed_dim {latent}")
    if unet.get("camera_dim") is not None:
        raise ConfigError("Zero123's UNet has no camera embedding (camera_dim must be unset); the camera enters via T")
    return params, Zero123Dims(latent, arch.output_dim, context_dim, float(params.scale_factor))


def first_stage_entry(params) -> dict:
    """The whole `first_stage_config` entry (target + params): an AutoencoderKL, or `target: identity` for pixel
    space (neutral/mvdream/first_stage.py; the demo model configs/demo-zero123-model.yaml)."""
    if not isinstance(params, Zero123ModelParams):
        params, _ = parse_model_params(params)
    entry = params.first_stage_config
    if not isinstance(entry, dict):
        raise ConfigError("the Zero123 model config needs a 'first_stage_config' entry (target + params)")
    return dict(entry)


def first_stage_channels(entry: dict) -> int:
    """Channels of the latents (and of c_concat): the VAE's embed_dim, or C p^2 of the pixel-unshuffled images."""
    params = dict(entry.get("params") or {})
    if is_identity(entry):
        try:
            cfg = parse_identity(params)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cfg.channels * cfg.patch_size ** 2
    return parse_vae_config(params).embed_dim


def submodel_params(model_params, key: str) -> dict:
    """`params` of one sub-model entry (unet_config, first_stage_config, cond_stage_config)."""
    params, _ = parse_model_params(model_params)
    return _entry_params(params, key)
