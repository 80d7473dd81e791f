"""Convert a MindSpore checkpoint written by convert.pt2ms (or by training) back to the original layout.

    python -m convert.ms2pt --src mvdream-sd21.ckpt --dst sd-v2.1-base-4view.pt

The inverse of pt2ms's key maps; strict in the same way. pt -> ckpt -> pt is bit-exact.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from convert.io import write_torch_checkpoint
from convert.keymaps import SUBMODELS, expected_torch_shapes, name_map
from neutral.mvdream.model_config import load_model_config
from convert.pt2ms import DEFAULT_CONFIG
from mindspore_impl.core.checkpoint import CheckpointError, _listing, check_state_dict, read_params
from neutral.errors import report


def revert_state_dict(state: dict[str, np.ndarray], model_params: dict, log=print) -> dict[str, np.ndarray]:
    """MindSpore-named state dict (with sub-model prefixes) -> original torch-named state dict."""
    out: dict[str, np.ndarray] = {}
    claimed: set[str] = set()
    for sub in SUBMODELS:
        sub_state = {k[len(sub.prefix):]: v for k, v in state.items() if k.startswith(sub.prefix)}
        if not sub_state:
            continue
        claimed.update(sub.prefix + k for k in sub_state)
        expected = expected_torch_shapes(sub, model_params)
        mapping = name_map(sub, expected)
        to_torch = {m: t for t, m in mapping.items()}
        check_state_dict({m: expected[t] for t, m in mapping.items()}, sub_state,
                         f"the {sub.name} weights (prefix '{sub.prefix}')")
        for m_name, arr in sub_state.items():
            out[sub.prefix + to_torch[m_name]] = arr
        log(f"reverted {sub.name}: {len(sub_state)} tensors")
    unknown = sorted(set(state) - claimed)
    if unknown:
        raise CheckpointError("keys under no known sub-model prefix; nothing was written; "
                              + _listing("unmapped keys", unknown))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="MindSpore .ckpt or .safetensors")
    ap.add_argument("--dst", required=True, help="output .pt or .safetensors with the original key names")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="original model YAML (default: sd-v2-base)")
    return report(_revert, ap.parse_args(argv))


def _revert(args) -> int:
    out = revert_state_dict(read_params(args.src), load_model_config(args.config))
    write_torch_checkpoint(out, args.dst)
    print(f"wrote {args.dst} ({len(out)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
