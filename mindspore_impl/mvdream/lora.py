"""Low-rank adapters (LoRA) for the multiview UNet (unet.py + attention.py), native MindSpore.

    y = x W^T + b + (alpha / r) * (x D^T) U^T       D = lora_down (r, in), U = lora_up (out, r), U starts at 0

(Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; the four modes come from the multi-frame
novel-view-synthesis phase of the "Generation of Animated 3D Characters" report.)

Which Dense layers a mode wraps, per BasicTransformerBlock3D (attention.py) of every SpatialTransformer3D:

    all         attn1.{to_q,to_k,to_v,to_out.0} + attn2.{to_q,to_k,to_v,to_out.0} + ff.net.0.proj + ff.net.2  (10)
    self_attn   attn1.{to_q,to_k,to_v,to_out.0}                                                                  (4)
    qk          attn1.{to_q,to_k}                                                                                (2)
    cross_view  attn1.{to_q,to_k,to_v,to_out.0}                                                                  (4)

Why: BasicTransformerBlock3D.construct reshapes (b f) l c -> b (f l) c before attn1 and back after it, so attn1
is the only place where tokens of different views meet; attn2 reads the text context per view, ff and the
ResBlocks act per token / per view. MVDream has no separate temporal layers: its self-attention *is* the
cross-view attention, so `cross_view` (the seed's "temporal layers only") selects the same four projections as
`self_attn`; the names stay apart so an adapter file says which recipe made it. The transformer's proj_in /
proj_out, the time / camera embeddings and the convolutions are never wrapped.

Adapter files (.safetensors): arrays `model.diffusion_model.<dense path>.lora_down` / `.lora_up` (only the
adapters) and a metadata record (format, mode, rank, alpha, base checkpoint, model config, step).
`load_lora` checks the record and every key and shape against the model, then folds the adapters into the base
weights (W + alpha / r * U D), so sampling runs the plain UNet. Used by mvdream/diffusion_system.py (training,
export), pipeline.py / scripts/t2i.py (--lora) and the SDS guidance (system.guidance.lora_path).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mindspore_impl.core.checkpoint import CheckpointError
from mindspore_impl.core.parameters import write_parameter
from mindspore_impl.mvdream.attention import BasicTransformerBlock3D
from neutral.config import ConfigError, parse_structured
from neutral.errors import MissingFileError
from neutral.mvdream.training import UNET_PREFIX

FORMAT = "mvdream-lora-v1"
MODES = ("all", "self_attn", "qk", "cross_view")
_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
MODE_LAYERS: dict[str, tuple[str, ...]] = {  # Dense paths inside each BasicTransformerBlock3D
    "all": tuple(f"attn1.{n}" for n in _ATTN) + tuple(f"attn2.{n}" for n in _ATTN) + ("ff.net.0.proj", "ff.net.2"),
    "self_attn": tuple(f"attn1.{n}" for n in _ATTN),
    "qk": ("attn1.to_q", "attn1.to_k"),
    "cross_view": tuple(f"attn1.{n}" for n in _ATTN),
}
DOWN, UP = "lora_down", "lora_up"


class LoRAError(CheckpointError):
    """An adapter file that does not fit the model (shapes, keys, mode) or is not an adapter file."""


@dataclass
class LoRAConfig:
    mode: str = "self_attn"
    rank: int = field(default=4, metadata={"min": 1})
    alpha: float = field(default=4.0, metadata={"min": 0.0})


def parse_config(cfg: Any, where: str = "system.lora") -> LoRAConfig:
    out = parse_structured(LoRAConfig, cfg, where)
    if out.mode not in MODES:
        raise ConfigError(f"{where}.mode must be one of {list(MODES)}, got {out.mode!r}")
    return out


class LoRADense(nn.Cell):
    """A Dense (no activation) plus a low-rank adapter. It holds the base Dense's own weight / bias Parameters
    (same names, frozen by apply_lora), and computes the base part with the Dense's ops, so with lora_up = 0
    the output is bit-identical to the Dense's. x [..., in] -> [..., out]."""

    def __init__(self, base: nn.Dense, rank: int, alpha: float, down_init: np.ndarray):
        super().__init__()
        if base.activation_flag:
            raise ValueError("LoRADense wraps Dense layers without activation")
        object.__setattr__(self, "base_dense", base)  # not a child cell: merge() puts it back
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self.weight = base.weight
        self.has_bias = base.has_bias
        self.bias = base.bias
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = float(alpha) / float(rank)
        self.lora_down = ms.Parameter(ms.Tensor(down_init.astype(np.float32)), name=DOWN)
        self.lora_up = ms.Parameter(ms.Tensor(np.zeros((self.out_channels, rank), np.float32)), name=UP)

    def construct(self, x):
        x_shape = x.shape
        if len(x_shape) != 2:
            x = x.reshape(-1, x_shape[-1])
        y = self.matmul(x, self.weight)
        if self.has_bias:
            y = self.bias_add(y, self.bias)
        h = self.matmul(x, self.lora_down.astype(x.dtype))
        y = y + self.matmul(h, self.lora_up.astype(x.dtype)) * self.scale
        if len(x_shape) != 2:
            y = y.reshape(x_shape[:-1] + (y.shape[-1],))
        return y


