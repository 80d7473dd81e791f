"""Framework-neutral part of the multiview UNet and its transformer blocks: option validation and sizes.

Shared by mindspore_impl/mvdream/{unet,attention}.py and their torch_ref twins (no MindSpore or torch import here).
"""
from __future__ import annotations


def check_unet_config(*, use_spatial_transformer, context_dim, num_heads, num_head_channels, dims,
                      num_classes, n_embed, resblock_updown, use_new_attention_order,
                      disable_self_attentions, disable_middle_self_attn, transformer_depth,
                      channel_mult, num_res_blocks, num_attention_blocks, use_fp16, use_bf16, adm_in_channels):
    """Raise on option combinations the port does not implement (instead of ignoring them)."""
    def unsupported(what):
        raise ValueError(f"MultiViewUNetModel: {what} is not supported by this port")

    if not use_spatial_transformer:
        unsupported("use_spatial_transformer=False (legacy AttentionBlock)")
    if context_dim is None:
        raise ValueError("MultiViewUNetModel: use_spatial_transformer needs context_dim")
    if num_heads == -1 and num_head_channels == -1:
        raise ValueError("MultiViewUNetModel: set either num_heads or num_head_channels")
    if dims != 2:
        unsupported(f"dims={dims}")
    if num_classes is not None or adm_in_channels is not None:
        unsupported("class/ADM conditioning (num_classes, adm_in_channels)")
    if n_embed is not None:
        unsupported("n_embed (codebook id prediction)")
    if resblock_updown:
        unsupported("resblock_updown=True")
    if use_new_attention_order:
        unsupported("use_new_attention_order=True (only used by AttentionBlock)")
    if (disable_self_attentions is not None and any(disable_self_attentions)) or disable_middle_self_attn:
        unsupported("disabling self-attention (it is the multiview attention)")
    if not isinstance(transformer_depth, int):
        unsupported("a per-level list for transformer_depth")
    if use_fp16 and use_bf16:
        raise ValueError("MultiViewUNetModel: use_fp16 and use_bf16 are exclusive")
    nrb = [num_res_blocks] * len(channel_mult) if isinstance(num_res_blocks, int) else list(num_res_blocks)
    if len(nrb) != len(channel_mult):
        raise ValueError("num_res_blocks must be an int or a list with one entry per channel_mult level")
    if num_attention_blocks is not None:
        if len(num_attention_blocks) != len(nrb) or any(a > n for a, n in zip(num_attention_blocks, nrb)):
            raise ValueError("num_attention_blocks needs one entry per level, each <= num_res_blocks")
    return nrb


def attention_heads(ch: int, num_heads: int, num_head_channels: int, legacy: bool) -> tuple[int, int]:
    """(heads, head_dim) of a transformer at width `ch`, as upstream computes them."""
    if num_head_channels == -1:
        heads, dim_head = num_heads, ch // num_heads
    else:
        heads, dim_head = ch // num_head_channels, num_head_channels
    if legacy:
        dim_head = ch // heads
    return heads, dim_head


def transformer_dims(in_channels: int, n_heads: int, d_head: int, depth: int, context_dim,
                     use_linear: bool) -> tuple[list, int]:
    """(context dim per block, inner width) of a SpatialTransformer3D, after checking them."""
    context_dims = context_dim if isinstance(context_dim, (list, tuple)) else [context_dim] * depth
    if len(context_dims) != depth:
        raise ValueError(f"context_dim list {context_dims} must have one entry per transformer block ({depth})")
    inner_dim = n_heads * d_head
    if use_linear and inner_dim != in_channels:
        # upstream builds proj_out as Linear(in_channels, inner_dim): only consistent when equal
        raise ValueError(f"use_linear_in_transformer needs heads x head_dim == channels, got {inner_dim} vs {in_channels}")
    return context_dims, inner_dim
