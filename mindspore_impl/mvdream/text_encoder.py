"""OpenCLIP text tower (ViT-H-14 for SD 2.1 / MVDream) in MindSpore, as FrozenOpenCLIPEmbedder uses it.

tokens [B, context_length] int32 -> token_embedding + positional_embedding -> causal pre-LN
transformer blocks -> ln_final -> [B, context_length, width]. With layer "penultimate" the last
block is skipped (MVDream / SD 2.1); with "last" every block runs. The text projection and
logit scale are kept only so the original checkpoint loads strictly; they are unused here.

Config (`cond_stage_config.params`), the original keys plus an `arch` that may be a dict:
    layer: penultimate          # or last
    arch: ViT-H-14              # a name in ARCHS, or explicit dims:
    arch: {width: 32, heads: 2, layers: 3, context_length: 77, vocab_size: 49408, embed_dim: 32}
`embed_dim: null` builds no text_projection / logit_scale (the HF CLIPTextModel layout has none).
Names converted from torch: ln_* weight/bias -> gamma/beta, token_embedding.weight ->
token_embedding.embedding_table, everything else as is. Twin: torch_ref/mvdream/text_encoder.py.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops, Parameter

from mindspore_impl.core.config import ConfigError, parse_structured

LAYERS = ("last", "penultimate")


@dataclass
class TextArch:
    width: int = 1024
    heads: int = 16
    layers: int = 24
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: Optional[int] = 1024  # None: no text_projection / logit_scale (HF CLIPTextModel)


# open_clip text towers (all use GELU, LayerNorm eps 1e-5, causal mask).
ARCHS = {
    "ViT-H-14": TextArch(width=1024, heads=16, layers=24, context_length=77, vocab_size=49408, embed_dim=1024),
    "ViT-L-14": TextArch(width=768, heads=12, layers=12, context_length=77, vocab_size=49408, embed_dim=768),
}


@dataclass
class FrozenOpenCLIPEmbedderConfig:
    """`cond_stage_config.params`; version / device / freeze are accepted for the original YAML."""
    arch: Any = "ViT-H-14"
    version: str = "laion2b_s32b_b79k"
    device: str = "cpu"
    max_length: int = 77
    freeze: bool = True
    layer: str = "last"


def parse_config(params) -> tuple[TextArch, FrozenOpenCLIPEmbedderConfig]:
    """-> (resolved text arch, config); unknown keys, archs or layers raise ConfigError."""
    cfg = parse_structured(FrozenOpenCLIPEmbedderConfig, params, "cond_stage_config.params")
    if isinstance(cfg.arch, str):
        if cfg.arch not in ARCHS:
            raise ConfigError(f"unknown text arch {cfg.arch!r}; known: {sorted(ARCHS)} or a dict of "
                              f"{list(TextArch.__dataclass_fields__)}")
        arch = ARCHS[cfg.arch]
    else:
        arch = parse_structured(TextArch, cfg.arch, "cond_stage_config.params.arch")
    if cfg.layer not in LAYERS:
        raise ConfigError(f"cond_stage_config.params.layer must be one of {LAYERS}, got {cfg.layer!r}")
    if cfg.layer == "penultimate" and arch.layers < 2:
        raise ConfigError("layer 'penultimate' needs at least 2 transformer layers")
    if arch.heads < 1 or arch.width % arch.heads:
        raise ConfigError(f"text width {arch.width} is not divisible by heads {arch.heads}")
    if cfg.max_length > arch.context_length:
        raise ConfigError(f"max_length {cfg.max_length} exceeds context_length {arch.context_length}")
    return arch, cfg


def causal_mask(n: int) -> np.ndarray:
    """Additive [n, n] mask: 0 on and below the diagonal, -inf above (open_clip build_attention_mask)."""
    return np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)


class MultiheadAttention(nn.Cell):
    """torch.nn.MultiheadAttention's parameters (packed in_proj) on [B, L, W] inputs, self-attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.in_proj_weight = Parameter(ms.Tensor(np.zeros((3 * width, width), np.float32)))
        self.in_proj_bias = Parameter(ms.Tensor(np.zeros((3 * width,), np.float32)))
        self.out_proj = nn.Dense(width, width)
        self.heads = heads
        self.head_dim = width // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _split_heads(self, x):
        b, n, _ = x.shape
        return ops.transpose(x.reshape(b, n, self.heads, self.head_dim), (0, 2, 1, 3))  # [b, h, n, d]

    def construct(self, x, mask):
        b, n, w = x.shape
        qkv = ops.matmul(x, ops.transpose(self.in_proj_weight.astype(x.dtype), (1, 0)))
        qkv = qkv + self.in_proj_bias.astype(x.dtype)
        q, k, v = ops.split(qkv, w, axis=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        scores = ops.matmul(q * self.scale, ops.transpose(k, (0, 1, 3, 2))) + mask.astype(x.dtype)
        out = ops.matmul(ops.softmax(scores, axis=-1), v)  # [b, h, n, d]
        out = ops.transpose(out, (0, 2, 1, 3)).reshape(b, n, w)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Cell):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm((width,), epsilon=1e-5)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm((width,), epsilon=1e-5)
        self.mlp = nn.SequentialCell(OrderedDict([
            ("c_fc", nn.Dense(width, 4 * width)),
            ("gelu", nn.GELU(approximate=False)),
            ("c_proj", nn.Dense(4 * width, width)),
        ]))

    def construct(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Cell):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.CellList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def construct(self, x, mask):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class TextTransformer(nn.Cell):
    """open_clip's text tower; its parameters are the checkpoint's `cond_stage_model.model.*`."""

    def __init__(self, arch: TextArch, layer: str = "penultimate"):
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
        self.arch = arch
        self.layer = layer
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.width)
        self.positional_embedding = Parameter(
            ms.Tensor(np.zeros((arch.context_length, arch.width), np.float32)))
        self.transformer = Transformer(arch.width, arch.layers, arch.heads)
        self.ln_final = nn.LayerNorm((arch.width,), epsilon=1e-5)
        self.has_projection = arch.embed_dim is not None
        if self.has_projection:
            self.text_projection = Parameter(ms.Tensor(np.zeros((arch.width, arch.embed_dim), np.float32)))
            self.logit_scale = Parameter(ms.Tensor(np.float32(np.log(1 / 0.07))))
        self.num_run = arch.layers - (1 if layer == "penultimate" else 0)
        self.attn_mask = ms.Tensor(causal_mask(arch.context_length))

    def construct(self, tokens):
        """tokens [B, context_length] int32 -> [B, context_length, width]."""
        x = self.token_embedding(tokens) + self.positional_embedding
        for i in range(self.num_run):  # "penultimate": stop before the last block
            x = self.transformer.resblocks[i](x, self.attn_mask)
        return self.ln_final(x)


def build_from_config(params) -> TextTransformer:
    """TextTransformer from `cond_stage_config.params` of the original YAML."""
    arch, cfg = parse_config(params)
    return TextTransformer(arch, cfg.layer)
