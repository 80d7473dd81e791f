"""Small shared math for the 3D side (PyTorch reference): twin of mindspore_impl/lift3d/ops.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

# Real SH basis, tinycudann `sh_enc` (include/tiny-cuda-nn/common_device.h) bands 0..2.
_C0 = 0.28209479177387814
_C1 = 0.48860251190291987
_C2_XY = 1.0925484305920792
_C2_ZZ = 0.94617469575755997
_C2_ZZ_OFF = 0.31539156525251999
_C2_XX_YY = 0.54627421529603959


def sh_encode(x01: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """tcnn "SphericalHarmonics" encoding: (..., 3) in [0, 1] -> (..., degree**2) (tcnn maps x*2-1 first)."""
    if degree not in (1, 2, 3):
        raise ValueError(f"sh_encode supports degree 1..3, got {degree}")
    d = x01 * 2.0 - 1.0
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    out = [torch.ones_like(x) * _C0]
    if degree >= 2:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 3:
        out += [
            _C2_XY * x * y,
            -_C2_XY * y * z,
            _C2_ZZ * z * z - _C2_ZZ_OFF,
            -_C2_XY * x * z,
            _C2_XX_YY * x * x - _C2_XX_YY * y * y,
        ]
    return torch.cat(out, dim=-1)


TRUNC_EXP_MAX = 15.0
ACTIVATIONS = ("none", "sigmoid", "tanh", "relu", "softplus", "shifted_softplus", "exp", "trunc_exp")


def check_activation(name) -> str:
    key = "none" if name is None else str(name).lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACTIVATIONS)}")
    return key


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
