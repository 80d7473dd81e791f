"""Tiny MVDream models with random weights for sampler / sliding-window / t2i tests.

The torch_ref model gets random weights (also its zero-initialised output conv, so eps is not 0),
is saved under the original key prefixes, converted with convert.pt2ms and loaded strictly into
the MindSpore twin.
"""
from __future__ import annotations

import os

import torch

from convert.pt2ms import convert_state_dict
from neutral.mvdream.checkpoint_layout import CONFIG_KEYS, PREFIXES
from neutral.mvdream.model_config import load_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "tiny-mvdream.yaml")


def tiny_params() -> dict:
    return load_model_config(TINY_CONFIG)


def randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise * (0.5 / max(1, p[0].numel() if p.dim() else 1) ** 0.5))


def torch_state(parts=("unet",), seed: int = 0, model_params: dict | None = None) -> dict:
    """(original-layout state dict (numpy), {part: module}) of random torch_ref sub-models. The modules are on
    the CPU; a parity test moves them to the run's torch device (tests/parity.py torch_module)."""
    from torch_ref.mvdream import text_encoder, unet, vae
    mp = model_params or tiny_params()
    builders = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    state, modules = {}, {}
    for i, part in enumerate(parts):
        m = builders[part].build_from_config(dict(mp[CONFIG_KEYS[part]]["params"])).eval()
        randomize(m, seed + i)
        modules[part] = m
        state.update({PREFIXES[part] + k: v.detach().cpu().numpy() for k, v in m.state_dict().items()})
    return state, modules


def tiny_unet_pair(seed: int = 0):
    """(MindSpore UNet, torch UNet on the CPU, context_dim) with the same random weights."""
    from mindspore_impl.core.checkpoint import load_state_dict
    from mindspore_impl.mvdream import unet as ms_unet
    mp = tiny_params()
    state, modules = torch_state(("unet",), seed, mp)
    converted = convert_state_dict(state, mp, parts=["unet"], log=lambda *_: None)
    params = dict(mp["unet_config"]["params"])
    m = ms_unet.build_from_config(params)
    load_state_dict(m, converted, prefix=PREFIXES["unet"], strict=True)
    m.set_train(False)
    return m, modules["unet"], int(params["context_dim"])


def tiny_ms_unet(seed: int = 0):
    return tiny_unet_pair(seed)[0]


def write_tiny_checkpoint(path: str, seed: int = 0) -> dict:
    """A converted (MindSpore-named) tiny checkpoint with UNet + VAE + text encoder; returns it."""
    from mindspore_impl.core.checkpoint import save_params
    mp = tiny_params()
    state, _ = torch_state(("unet", "vae", "text_encoder"), seed, mp)
    converted = convert_state_dict(state, mp, log=lambda *_: None)
    save_params(converted, path)
    return converted