# ---------------------------------------------------------------- selection

def _child(cell: nn.Cell, name: str) -> nn.Cell:
    return cell[int(name)] if isinstance(cell, nn.SequentialCell) else getattr(cell, name)


def _set_child(cell: nn.Cell, name: str, value: nn.Cell) -> None:
    if isinstance(cell, nn.SequentialCell):
        cell[int(name)] = value
    else:
        setattr(cell, name, value)


def _resolve(root: nn.Cell, path: str) -> tuple[nn.Cell, str, nn.Cell]:
    """(parent, last name, cell) of a dotted path."""
    parts = path.split(".")
    parent = root
    for p in parts[:-1]:
        parent = _child(parent, p)
    return parent, parts[-1], _child(parent, parts[-1])


def transformer_blocks(unet: nn.Cell) -> list[str]:
    """Paths of the UNet's BasicTransformerBlock3D cells, in module order."""
    return [name for name, cell in unet.cells_and_names() if isinstance(cell, BasicTransformerBlock3D)]


def select_layers(unet: nn.Cell, mode: str) -> list[str]:
    """Paths (inside the UNet) of the Dense layers `mode` adapts; see the module docstring."""
    if mode not in MODES:
        raise ConfigError(f"LoRA mode must be one of {list(MODES)}, got {mode!r}")
    return [f"{block}.{layer}" for block in transformer_blocks(unet) for layer in MODE_LAYERS[mode]]


# ---------------------------------------------------------------- wrap, list, merge

def apply_lora(unet: nn.Cell, mode: str, rank: int, alpha: float, seed: int = 0) -> list[str]:
    """Wrap the layers of `mode` in LoRADense (down: torch Linear's default init, uniform +-1/sqrt(in), from
    numpy Generator(seed); up: 0) and freeze every base parameter of the UNet. Returns the wrapped paths."""
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    rng = np.random.default_rng(seed)
    paths = select_layers(unet, mode)
    for p in unet.get_parameters():
        p.requires_grad = False
    for path in paths:
        parent, name, dense = _resolve(unet, path)
        if isinstance(dense, LoRADense):
            raise ValueError(f"{path} already has an adapter")
        if not isinstance(dense, nn.Dense):
            raise TypeError(f"{path} is a {type(dense).__name__}, not a Dense")
        bound = 1.0 / np.sqrt(dense.in_channels)
        wrapped = LoRADense(dense, rank, alpha, rng.uniform(-bound, bound, (rank, dense.in_channels)))
        weight_name = dense.weight.name
        bias_name = dense.bias.name if dense.has_bias else None
        _set_child(parent, name, wrapped)
        # setattr renames a child's parameters with the local attribute name only: restore full paths
        wrapped.weight.name = weight_name
        if bias_name is not None:
            wrapped.bias.name = bias_name
        wrapped.lora_down.name = f"{path}.{DOWN}"
        wrapped.lora_up.name = f"{path}.{UP}"
    return paths


def wrapped_layers(unet: nn.Cell) -> dict[str, LoRADense]:
    return {name: cell for name, cell in unet.cells_and_names() if isinstance(cell, LoRADense)}


def lora_parameters(unet: nn.Cell) -> dict[str, ms.Parameter]:
    """File key (model.diffusion_model.<path>.lora_down / .lora_up) -> Parameter, in module order."""
    out = {}
    for path, cell in wrapped_layers(unet).items():
        out[f"{UNET_PREFIX}{path}.{DOWN}"] = cell.lora_down
        out[f"{UNET_PREFIX}{path}.{UP}"] = cell.lora_up
    return out


def fold(dense: nn.Dense, down: np.ndarray, up: np.ndarray, scale: float) -> None:
    """dense.weight <- W + scale * up @ down (float64 math, stored in the weight's dtype)."""
    w = dense.weight.asnumpy().astype(np.float64)
    w = w + scale * (up.astype(np.float64) @ down.astype(np.float64))
    write_parameter(dense.weight, w.astype(ms.dtype_to_nptype(dense.weight.dtype)))


def merge_lora(unet: nn.Cell) -> int:
    """Fold every adapter into its base weight and put the plain Dense back. Returns the number merged."""
    layers = wrapped_layers(unet)
    for path, cell in layers.items():
        base = cell.base_dense
        names = (cell.weight.name, cell.bias.name if cell.has_bias else None)
        fold(base, cell.lora_down.asnumpy(), cell.lora_up.asnumpy(), cell.scale)
        parent, name, _ = _resolve(unet, path)
        _set_child(parent, name, base)
        base.weight.name = names[0]
        if names[1] is not None:
            base.bias.name = names[1]
    return len(layers)


