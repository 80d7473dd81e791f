"""MVDream transformer blocks (ldm/modules/attention.py), native MindSpore.

The only MVDream change to SD's SpatialTransformer: the self-attention of every block runs jointly
over the `num_frames` views of one object, (b f) l c -> b (f l) c.
The attention kernel is chosen in one place: `attention_backend` when a layer is built (device, chip,
head shape), `flash_fits` per call (batch and sequence lengths); tests/test_device_paths.py covers both.
"""
import mindspore as ms
from mindspore import nn, ops

from mindspore_impl.core import device
from mindspore_impl.mvdream.nn_util import LayerNorm32, conv2d, dense, transformer_norm
from neutral.mvdream.unet import transformer_dims

# Limits of Ascend FlashAttentionScore, from the docstring of mindspore.ops.flash_attention_score
# (mindspore repository, mindspore/python/mindspore/ops/operations/manually_defined/ops_def.py; the same text
# on the MindSpore 2.7 API page): B 1..2k, S1/S2 1..512k, N1 1..256, D a multiple of 16 up to 512, query/key/
# value float16 or bfloat16, "Only support on Atlas A2 training series".
FLASH_MAX_BATCH = 2 * 1024
FLASH_MAX_SEQ = 512 * 1024
FLASH_MAX_HEADS = 256
FLASH_MAX_HEAD_DIM = 512


def attention_backend(head_dim: int, heads: int = 1) -> str:
    """'flash' (Ascend FlashAttentionScore) where the device, chip and head shape allow it, else 'math'.

    Decided when a layer is built (call mindspore_impl.core.device.setup() first): on Ascend (not the first
    Ascend 910 nor 310P, which lack the kernel), head size a multiple of 16 in [16, 512], 1..256 heads.
    The batch and sequence limits are checked per call (`flash_fits`); CPU and GPU always use 'math'.
    """
    if not device.is_ascend() or device.ascend_soc() in device.ASCEND_SOCS_WITHOUT_BF16_OR_FLASH:
        return "math"
    if head_dim % 16 or not 16 <= head_dim <= FLASH_MAX_HEAD_DIM or not 1 <= heads <= FLASH_MAX_HEADS:
        return "math"
    return "flash"


def flash_fits(batch: int, q_len: int, kv_len: int) -> bool:
    """The per-call shape limits of FlashAttentionScore (BSH layout); plain int comparisons, so GRAPH mode
    folds them to a constant for each compiled shape."""
    return 1 <= batch <= FLASH_MAX_BATCH and 1 <= q_len <= FLASH_MAX_SEQ and 1 <= kv_len <= FLASH_MAX_SEQ


def math_attention(q, k, v, heads: int, scale: float):
    """softmax(q k^T * scale) v per head, in float32; q [B, N, h*d], k/v [B, M, h*d] -> [B, N, h*d]."""
    b, n, inner = q.shape
    d = inner // heads

    def split(t):
        return t.reshape(b, t.shape[1], heads, d).transpose(0, 2, 1, 3).astype(ms.float32)

    sim = ops.matmul(split(q), split(k).swapaxes(-1, -2)) * scale
    out = ops.matmul(ops.softmax(sim, axis=-1), split(v))
    # contiguous(): see first_stage.pixel_unshuffle (reshaping a transposed view corrupts the heap in PyNative)
    return out.transpose(0, 2, 1, 3).contiguous().reshape(b, n, inner).astype(v.dtype)


def flash_attention(q, k, v, heads: int, scale: float):
    """Ascend fused kernel, same contract as math_attention. The kernel takes float16 / bfloat16 only, so
    float32 inputs (an fp32 UNet) go in as float16 and the output is cast back."""
    dtype = q.dtype if q.dtype in (ms.float16, ms.bfloat16) else ms.float16
    out = ops.flash_attention_score(q.astype(dtype), k.astype(dtype), v.astype(dtype), heads,
                                    scalar_value=scale, input_layout="BSH")
    return out.astype(v.dtype)


class CrossAttention(nn.Cell):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.backend = attention_backend(dim_head, heads)
        self.to_q = dense(query_dim, inner_dim, bias=False)
        self.to_k = dense(context_dim, inner_dim, bias=False)
        self.to_v = dense(context_dim, inner_dim, bias=False)
        self.to_out = nn.SequentialCell(dense(inner_dim, query_dim), nn.Dropout(p=dropout))

    def construct(self, x, context=None):
        if context is None:
            context = x
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if k.shape[1] == 1:
            # one key (Zero123's single image token): the softmax is exactly 1, every query reads v. Also sidesteps
            # MindSpore 2.7.2's PyNative gradient of ops.softmax over a size-1 axis, which came out wrong after a
            # self-attention (tests/test_zero123_model.py::test_unet_with_8_input_channels)
            out = ops.broadcast_to(v, q.shape)
        elif self.backend == "flash" and flash_fits(q.shape[0], q.shape[1], k.shape[1]):
            out = flash_attention(q, k, v, self.heads, self.scale)
        else:
            out = math_attention(q, k, v, self.heads, self.scale)
        return self.to_out(out)


class GEGLU(nn.Cell):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = dense(dim_in, dim_out * 2)
        self.dim_out = dim_out

    def construct(self, x):
        h = self.proj(x)
        return h[..., :self.dim_out] * ops.gelu(h[..., self.dim_out:], approximate="none")


class FeedForward(nn.Cell):
    """Gated-GELU MLP, inner width 4 x dim (SD's transformer always uses glu=True)."""

    def __init__(self, dim, mult=4, dropout=0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = nn.SequentialCell(GEGLU(dim, inner_dim), nn.Dropout(p=dropout), dense(inner_dim, dim))

    def construct(self, x):
        return self.net(x)


class BasicTransformerBlock3D(nn.Cell):
    def __init__(self, dim, n_heads, d_head, context_dim, dropout=0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)  # self-attention
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = LayerNorm32(dim)
        self.norm2 = LayerNorm32(dim)
        self.norm3 = LayerNorm32(dim)

    def construct(self, x, context=None, num_frames=1):
        bf, l, c = x.shape
        x = x.reshape(bf // num_frames, num_frames * l, c)  # (b f) l c -> b (f l) c
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(bf, l, c)  # b (f l) c -> (b f) l c
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer3D(nn.Cell):
    """[B, C, H, W] -> [B, C, H, W]: GroupNorm, project in (1x1 conv or linear), blocks, project out, residual.

    Called like every layer of a TimestepEmbedSequential: (x, emb, context, num_frames); emb is unused.
    """

    def __init__(self, in_channels, n_heads, d_head, depth=1, dropout=0.0, context_dim=None, use_linear=False,
                 norm_groups=32):
        super().__init__()
        context_dims, inner_dim = transformer_dims(in_channels, n_heads, d_head, depth, context_dim, use_linear)
        self.norm = transformer_norm(in_channels, norm_groups)
        self.proj_in = dense(in_channels, inner_dim) if use_linear else conv2d(in_channels, inner_dim, 1)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock3D(inner_dim, n_heads, d_head, context_dims[d], dropout) for d in range(depth)])
        self.proj_out = dense(inner_dim, in_channels) if use_linear else conv2d(inner_dim, in_channels, 1)
        self.use_linear = use_linear

    def construct(self, x, emb=None, context=None, num_frames=1):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.reshape(b, x.shape[1], h * w).transpose(0, 2, 1)  # b c h w -> b (h w) c
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, num_frames)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(0, 2, 1).reshape(b, x.shape[2], h, w)  # b (h w) c -> b c h w
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in
