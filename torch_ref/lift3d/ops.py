"""Small shared math for the 3D side (PyTorch reference): twin of mindspore_impl/lift3d/ops.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

from neutral.lift3d.ops import ACTIVATIONS, SH_C0, TRUNC_EXP_MAX, check_sh_degree, sh_higher_terms


def sh_encode(x01: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """tcnn "SphericalHarmonics" encoding: (..., 3) in [0, 1] -> (..., degree**2) (tcnn maps x*2-1 first)."""
    check_sh_degree(degree)
    d = x01 * 2.0 - 1.0
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    out = [torch.ones_like(x) * SH_C0] + sh_higher_terms(x, y, z, degree)
    return torch.cat(out, dim=-1)


class _TruncExp(Function):
    """threestudio trunc_exp: exp forward, exp(clamp(x, max=15)) backward (twice differentiable)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=TRUNC_EXP_MAX))


trunc_exp = _TruncExp.apply


def activate(x: torch.Tensor, name) -> torch.Tensor:
    """threestudio `get_activation(name)(x)`."""
    key = "none" if name is None else name.lower()
    if key == "sigmoid":
        return torch.sigmoid(x)
    if key == "tanh":
        return torch.tanh(x)
    if key == "relu":
        return F.relu(x)
    if key == "softplus":
        return F.softplus(x)
    if key == "shifted_softplus":
        return F.softplus(x - 1.0)
    if key == "exp":
        return torch.exp(x)
    if key == "trunc_exp":
        return trunc_exp(x)
    if key == "none":
        return x
    raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACTIVATIONS)}")


def normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=eps)


def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sum(x * y, -1, keepdim=True)
