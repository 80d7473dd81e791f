"""Framework-neutral part of lift3d/ops.py: the spherical-harmonics basis terms and the activation names.
Shared by mindspore_impl/ and torch_ref/lift3d/ops.py. The SH terms use only * and -, so they evaluate on
numpy arrays and on MindSpore or torch tensors alike.
"""
from __future__ import annotations

# Real SH basis, tinycudann `sh_enc` (include/tiny-cuda-nn/common_device.h) bands 0..2.
SH_C0 = 0.28209479177387814
_C1 = 0.48860251190291987
_C2_XY = 1.0925484305920792
_C2_ZZ = 0.94617469575755997
_C2_ZZ_OFF = 0.31539156525251999
_C2_XX_YY = 0.54627421529603959


def check_sh_degree(degree: int) -> None:
    if degree not in (1, 2, 3):
        raise ValueError(f"sh_encode supports degree 1..3, got {degree}")


def sh_higher_terms(x, y, z, degree: int) -> list:
    """Bands 1..degree-1 of the basis at d = (x, y, z) = 2 * x01 - 1, each (..., 1), in tcnn's order
    (band 0 is the constant SH_C0, built by the caller in its framework)."""
    out = []
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
    return out


TRUNC_EXP_MAX = 15.0  # threestudio trunc_exp: backward uses exp(clamp(x, max=15))
ACTIVATIONS = ("none", "sigmoid", "tanh", "relu", "softplus", "shifted_softplus", "exp", "trunc_exp")


def check_activation(name) -> str:
    """Lower-cased activation key; raises for names threestudio's get_activation would not know."""
    key = "none" if name is None else str(name).lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACTIVATIONS)}")
    return key
