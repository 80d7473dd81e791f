"""Small shared math for the 3D side (MindSpore): activations, normalize/dot, SH direction encoding.
(VanillaMLP lives in lift3d/geometry/mlp.py.)

Twin: torch_ref/lift3d/ops.py (same function names, same numerics).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

from neutral.lift3d.ops import ACTIVATIONS, SH_C0, TRUNC_EXP_MAX, check_sh_degree, sh_higher_terms


def sh_encode(x01: ms.Tensor, degree: int = 3) -> ms.Tensor:
    """tcnn "SphericalHarmonics" encoding: (..., 3) in [0, 1] -> (..., degree**2).

    tcnn maps its input back with `x * 2 - 1` before evaluating the basis, which is why
    callers (threestudio's environment map) feed `(dirs + 1) / 2`.
    """
    check_sh_degree(degree)
    d = x01 * 2.0 - 1.0
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    out = [ops.ones_like(x) * SH_C0] + sh_higher_terms(x, y, z, degree)
    return ops.concat(out, axis=-1)


SOFTPLUS_THRESHOLD = 20.0  # torch F.softplus default: returns x above it


def softplus(x):
    """torch F.softplus (beta 1, threshold 20) to float32 accuracy.

    The MindSpore CPU softplus / log1p kernels compute log(1 + e), which is 0 for e < 6e-8
    (x < -16.6) and loses relative precision well before that; empty space then has exactly zero
    density and finite-difference normals there turn into noise. Kahan's log1p(e) =
    log(u) * e / (u - 1), u = 1 + e, is exact to a few ulps and differentiable (safe denominator).
    """
    above = x > SOFTPLUS_THRESHOLD
    e = ops.exp(ops.where(above, ops.full_like(x, SOFTPLUS_THRESHOLD), x))
    u = 1.0 + e
    tiny = u == 1.0
    den = ops.where(tiny, ops.ones_like(u), u - 1.0)
    log1p_e = ops.where(tiny, e, ops.log(u) * (e / den))
    return ops.where(above, x, log1p_e)


def trunc_exp(x):
    """exp(x) whose gradient is exp(min(x, 15)), as threestudio's autograd.Function.

    Written with stop_gradient instead of a custom bprop so it compiles in GRAPH mode and stays
    twice differentiable (analytic normals): `m` equals min(x, 15) but has dm/dx = 1 everywhere.
    """
    m = x - ops.stop_gradient(ops.relu(x - TRUNC_EXP_MAX))
    em = ops.exp(m)
    return em + ops.stop_gradient(ops.exp(x) - em)


def activate(x: ms.Tensor, name) -> ms.Tensor:
    """threestudio `get_activation(name)(x)`.

    Takes the name (a compile-time constant) rather than returning a lambda, so GRAPH mode compiles it.
    """
    key = "none" if name is None else name.lower()
    if key == "sigmoid":
        return ops.sigmoid(x)
    if key == "tanh":
        return ops.tanh(x)
    if key == "relu":
        return ops.relu(x)
    if key == "softplus":
        return softplus(x)
    if key == "shifted_softplus":
        return softplus(x - 1.0)
    if key == "exp":
        return ops.exp(x)
    if key == "trunc_exp":
        return trunc_exp(x)
    if key == "none":
        return x
    raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACTIVATIONS)}")


def normalize(x: ms.Tensor, eps: float = 1e-12) -> ms.Tensor:
    """F.normalize(x, dim=-1): x / max(|x|, eps)."""
    norm = ops.sqrt(ops.sum(x * x, -1, keepdim=True))
    return x / ops.maximum(norm, eps)


def dot(x: ms.Tensor, y: ms.Tensor) -> ms.Tensor:
    return ops.sum(x * y, -1, keepdim=True)
