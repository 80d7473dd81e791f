"""The one loader of MVDream models: build the UNet, the first stage and the text encoder from the model
YAML's `model.params`, and load a converted checkpoint (.ckpt / .safetensors, MindSpore names) strictly.

    from neutral.mvdream.model_config import load_model_config
    params = load_model_config("configs/sd-v2-base.yaml")
    models = load_models("mvdream-sd21.ckpt", params, ("unet", "vae"))   # {"unet": cell, "vae": cell}

The checkpoint layout (a key prefix and a YAML entry per sub-model) is neutral/mvdream/checkpoint_layout.py.
"vae" is the `first_stage_config` model: AutoencoderKL, or the weightless pixel-space stage
(first_stage.py). Used by the text-to-image pipeline (pipeline.py), the SDS guidance and the prompt processor
(mindspore_impl/lift3d/guidance/multiview_diffusion_guidance.py: load_frozen_models).

Errors: a missing checkpoint is a MissingFileError that says where to download the original weights and how to
convert them (CHECKPOINT_HINT); a file of another format, keys outside the three prefixes, a missing or
unexpected key or a wrong shape under a prefix raise CheckpointError (one line, every offending key).
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Optional

import numpy as np
from mindspore import nn

from mindspore_impl.core.checkpoint import CheckpointError, load_state_dict, read_params
from neutral.config import ConfigError
from neutral.errors import MissingFileError
from neutral.mvdream.checkpoint_layout import NAMES, keys_outside, part

CHECKPOINT_HINT = (
    "Get the original weights sd-v2.1-base-4view.pt from https://huggingface.co/MVDream/MVDream and "
    "convert them once: python -m convert.pt2ms --src sd-v2.1-base-4view.pt --dst mvdream-sd21.ckpt "
    "(or --dst mvdream-sd21.safetensors).")
CHECKPOINT_EXTENSIONS = (".ckpt", ".safetensors")
_LABELS = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}  # for error messages


def _entry(model_params: dict, name: str) -> dict:
    key = part(name).config_key
    if key not in model_params:
        raise ConfigError(f"the model config has no '{key}' entry for the {_LABELS[name]}")
    return model_params[key]


def build_model(model_params: dict, name: str, use_fp16: Optional[bool] = None) -> nn.Cell:
    """One sub-model (unet, vae, text_encoder) with fresh weights from the YAML's `model.params`.

    use_fp16 (UNet only): True/False overrides the YAML's `unet_config.params.use_fp16` (Dense/Conv weights
    float16, norms and softmax float32, float32 output); None keeps the YAML's value."""
    from mindspore_impl.mvdream import first_stage, text_encoder, unet
    entry = _entry(model_params, name)
    if name == "vae":  # the whole entry: its target picks AutoencoderKL or the pixel-space identity stage
        return first_stage.build_first_stage(dict(entry))
    params = dict(entry.get("params") or {})
    if name == "unet":
        if use_fp16 is not None:
            params["use_fp16"] = bool(use_fp16)
        return unet.build_from_config(params)
    return text_encoder.build_from_config(params)


def build_models(model_params: dict, names: Iterable[str] = NAMES,
                 use_fp16: Optional[bool] = None) -> dict[str, nn.Cell]:
    """{name: cell} with fresh (random) weights for each of `names`; use_fp16 as in build_model."""
    return {name: build_model(model_params, name, use_fp16) for name in names}


def check_checkpoint_file(ckpt_path: Optional[str]) -> None:
    """MissingFileError (with the download + convert hint) unless `ckpt_path` is a file; CheckpointError
    unless it is a converted checkpoint (.ckpt / .safetensors), e.g. the original .pt."""
    if not ckpt_path or not os.path.isfile(ckpt_path):
        raise MissingFileError(f"MVDream checkpoint not found: {ckpt_path!r}. {CHECKPOINT_HINT}")
    if not ckpt_path.endswith(CHECKPOINT_EXTENSIONS):
        raise CheckpointError(f"{ckpt_path}: expected a converted .ckpt or .safetensors file. {CHECKPOINT_HINT}")


def load_weights(models: Mapping[str, nn.Cell], state: Mapping[str, np.ndarray], source: str) -> None:
    """Load `state` (MindSpore names under the layout's prefixes) strictly into {name: cell}.

    Every key must lie under one of the three prefixes (sub-models not in `models` may be present: the SDS
    guidance loads only the UNet and VAE of a full checkpoint), and the keys under each loaded sub-model's
    prefix must be exactly its parameters; a cell is checked whole before any value is copied into it."""
    extra = keys_outside(state)
    if extra:
        raise CheckpointError(f"{source}: keys outside the UNet/VAE/text encoder: {extra[:10]}")
    for name, cell in models.items():
        prefix = part(name).prefix
        # strict: raises, naming every key, before any value is copied into this cell
        load_state_dict(cell, state, prefix, strict=True, what=f"{source} ({_LABELS[name]}, prefix '{prefix}')")


def load_models(ckpt_path: str, model_params: dict, names: Iterable[str] = NAMES,
                use_fp16: Optional[bool] = None) -> dict[str, nn.Cell]:
    """Build `names` from `model_params` and load them strictly from the converted checkpoint at `ckpt_path`;
    the cells come back in eval mode. use_fp16 as in build_model."""
    check_checkpoint_file(ckpt_path)
    models = build_models(model_params, names, use_fp16)
    load_weights(models, read_params(ckpt_path), ckpt_path)
    for cell in models.values():
        cell.set_train(False)
    return models
