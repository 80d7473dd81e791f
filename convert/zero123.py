"""Convert an original Zero-1-to-3 checkpoint (105000.ckpt, zero123-xl.ckpt: a Lightning `{"state_dict": ...}`)
to MindSpore.

    python -m convert.zero123 --src zero123-xl.ckpt --dst zero123-xl-ms.ckpt
    python -m convert.zero123 --src 105000.ckpt --dst zero123-ms.safetensors --unet-weights raw

The file is read with torch.load(weights_only=True) (convert/io.py), so no code in it runs. Strict: the keys
the model built from --config expects (the UNet, VAE, CLIP image tower and cc_projection of torch_ref/zero123/
model.py, built on the meta device) must all be there with their shapes; the keys it does not use are dropped
by name, each group by one rule of neutral/zero123/checkpoint_layout.py (the EMA copy not chosen, the CLIP text
side, the noise-schedule buffers), and any other key stops the conversion, naming it. Nothing is written then.

UNet weights: upstream samples with the EMA weights (`model_ema.*`); `--unet-weights auto` (the default) takes
them when the checkpoint has them, `ema` requires them, `raw` takes `model.diffusion_model.*`. Either copy is
checked whole (keys and shapes) when present.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping

import numpy as np

from convert.io import read_torch_checkpoint
from convert.keymaps import SCHEDULE_BUFFERS, UNET, VAE, Submodel, name_map
from mindspore_impl.core.checkpoint import CheckpointError, _listing, check_state_dict, save_params
from neutral.errors import MissingFileError, report
from neutral.mvdream.model_config import load_model_config
from neutral.zero123 import checkpoint_layout as layout

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "sd-objaverse-finetune-c_concat-256.yaml")
UNET_WEIGHTS = ("auto", "ema", "raw")
ORIGINAL_WEIGHTS = ("The original weights are zero123-xl.ckpt (https://zero123.cs.columbia.edu/assets/zero123-xl.ckpt) "
                    "or 105000.ckpt (https://huggingface.co/cvlab/zero123-weights); download one and pass its path.")

# openai CLIP VisionTransformer: ln_pre / ln_1 / ln_2 / ln_post are LayerNorms (weight/bias -> gamma/beta)
IMAGE_ENCODER = Submodel(
    name=layout.IMAGE_ENCODER.name, prefix=layout.IMAGE_ENCODER.prefix, config_key="cond_stage_config",
    builder="torch_ref.zero123.clip_image_encoder:build_from_config",
    rules=((r"(.*\.)?(ln_pre|ln_1|ln_2|ln_post)\.weight", r"\1\2.gamma"),
           (r"(.*\.)?(ln_pre|ln_1|ln_2|ln_post)\.bias", r"\1\2.beta")))
# nn.Linear -> nn.Dense: same names
CC_PROJECTION = Submodel(
    name=layout.CC_PROJECTION.name, prefix=layout.CC_PROJECTION.prefix, config_key="", builder="", rules=())
# the UNet and VAE renaming rules are mvdream's (same openaimodel UNet and AutoencoderKL)
RENAMING = {layout.UNET.prefix: UNET, layout.VAE.prefix: VAE,
            layout.IMAGE_ENCODER.prefix: IMAGE_ENCODER, layout.CC_PROJECTION.prefix: CC_PROJECTION}


def expected_torch_shapes(model_params: dict) -> dict[str, tuple]:
    """Every key (original names, with prefixes) and shape the model of `model_params` has: torch_ref's Zero123
    built on the meta device (no memory)."""
    import torch

    from torch_ref.zero123.model import Zero123
    with torch.device("meta"):
        model = Zero123(model_params)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def ema_names(unet_names) -> dict[str, str]:
    """LitEma buffer name -> UNet parameter name (after the UNet prefix); raises if two names collide."""
    out: dict[str, str] = {}
    for name in unet_names:
        key = layout.ema_key(name)
        if key in out:
            raise ValueError(f"EMA names of {out[key]} and {name} collide ({key})")
        out[key] = name
    return out


def ms_names(torch_names) -> dict[str, str]:
    """Original key -> MindSpore key (prefix kept, the rest renamed by its sub-model's rules), one-to-one."""
    groups: dict[str, list[str]] = {}
    for key in torch_names:
        part = layout.part_of(key)
        if part is None:
            raise ValueError(f"{key} lies under none of the Zero123 prefixes")
        groups.setdefault(part.prefix, []).append(key[len(part.prefix):])
    out = {}
    for prefix, names in groups.items():
        for t, m in name_map(RENAMING[prefix], names).items():
            out[prefix + t] = prefix + m
    return out


def split_keys(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple]):
    """-> (model keys, EMA keys, {reason: dropped keys}, unknown keys) of an original state dict."""
    model, ema, unknown = {}, {}, []
    dropped: dict[str, list[str]] = {"noise-schedule buffers (recomputed from the config)": [],
                                     "CLIP text side (FrozenCLIPImageEmbedder uses the image tower only)": []}
    for key, arr in state.items():
        if key in expected:
            model[key] = arr
        elif key.startswith(layout.EMA_PREFIX):
            ema[key] = arr
        elif key in SCHEDULE_BUFFERS:
            dropped["noise-schedule buffers (recomputed from the config)"].append(key)
        elif layout.is_clip_text_key(key):
            dropped["CLIP text side (FrozenCLIPImageEmbedder uses the image tower only)"].append(key)
        else:
            unknown.append(key)
    return model, ema, dropped, sorted(unknown)


