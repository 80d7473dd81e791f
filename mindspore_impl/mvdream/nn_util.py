"""Small building blocks of the original LDM/MVDream code (diffusionmodules/util.py), MindSpore."""
import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops


def timestep_freqs(dim: int, max_period: int = 10000) -> ms.Tensor:
    """The dim//2 frequencies of the sinusoidal timestep embedding (float32, as upstream)."""
    half = dim // 2
    return ms.Tensor(np.exp(-math.log(max_period) * np.arange(0, half, dtype=np.float32) / half).astype(np.float32))


def timestep_embedding(timesteps: ms.Tensor, freqs: ms.Tensor, dim: int) -> ms.Tensor:
    """Sinusoidal embedding [N] -> [N, dim]: cos half first, then sin (upstream order)."""
    args = timesteps.astype(ms.float32)[:, None] * freqs[None]
    emb = ops.concat((ops.cos(args), ops.sin(args)), axis=-1)
    if dim % 2:
        emb = ops.concat((emb, ops.zeros_like(emb[:, :1])), axis=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (parameters stay float32)."""

    def construct(self, x):
        return ops.group_norm(x.astype(ms.float32), self.num_groups, self.gamma, self.beta, self.eps).astype(x.dtype)


def normalization(channels: int, groups: int = 32) -> nn.GroupNorm:
    """ResBlock / output GroupNorm: 32 groups (upstream), eps 1e-5."""
    return GroupNorm32(groups, channels)


def transformer_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """SpatialTransformer input GroupNorm ("Normalize"): 32 groups, eps 1e-6."""
    return GroupNorm32(groups, channels, eps=1e-6)


class LayerNorm32(nn.LayerNorm):
    """torch.nn.LayerNorm(dim): eps 1e-5 (MindSpore's default is 1e-7), float32 math."""

    def __init__(self, dim: int):
        super().__init__((dim,), begin_norm_axis=-1, begin_params_axis=-1, epsilon=1e-5)

    def construct(self, x):
        y, _, _ = self.layer_norm(x.astype(ms.float32), self.gamma, self.beta)
        return y.astype(x.dtype)


def conv2d(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """torch.nn.Conv2d equivalent (explicit padding, with bias)."""
    if padding:
        return nn.Conv2d(c_in, c_out, kernel, stride=stride, pad_mode="pad", padding=padding, has_bias=True)
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, pad_mode="valid", has_bias=True)


def dense(c_in: int, c_out: int, bias: bool = True) -> nn.Dense:
    return nn.Dense(c_in, c_out, has_bias=bias)
