"""MVDream transformer blocks (ldm/modules/attention.py), PyTorch reference.

The only MVDream change to SD's SpatialTransformer: the self-attention of every block runs jointly
over the `num_frames` views of one object, (b f) l c -> b (f l) c.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from neutral.mvdream.unet import transformer_dims
from torch_ref.mvdream.nn_util import LayerNorm32, transformer_norm, zero_module


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """Multi-head softmax(q k^T * scale) v in float32; q [B, N, h*d], k/v [B, M, h*d] -> [B, N, h*d]."""
    b, n, inner = q.shape
    d = inner // heads

    def split(t):
        return t.reshape(b, t.shape[1], heads, d).permute(0, 2, 1, 3).float()

    sim = torch.matmul(split(q), split(k).transpose(-1, -2)) * scale
    out = torch.matmul(sim.softmax(dim=-1), split(v))
    return out.permute(0, 2, 1, 3).reshape(b, n, inner).to(v.dtype)


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None):
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, self.scale)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Gated-GELU MLP, inner width 4 x dim (SD's transformer always uses glu=True)."""

    def __init__(self, dim, mult=4, dropout=0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock3D(nn.Module):
    def __init__(self, dim, n_heads, d_head, context_dim, dropout=0.0, checkpoint=False):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)  # self-attention
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = LayerNorm32(dim)
        self.norm2 = LayerNorm32(dim)
        self.norm3 = LayerNorm32(dim)
        self.checkpoint = checkpoint

    def forward(self, x, context=None, num_frames=1):
        if self.checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, num_frames, use_reentrant=False)
        return self._forward(x, context, num_frames)

    def _forward(self, x, context, num_frames):
        bf, l, c = x.shape
        x = x.reshape(bf // num_frames, num_frames * l, c)  # (b f) l c -> b (f l) c
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(bf, l, c)  # b (f l) c -> (b f) l c
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer3D(nn.Module):
    """[B, C, H, W] -> [B, C, H, W]: GroupNorm, project in (1x1 conv or linear), blocks, project out, residual."""

    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0.0, context_dim=None,
                 use_linear=False, use_checkpoint=False, norm_groups=32):
        super().__init__()
        context_dims, inner_dim = transformer_dims(in_channels, n_heads, d_head, depth, context_dim, use_linear)
        self.norm = transformer_norm(in_channels, norm_groups)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock3D(inner_dim, n_heads, d_head, context_dims[d], dropout, use_checkpoint)
            for d in range(depth)])
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))
        self.use_linear = use_linear

    def forward(self, x, context=None, num_frames=1):
        contexts = context if isinstance(context, list) else [context] * len(self.transformer_blocks)
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # b c h w -> b (h w) c
        if self.use_linear:
            x = self.proj_in(x)
        for block, ctx in zip(self.transformer_blocks, contexts):
            x = block(x, context=ctx, num_frames=num_frames)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)  # b (h w) c -> b c h w
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in
