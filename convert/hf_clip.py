"""HF `CLIPTextModel` weights (SD 2.1's `text_encoder/`, threestudio's prompt processor) -> OpenCLIP layout.

    python -m convert.hf_clip --src text_encoder/model.safetensors --dst text_encoder.ckpt

HF names (under `text_model.`)                         OpenCLIP names (under MVDream's text-encoder prefix)
embeddings.token_embedding.weight                     token_embedding.weight
embeddings.position_embedding.weight                  positional_embedding
encoder.layers.N.self_attn.{q,k,v}_proj.{weight,bias} transformer.resblocks.N.attn.in_proj_{weight,bias} (q;k;v)
encoder.layers.N.self_attn.out_proj.*                 transformer.resblocks.N.attn.out_proj.*
encoder.layers.N.layer_norm1 / layer_norm2            transformer.resblocks.N.ln_1 / ln_2
encoder.layers.N.mlp.fc1 / fc2                        transformer.resblocks.N.mlp.c_fc / c_proj
final_layer_norm                                      ln_final
The text-encoder prefix is neutral/mvdream/checkpoint_layout.py's TEXT_ENCODER.prefix.
`embeddings.position_ids` (a buffer) is dropped. CLIPTextModel has no text projection, so the
result builds with `embed_dim: null`. SD 2.1 ships 23 of ViT-H-14's 24 layers and uses the last
hidden state (after final_layer_norm): that is `layer: last` on the 23-layer model, which equals
`layer: penultimate` on the full OpenCLIP tower.
"""
from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from mindspore_impl.core.checkpoint import CheckpointError, _listing

HF_PREFIX = "text_model."
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_PER_LAYER = {
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias",
}
_DROPPED = {"embeddings.position_ids"}


def hf_to_openclip(hf_state: dict[str, np.ndarray], prefix: str = HF_PREFIX) -> dict[str, np.ndarray]:
    """Rename a CLIPTextModel state dict to open_clip's text-tower names (no prefix);
    q, k, v projections are stacked into in_proj. Unknown or incomplete keys raise CheckpointError."""
    state = {k[len(prefix):]: v for k, v in hf_state.items() if k.startswith(prefix)}
    outside = sorted(k for k in hf_state if not k.startswith(prefix))
    out, qkv, unknown = {}, {}, []
    for name, arr in state.items():
        m = _LAYER.fullmatch(name)
        if name in _TOP:
            out[_TOP[name]] = arr
        elif name in _DROPPED:
            continue
        elif m and m.group(2) in _PER_LAYER:
            out[f"transformer.resblocks.{m.group(1)}.{_PER_LAYER[m.group(2)]}"] = arr
        elif m and re.fullmatch(r"self_attn\.[qkv]_proj\.(weight|bias)", m.group(2)):
            qkv[(int(m.group(1)), m.group(2)[10], m.group(2).split(".")[-1])] = arr
        else:
            unknown.append(prefix + name)
    if outside or unknown:
        raise CheckpointError("not a CLIPTextModel state dict: " + _listing("unmapped keys", outside + unknown))
    layers = sorted({layer for layer, _, _ in qkv})
    for layer in layers:
        for kind in ("weight", "bias"):
            parts = [(layer, p, kind) for p in "qkv"]
            absent = [f"{prefix}encoder.layers.{layer}.self_attn.{p}_proj.{kind}" for _, p, _ in parts
                      if (layer, p, kind) not in qkv]
            if absent:
                raise CheckpointError(_listing("missing keys", absent))
            out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = np.concatenate([qkv[k] for k in parts], 0)
    return out


def text_params_for(openclip_state: dict[str, np.ndarray], heads: int | None = None,
                    layer: str = "last") -> dict:
    """`cond_stage_config.params` that builds a text tower fitting `openclip_state`.
    The head count is not in the weights: default width // 64 (ViT-H-14: 16, ViT-L-14: 12)."""
    vocab, width = openclip_state["token_embedding.weight"].shape
    context = openclip_state["positional_embedding"].shape[0]
    layers = len({k.split(".")[2] for k in openclip_state if k.startswith("transformer.resblocks.")})
    proj = openclip_state.get("text_projection")
    return {"layer": layer, "arch": {"width": int(width), "heads": int(heads or max(1, width // 64)), "layers": layers,
                                     "context_length": int(context), "vocab_size": int(vocab),
                                     "embed_dim": None if proj is None else int(proj.shape[1])}}


def convert_hf_text_encoder(hf_state: dict[str, np.ndarray], heads: int | None = None, layer: str = "last",
                            log=print) -> tuple[dict[str, np.ndarray], dict]:
    """HF CLIPTextModel state -> (MindSpore state under the text-encoder prefix, cond_stage params).
    Goes through the same strict key map and shape checks as the MVDream checkpoint."""
    from convert.keymaps import TEXT_ENCODER
    from convert.pt2ms import convert_state_dict
    openclip = hf_to_openclip(hf_state)
    params = text_params_for(openclip, heads, layer)
    original = {TEXT_ENCODER.prefix + k: v for k, v in openclip.items()}
    out = convert_state_dict(original, {TEXT_ENCODER.config_key: {"params": params}}, parts=[TEXT_ENCODER.name],
                             log=log)
    return out, params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="HF text_encoder weights (.safetensors or .bin/.pt)")
    ap.add_argument("--dst", required=True, help="output .ckpt or .safetensors (MindSpore names)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default width // 64)")
    from neutral.errors import report
    return report(_convert, ap.parse_args(argv))


def _convert(args) -> int:
    from convert.io import read_torch_checkpoint
    from mindspore_impl.core.checkpoint import save_params
    out, params = convert_hf_text_encoder(read_torch_checkpoint(args.src), args.heads)
    save_params(out, args.dst)
    print(f"wrote {args.dst} ({len(out)} tensors); build it with cond_stage_config.params = {params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