def convert_state_dict(state: Mapping[str, np.ndarray], model_params: dict, unet_weights: str = "auto",
                       dtype: str | None = None, log=print) -> dict[str, np.ndarray]:
    """Original Zero123 state dict (torch names) -> MindSpore-named state dict of mindspore_impl's Zero123."""
    if unet_weights not in UNET_WEIGHTS:
        raise ValueError(f"unet_weights must be one of {UNET_WEIGHTS}, got {unet_weights!r}")
    expected = expected_torch_shapes(model_params)
    model, ema, dropped, unknown = split_keys(state, expected)
    if unknown:
        raise CheckpointError("the checkpoint has keys the Zero123 layout does not know (nothing was written): "
                              + _listing("unexpected keys", unknown))
    missing_parts = [p.prefix for p in layout.PARTS if not any(k.startswith(p.prefix) for k in model)]
    if len(missing_parts) == len(layout.PARTS):
        raise CheckpointError("the checkpoint has none of the Zero123 keys (prefixes "
                              f"{', '.join(p.prefix for p in layout.PARTS)}); is it a Zero-1-to-3 checkpoint?")
    check_state_dict(expected, model, "the Zero123 checkpoint")
    unet_keys = [k for k in expected if k.startswith(layout.UNET.prefix)]
    ema_map = ema_names(k[len(layout.UNET.prefix):] for k in unet_keys)
    if ema:
        ema_expected = {e: expected[layout.UNET.prefix + n] for e, n in ema_map.items()}
        ema_expected.update({k: () for k in layout.EMA_BOOKKEEPING})
        check_state_dict(ema_expected, ema, f"the UNet's EMA weights (prefix '{layout.EMA_PREFIX}')")
    use_ema = unet_weights == "ema" or (unet_weights == "auto" and bool(ema))
    if use_ema and not ema:
        raise CheckpointError(f"the checkpoint has no EMA weights ({layout.EMA_PREFIX}*); "
                              "use --unet-weights raw to take model.diffusion_model.*")
    if use_ema:
        for e, n in ema_map.items():
            model[layout.UNET.prefix + n] = ema[e]
        dropped["UNet training weights (the EMA copy is used)"] = unet_keys
        dropped["EMA bookkeeping"] = list(layout.EMA_BOOKKEEPING)
    elif ema:
        dropped["UNet EMA weights (--unet-weights raw)"] = sorted(ema)
    out = {}
    for t_name, m_name in ms_names(expected).items():
        arr = np.asarray(model[t_name])
        if dtype is not None and np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(dtype)
        out[m_name] = arr
    log(f"converted Zero123: {len(out)} tensors, {sum(a.size for a in out.values()) / 1e6:.1f}M values, "
        f"UNet from {'the EMA weights' if use_ema else 'model.diffusion_model.*'}")
    for reason, keys in dropped.items():
        if keys:
            log(f"dropped {len(keys)} keys: {reason}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="original checkpoint (105000.ckpt, zero123-xl.ckpt; .pt/.ckpt)")
    ap.add_argument("--dst", required=True, help="output: .ckpt (MindSpore) or .safetensors (MindSpore names)")
    ap.add_argument("--config", default=DEFAULT_CONFIG,
                    help="original model YAML (default: sd-objaverse-finetune-c_concat-256, shared by both)")
    ap.add_argument("--unet-weights", choices=UNET_WEIGHTS, default="auto",
                    help="UNet from the EMA copy (ema), the training copy (raw) or EMA when present (auto)")
    ap.add_argument("--dtype", choices=["float32", "float16"], default=None,
                    help="cast floating tensors (default: keep the file's dtypes)")
    return report(_convert, ap.parse_args(argv))


def _convert(args) -> int:
    if not os.path.isfile(args.src):
        raise MissingFileError(f"Zero123 checkpoint not found: {args.src}. {ORIGINAL_WEIGHTS}")
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise CheckpointError(f"--dst {args.dst} is the source file; write the converted weights elsewhere")
    state = read_torch_checkpoint(args.src)
    out = convert_state_dict(state, load_model_config(args.config), args.unet_weights, args.dtype)
    save_params(out, args.dst)
    print(f"wrote {args.dst} ({len(out)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
