"""Small shared math for the 3D side (MindSpore): activations, normalize/dot, SH direction encoding.
(VanillaMLP lives in lift3d/geometry/mlp.py.)

Twin: torch_ref/lift3d/ops.py (same function names, same numerics).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

# Real SH basis, tinycudann `sh_enc` (include/tiny-cuda-nn/common_device.h) bands 0..2.
_C0 = 0.28209479177387814
_C1 = 0.48860251190291987
_C2_XY = 1.0925484305920792
_C2_ZZ = 0.94617469575755997
_C2_ZZ_OFF = 0.31539156525251999
_C2_XX_YY = 0.54627421529603959


def sh_encode(x01: ms.Tensor, degree: int = 3) -> ms.Tensor:
    """tcnn "SphericalHarmonics" encoding: (..., 3) in [0, 1] -> (..., degree**2).

    tcnn maps its input back with `x * 2 - 1` before evaluating the basis, which is why
    callers (threestudio's environment map) feed `(dirs + 1) / 2`.
    """
    if degree not in (1, 2, 3):
        raise ValueError(f"sh_encode supports degree 1..3, got {degree}")
    d = x01 * 2.0 - 1.0
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    out = [ops.ones_like(x) * _C0]
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
    return ops.concat(out, axis=-1)


def activate(x: ms.Tensor, name) -> ms.Tensor:
    """threestudio `get_activation(name)(x)` for the names the MVDream configs use.

    Takes the name (a compile-time constant) rather than returning a lambda, so GRAPH mode compiles it.
    """
    if name is None or name.lower() == "none":
        return x
    name = name.lower()
    if name == "sigmoid":
        return ops.sigmoid(x)
    if name == "tanh":
        return ops.tanh(x)
    if name == "relu":
        return ops.relu(x)
    if name == "softplus":
        return ops.softplus(x)
    if name == "exp":
        return ops.exp(x)
    if name == "shifted_softplus":
        return ops.softplus(x - 1.0)
    raise ValueError(f"unknown activation '{name}'; known: sigmoid, tanh, relu, softplus, exp, shifted_softplus, none")


def normalize(x: ms.Tensor, eps: float = 1e-12) -> ms.Tensor:
    """F.normalize(x, dim=-1): x / max(|x|, eps)."""
    norm = ops.sqrt(ops.sum(x * x, -1, keepdim=True))
    return x / ops.maximum(norm, eps)


def dot(x: ms.Tensor, y: ms.Tensor) -> ms.Tensor:
    return ops.sum(x * y, -1, keepdim=True)
