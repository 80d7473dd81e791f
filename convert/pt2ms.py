"""Convert an original (PyTorch) MVDream / SD checkpoint to MindSpore.

    python -m convert.pt2ms --src sd-v2.1-base-4view.pt --dst mvdream-sd21.ckpt
    python -m convert.pt2ms --src model.safetensors --dst model.safetensors   # MindSpore safetensors

Strict: every key under a known prefix must be expected by the model built from --config
with the same shape, and every expected key must be present; otherwise nothing is written and
the offending keys are listed. Keys under no known prefix stop the conversion too, unless they
are the diffusion schedule buffers (recomputed from the config) or match --ignore-prefix.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from convert.io import read_torch_checkpoint
from convert.keymaps import SCHEDULE_BUFFERS, SUBMODELS, expected_torch_shapes, name_map
from neutral.mvdream.model_config import load_model_config
from mindspore_impl.core.checkpoint import CheckpointError, _listing, check_state_dict, save_params
from neutral.errors import report

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "sd-v2-base.yaml")


def split_by_submodel(state: dict, parts, ignore_prefixes=()) -> tuple[dict, list[str], list[str]]:
    """Group keys by sub-model prefix -> ({name: {key: arr}}, skipped keys, unknown keys)."""
    groups: dict[str, dict] = {}
    skipped, unknown = [], []
    for key, arr in state.items():
        sub = next((s for s in SUBMODELS if key.startswith(s.prefix)), None)
        if sub is not None and (parts is None or sub.name in parts):
            groups.setdefault(sub.name, {})[key[len(sub.prefix):]] = arr
        elif key in SCHEDULE_BUFFERS or any(key.startswith(p) for p in ignore_prefixes) or sub is not None:
            skipped.append(key)
        else:
            unknown.append(key)
    return groups, sorted(skipped), sorted(unknown)


def convert_state_dict(state: dict[str, np.ndarray], model_params: dict, parts=None,
                       ignore_prefixes=(), dtype: str | None = None, log=print) -> dict[str, np.ndarray]:
    """Torch-named original state dict -> MindSpore-named state dict (prefixes kept)."""
    groups, skipped, unknown = split_by_submodel(state, parts, ignore_prefixes)
    if unknown:
        known = ", ".join(s.prefix for s in SUBMODELS)
        raise CheckpointError("the checkpoint has keys no key map understands (known prefixes: "
                              f"{known}); nothing was written; " + _listing("unmapped keys", unknown)
                              + "; pass --ignore-prefix PREFIX to drop them on purpose")
    if parts is not None:
        absent = [p for p in parts if p not in groups]
        if absent:
            raise CheckpointError(f"the checkpoint has no keys for: {absent}")
    if not groups:
        raise CheckpointError("the checkpoint has no keys of any known sub-model "
                              f"({', '.join(s.prefix for s in SUBMODELS)})")
    out: dict[str, np.ndarray] = {}
    for sub in SUBMODELS:
        if sub.name not in groups:
            continue
        sub_state = groups[sub.name]
        expected = expected_torch_shapes(sub, model_params)
        check_state_dict(expected, sub_state, f"the {sub.name} weights (prefix '{sub.prefix}')")
        for t_name, m_name in name_map(sub, expected).items():
            arr = sub_state[t_name]
            if dtype is not None and np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(dtype)
            out[sub.prefix + m_name] = arr
        log(f"converted {sub.name}: {len(sub_state)} tensors, "
            f"{sum(a.size for a in sub_state.values()) / 1e6:.1f}M values")
    if skipped:
        log(f"skipped {len(skipped)} keys (schedule buffers, parts not requested or --ignore-prefix): "
            f"{', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="original checkpoint: .pt/.ckpt/.pth or .safetensors")
    ap.add_argument("--dst", required=True, help="output: .ckpt (MindSpore) or .safetensors (MindSpore names)")
    ap.add_argument("--config", default=DEFAULT_CONFIG,
                    help="original model YAML that the checkpoint was trained with (default: sd-v2-base)")
    ap.add_argument("--parts", default=None,
                    help="comma list of sub-models to convert (unet,vae,text_encoder); default: all found")
    ap.add_argument("--ignore-prefix", action="append", default=[],
                    help="drop keys with this prefix on purpose (repeatable), e.g. model_ema.")
    ap.add_argument("--dtype", choices=["float32", "float16"], default=None,
                    help="cast floating tensors (default: keep the file's dtypes)")
    return report(_convert, ap.parse_args(argv))


def _convert(args) -> int:
    parts = args.parts.split(",") if args.parts else None
    state = read_torch_checkpoint(args.src)
    out = convert_state_dict(state, load_model_config(args.config), parts, args.ignore_prefix, args.dtype)
    save_params(out, args.dst)
    print(f"wrote {args.dst} ({len(out)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
