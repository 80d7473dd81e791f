"""PyTorch reference of the OpenCLIP text tower as MVDream's FrozenOpenCLIPEmbedder runs it.

Parameter names are open_clip's (the checkpoint's `cond_stage_model.model.*`); the attention is
torch.nn.MultiheadAttention itself, so the packed in_proj layout is the original one.
The config schema (arch name or explicit dims, layer) lives in neutral/mvdream/text_encoder.py.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from neutral.mvdream.text_encoder import TextArch, causal_mask, check_layer, parse_config


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x, attn_mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])


class TextTransformer(nn.Module):
    """tokens [B, context_length] int64 -> [B, context_length, width] (after ln_final)."""

    def __init__(self, arch: TextArch, layer: str = "penultimate"):
        super().__init__()
        check_layer(layer)
        self.arch = arch
        self.layer = layer
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.width)
        self.positional_embedding = nn.Parameter(torch.empty(arch.context_length, arch.width))
        self.transformer = Transformer(arch.width, arch.layers, arch.heads)
        self.ln_final = nn.LayerNorm(arch.width)
        if arch.embed_dim is not None:
            self.text_projection = nn.Parameter(torch.empty(arch.width, arch.embed_dim))
            self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.register_buffer("attn_mask", torch.from_numpy(causal_mask(arch.context_length)), persistent=False)
        # FrozenOpenCLIPEmbedder: layer_idx 0 ("last") or 1 ("penultimate") blocks skipped at the end.
        self.layer_idx = 0 if layer == "last" else 1

    def forward(self, tokens):
        x = self.token_embedding(tokens) + self.positional_embedding
        blocks = self.transformer.resblocks
        for i, block in enumerate(blocks):
            if i == len(blocks) - self.layer_idx:
                break
            x = block(x, self.attn_mask)
        return self.ln_final(x)


def build_from_config(params) -> TextTransformer:
    """TextTransformer from `cond_stage_config.params` of the original YAML."""
    arch, cfg = parse_config(params)
    return TextTransformer(arch, cfg.layer)
