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

import mindspore as ms
import numpy as np
from mindspore import nn, ops, Parameter

from neutral.mvdream.text_encoder import TextArch, causal_mask, check_layer, parse_config


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
        out = ops.transpose(out, (0, 2, 1, 3)).contiguous().reshape(b, n, w)  # see first_stage.pixel_unshuffle
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
        check_layer(layer)
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
