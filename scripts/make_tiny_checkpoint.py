"""A tiny MVDream checkpoint with random weights, so a fresh machine runs text-to-3D without any download.

    python scripts/make_tiny_checkpoint.py                       # -> pretrained/tiny-mvdream/
    python launch.py --config configs/tiny-sds.yaml --train system.prompt_processor.prompt="a red cube"

Builds the torch_ref UNet + VAE + OpenCLIP text tower of configs/tiny-mvdream.yaml from a fixed seed,
saves them the way the original MVDream checkpoint is laid out (one `.pt`, a key prefix per sub-model as
neutral/mvdream/checkpoint_layout.py defines them), converts that file with the project's converter
(convert.pt2ms, the same path a user takes with the real sd-v2.1-base-4view.pt) and writes small CLIP BPE
tokenizer files (vocab.json + merges.txt) the project's tokenizer loads. The weights mean nothing: this is
for plumbing, tests and timing, not for pictures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from neutral.mvdream.checkpoint_layout import PARTS as LAYOUT  # noqa: E402 (needs ROOT on sys.path)

TINY_CONFIG = os.path.join(ROOT, "configs", "tiny-mvdream.yaml")
DEFAULT_OUT = os.path.join("pretrained", "tiny-mvdream")
PT_NAME, CKPT_NAME, TOKENIZER_DIR = "tiny-mvdream.pt", "tiny-mvdream.ckpt", "tokenizer"
PARTS = tuple((p.name, p.prefix, p.config_key) for p in LAYOUT)  # (name, prefix, YAML entry) per sub-model
# a few CLIP-style merges so common prompt words become single tokens; the rest falls back to bytes
TINY_MERGES = [("a", "n"), ("t", "h"), ("th", "e</w>"), ("r", "e"), ("e", "d</w>"), ("c", "u"),
               ("cu", "b"), ("cub", "e</w>"), ("o", "r"), ("s", "e</w>")]


def _randomize_zero_tensors(module, seed: int) -> None:
    """Default init leaves the zero-initialised output convs at 0 (eps would be 0): give them values."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _init_uninitialised(module, seed: int) -> None:
    """open_clip creates positional_embedding / text_projection with torch.empty and fills them in its
    init_parameters (std 0.01 and width**-0.5); do the same, else they hold whatever memory held."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "positional_embedding":
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            elif name == "text_projection":
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[0] ** -0.5)


def build_torch_models(seed: int = 0, config_path: str = TINY_CONFIG) -> dict:
    """{name: torch_ref module} with deterministic random weights (name: unet, vae, text_encoder)."""
    import importlib

    import torch

    from neutral.mvdream.model_config import load_model_config
    params = load_model_config(config_path)
    models = {}
    for i, (name, _, key) in enumerate(PARTS):
        torch.manual_seed(seed + i)
        module = importlib.import_module(f"torch_ref.mvdream.{name}")
        m = module.build_from_config(dict(params[key]["params"])).eval()
        _init_uninitialised(m, seed + 200 + i)
        _randomize_zero_tensors(m, seed + 100 + i)
        bad = [k for k, p in m.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise RuntimeError(f"{name}: non-finite initial weights in {bad}")
        models[name] = m
    return models


def original_state_dict(models: dict) -> dict:
    """Original MVDream key layout: prefix per sub-model, torch names, numpy arrays."""
    state = {}
    for name, prefix, _ in PARTS:
        state.update({prefix + k: v.detach().numpy() for k, v in models[name].state_dict().items()})
    return state


def write_tokenizer(folder: str) -> str:
    """vocab.json + merges.txt in the HF CLIP layout: 512 byte tokens, TINY_MERGES, then the specials."""
    from neutral.mvdream.tokenizer import EOT, SOT, bytes_to_unicode
    os.makedirs(folder, exist_ok=True)
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens] + ["".join(m) for m in TINY_MERGES] + [SOT, EOT]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in TINY_MERGES) + "\n")
    return folder


def make_tiny_checkpoint(out_dir: str = DEFAULT_OUT, seed: int = 0, config_path: str = TINY_CONFIG,
                         log=print) -> dict:
    """Write <out_dir>/tiny-mvdream.pt (original layout), tiny-mvdream.ckpt (converted) and tokenizer/.

    Returns {"pt", "ckpt", "tokenizer", "config"} paths.
    """
    from convert import pt2ms
    from convert.io import write_torch_checkpoint
    os.makedirs(out_dir, exist_ok=True)
    pt_path = os.path.join(out_dir, PT_NAME)
    ckpt_path = os.path.join(out_dir, CKPT_NAME)
    write_torch_checkpoint(original_state_dict(build_torch_models(seed, config_path)), pt_path)
    # the converter's CLI, exactly what a user runs on the real checkpoint
    rc = pt2ms.main(["--src", pt_path, "--dst", ckpt_path, "--config", config_path])
    if rc != 0:
        raise RuntimeError(f"converting {pt_path} failed (exit code {rc})")
    paths = {"pt": pt_path, "ckpt": ckpt_path, "tokenizer": write_tokenizer(os.path.join(out_dir, TOKENIZER_DIR)),
             "config": config_path}
    for key, path in paths.items():
        log(f"{key}: {path}")
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=TINY_CONFIG, help="tiny model YAML (default configs/tiny-mvdream.yaml)")
    args = ap.parse_args(argv)
    make_tiny_checkpoint(args.out, args.seed, args.config)
    return 0


if __name__ == "__main__":
    from neutral.errors import run_cli
    run_cli(main)
