"""Explicit key maps between the original PyTorch checkpoint and the MindSpore models.

An original MVDream checkpoint is one state dict whose keys carry a prefix per sub-model; the prefixes and
the config entries that build the sub-models are defined once, in neutral/mvdream/checkpoint_layout.py.
Each `Submodel` names its prefix, the config entry that builds it, the torch_ref builder
(used on the meta device to know every expected key and shape) and its renaming rules.
A rule is (regex over the torch name after the prefix, replacement giving the MindSpore name);
the first rule whose regex matches the whole name wins; names no rule matches stay as they are
(nn.Dense / nn.Conv2d weights and biases are named alike in both frameworks).
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

from neutral.mvdream import checkpoint_layout as layout


@dataclass(frozen=True)
class Submodel:
    name: str
    prefix: str
    config_key: str
    builder: str  # "module:function", called with the config entry's `params` as a dict
    rules: tuple[tuple[str, str], ...]
    # config `target` -> builder used instead of `builder` (e.g. the pixel-space identity first stage)
    targets: tuple[tuple[str, str], ...] = ()


def _layout_fields(part: layout.Part) -> dict:
    """name / prefix / config_key of a sub-model of the checkpoint layout (never spelled here)."""
    return {"name": part.name, "prefix": part.prefix, "config_key": part.config_key}


# GroupNorm / LayerNorm affine parameters are weight/bias in torch and gamma/beta in MindSpore.
def _norm_rules(norm_names: str) -> tuple[tuple[str, str], ...]:
    return ((rf"(.*\.)?({norm_names})\.weight", r"\1\2.gamma"),
            (rf"(.*\.)?({norm_names})\.bias", r"\1\2.beta"))


# openaimodel UNet: ResBlock in_layers.0/out_layers.0 (GroupNorm), final out.0 (GroupNorm),
# SpatialTransformer norm (GroupNorm), BasicTransformerBlock norm1..3 (LayerNorm).
UNET = Submodel(
    **_layout_fields(layout.UNET),
    builder="torch_ref.mvdream.unet:build_from_config",
    rules=_norm_rules(r"in_layers\.0|out_layers\.0|out\.0|norm|norm1|norm2|norm3"),
)

# LDM AutoencoderKL: ResnetBlock norm1/norm2, AttnBlock norm, Encoder/Decoder norm_out (GroupNorm).
VAE = Submodel(
    **_layout_fields(layout.VAE),
    builder="torch_ref.mvdream.vae:build_from_config",
    rules=_norm_rules(r"norm1|norm2|norm|norm_out"),
    targets=tuple((t, "torch_ref.mvdream.first_stage:build_from_config")
                  for t in ("identity", "torch.nn.Identity")),
)

# open_clip text tower: ln_1/ln_2/ln_final (LayerNorm); nn.Embedding's table is embedding_table.
TEXT_ENCODER = Submodel(
    **_layout_fields(layout.TEXT_ENCODER),
    builder="torch_ref.mvdream.text_encoder:build_from_config",
    rules=((r"token_embedding\.weight", r"token_embedding.embedding_table"),)
    + _norm_rules(r"ln_1|ln_2|ln_final"),
)

SUBMODELS: list[Submodel] = [UNET, VAE, TEXT_ENCODER]

# LatentDiffusion registers its noise schedule as buffers; they are recomputed from the config.
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "scale_factor",
})


def register_submodel(sub: Submodel) -> None:
    """Add a sub-model key map (VAE, text encoder, ...)."""
    if any(s.name == sub.name or s.prefix == sub.prefix for s in SUBMODELS):
        raise ValueError(f"submodel {sub.name} / prefix {sub.prefix} already registered")
    SUBMODELS.append(sub)


def ms_name(sub: Submodel, torch_name: str) -> str:
    for pattern, repl in sub.rules:
        m = re.fullmatch(pattern, torch_name)
        if m:
            return m.expand(repl)
    return torch_name


def build_torch(sub: Submodel, model_params: dict, device: str = "cpu"):
    """Build the torch_ref twin of `sub` from the original config (meta device: no memory)."""
    import torch
    if sub.config_key not in model_params:
        raise ValueError(f"the config has no '{sub.config_key}' for the {sub.name}")
    entry = model_params[sub.config_key]
    mod_name, fn_name = dict(sub.targets).get(str(entry.get("target", "")), sub.builder).split(":")
    builder = getattr(importlib.import_module(mod_name), fn_name)
    with torch.device(device):
        return builder(dict(entry.get("params") or {}))


def expected_torch_shapes(sub: Submodel, model_params: dict) -> dict[str, tuple]:
    module = build_torch(sub, model_params, device="meta")
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def name_map(sub: Submodel, torch_names) -> dict[str, str]:
    """torch name -> MindSpore name for every name; raises if two torch names collide."""
    mapping = {t: ms_name(sub, t) for t in torch_names}
    if len(set(mapping.values())) != len(mapping):
        seen: dict[str, str] = {}
        clashes = []
        for t, m in mapping.items():
            if m in seen:
                clashes.append(f"{seen[m]} and {t} -> {m}")
            seen[m] = t
        raise ValueError(f"key map for {sub.name} is not one-to-one: {clashes[:10]}")
    return mapping