# ---------------------------------------------------------------- files

def save_lora(path: str, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> None:
    """Write the adapters and their record (mode, rank, alpha, base_checkpoint, ...) to a .safetensors file,
    atomically (a temporary file in the same folder, then os.replace)."""
    from safetensors.numpy import save_file
    if not path.endswith(".safetensors"):
        raise LoRAError(f"adapter files are .safetensors, got {path!r}")
    meta = {"format": FORMAT, "record": json.dumps({**record, "format": FORMAT}, sort_keys=True)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".safetensors")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_lora(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, record) of an adapter file; LoRAError (one line) unless it is one with a known mode and
    rank / alpha, and its keys are the down / up pairs of that mode's layers."""
    if not path or not os.path.isfile(path):
        raise MissingFileError(f"LoRA adapter file not found: {path!r} (the export of a run with system.lora: "
                               f"<trial>/save/it<N>-export/lora.safetensors)")
    if not path.endswith(".safetensors"):
        raise LoRAError(f"{path}: adapter files are .safetensors (a run's export lora.safetensors)")
    from safetensors import safe_open
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types on a corrupt header
        raise LoRAError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT or "record" not in meta:
        raise LoRAError(f"{path}: not a LoRA adapter file of this project (no '{FORMAT}' metadata record)")
    record = json.loads(meta["record"])
    mode = record.get("mode")
    if mode not in MODES:
        raise LoRAError(f"{path}: unknown LoRA mode {mode!r} in its record (known: {', '.join(MODES)})")
    rank, alpha = record.get("rank"), record.get("alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise LoRAError(f"{path}: bad rank / alpha in its record: rank {rank!r}, alpha {alpha!r}")
    wanted = set(MODE_LAYERS[mode])
    layers = {k[len(UNET_PREFIX):].rsplit(".", 1)[0] for k in arrays}
    bad = sorted(k for k in arrays if not k.startswith(UNET_PREFIX) or k.rsplit(".", 1)[-1] not in (DOWN, UP))
    off_mode = sorted(p for p in layers if p.split(".transformer_blocks.")[-1].split(".", 1)[-1] not in wanted)
    if bad or off_mode:
        raise LoRAError(f"{path}: keys that are not adapters of mode '{mode}' ({', '.join(MODE_LAYERS[mode])} "
                        f"of each transformer block): {(bad + off_mode)[:5]}")
    return arrays, record


def check_fits(unet: nn.Cell, arrays: dict[str, np.ndarray], record: dict[str, Any], path: str) -> list[str]:
    """LoRAError (one line) unless the file holds exactly the down / up pair of every layer its mode selects
    in this UNet, with shapes (rank, in) / (out, rank). Returns the layer paths."""
    paths = select_layers(unet, record["mode"])
    rank = int(record["rank"])
    expected = {}
    for p in paths:
        dense = _resolve(unet, p)[2]
        expected[f"{UNET_PREFIX}{p}.{DOWN}"] = (rank, dense.in_channels)
        expected[f"{UNET_PREFIX}{p}.{UP}"] = (dense.out_channels, rank)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    wrong = sorted(f"{k} {tuple(arrays[k].shape)} vs {expected[k]}" for k in set(expected) & set(arrays)
                   if tuple(arrays[k].shape) != expected[k])
    if missing or extra or wrong:
        parts = [f"{label} ({len(v)}): {', '.join(v[:3])}" for label, v in
                 (("missing", missing), ("unexpected", extra), ("shape mismatches", wrong)) if v]
        raise LoRAError(f"{path}: the adapters (mode '{record['mode']}', rank {rank}) do not fit this UNet: "
                        + "; ".join(parts))
    bad = [k for k, v in arrays.items() if not np.isfinite(v).all()]
    if bad:
        raise LoRAError(f"{path}: adapter {bad[0]} holds NaN or inf")
    return paths


def load_lora(unet: nn.Cell, path: str) -> dict[str, Any]:
    """Check the adapter file at `path` against `unet` and fold it into the base weights (the UNet stays plain:
    every later call samples the merged model). Returns the file's record."""
    arrays, record = read_lora(path)
    paths = check_fits(unet, arrays, record, path)
    scale = float(record["alpha"]) / float(record["rank"])
    for p in paths:
        dense = _resolve(unet, p)[2]
        if isinstance(dense, LoRADense):
            raise LoRAError(f"{path}: {p} carries an unmerged adapter; merge_lora first")
        fold(dense, arrays[f"{UNET_PREFIX}{p}.{DOWN}"], arrays[f"{UNET_PREFIX}{p}.{UP}"], scale)
    return record
