"""Framework-neutral part of the samplers: sampler names, argument checks, LDM's DDIM timesteps and the
UniPC coefficients (host numpy). Shared by mindspore_impl/ and torch_ref/mvdream/samplers.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


SAMPLERS = ("ddim", "dpmpp2m", "unipc")
UNIPC_ORDERS = (1, 2, 3)
UNIPC_VARIANTS = ("bh1", "bh2")


def check_sampler(name: str, eta: float) -> None:
    """Raise for an unknown sampler name, or eta != 0 with a deterministic sampler (dpmpp2m, unipc)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
    if name != "ddim" and eta != 0.0:
        raise ValueError(f"{name} is deterministic: eta must be 0")


def check_unipc(order: int, variant: str) -> None:
    if order not in UNIPC_ORDERS:
        raise ValueError(f"UniPC order must be one of {UNIPC_ORDERS}, got {order!r}")
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"UniPC variant must be one of {UNIPC_VARIANTS}, got {variant!r}")


# ----------------------------------------------------------------------------- DDIM
def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """LDM "uniform" discretization: range(0, T, T // S) + 1 (ascending, int64)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {num_steps}")
    c = num_train_timesteps // num_steps
    steps_out = np.asarray(list(range(0, num_train_timesteps, c)), dtype=np.int64) + 1
    # like upstream, S that does not divide T gives ceil(T / c) steps; a last step at T is invalid
    if steps_out[-1] >= num_train_timesteps:
        raise ValueError(f"DDIM with {num_steps} steps would sample timestep {steps_out[-1]} "
                         f"(uniform spacing {c} + 1 >= {num_train_timesteps}); pick another step count")
    return steps_out


# ----------------------------------------------------------------------------- UniPC
# Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"
# (arXiv:2302.04867), multistep B(h) form with data prediction, as diffusers' UniPCMultistepScheduler.
@dataclass(frozen=True)
class UniPCUpdate:
    """x_{j+1} = c_x x_j + c_m0 m_j + sum_k c_d[k-1] (m_{j-k} - m_j) [+ c_new (m_{j+1} - m_j), corrector].

    m_j: data prediction (x0) at sigmas[j]; the corrector's m_{j+1} is the one at the predicted x_{j+1}.
    """
    c_x: float
    c_m0: float
    c_d: tuple = ()
    c_new: float = 0.0


def unipc_orders(steps: int, order: int) -> list:
    """Predictor order per step: warm-up from 1 and, like diffusers (lower_order_final at any step count),
    at most steps - i at step i, so the last step (to sigma 0) is first order."""
    return [min(order, steps - i, i + 1) for i in range(steps)]


def _lambda(sigma: float) -> float:
    """log(alpha / sigma_t) of the VP process with sigma = sigma_t / alpha (= -log sigma)."""
    return -np.log(sigma)


def unipc_update(sigmas: np.ndarray, j: int, order: int, variant: str = "bh2",
                 corrector: bool = False) -> UniPCUpdate:
    """Coefficients of one UniP step (corrector=False) or UniC step from sigmas[j] to sigmas[j+1] (float64).

    order: points from the history (m_j, m_{j-1}, ...); UniC adds m_{j+1}, UniC-p has order p + 1.
    As diffusers' multistep_uni_p_bh_update / multistep_uni_c_bh_update: hh = -h, B = hh (bh1) or
    expm1(hh) (bh2), rows R_i = (r_1 .. r_{p-1}, 1)^(i-1) with r_k = (lambda_{j-k} - lambda_j) / h,
    b_i = i! hh phi_{i+1}(hh) / B, i = 1..p; UniP solves the leading (p-1) system (order 2: rho = 0.5),
    UniC the whole one (order 1: rho = 0.5).
    """
    check_unipc(order, variant)
    s0, t = float(sigmas[j]), float(sigmas[j + 1])
    if t == 0.0:
        # the limit h -> inf: x_{j+1} = m_j (diffusers' bh1 computes -inf * 0 = nan here)
        if order != 1 or corrector:
            raise ValueError("the step to sigma 0 is a first-order UniP step")
        return UniPCUpdate(0.0, 1.0)
    alpha_t, alpha_s0 = 1.0 / np.sqrt(t * t + 1.0), 1.0 / np.sqrt(s0 * s0 + 1.0)
    lam_s0 = _lambda(s0)
    h = _lambda(t) - lam_s0
    hh = -h
    phi1 = np.expm1(hh)
    b_h = hh if variant == "bh1" else np.expm1(hh)
    c_x, c_m0 = (t * alpha_t) / (s0 * alpha_s0), -alpha_t * phi1  # sigma_t / sigma_s0, -alpha_t h phi_1
    rks = [(_lambda(float(sigmas[j - k])) - lam_s0) / h for k in range(1, order)]
    r_all = np.asarray(rks + [1.0])
    R = np.stack([r_all ** i for i in range(order)])
    b = np.empty(order)
    h_phi_k, fact = phi1 / hh - 1.0, 1.0
    for i in range(order):
        b[i] = h_phi_k * fact / b_h
        fact *= i + 2
        h_phi_k = h_phi_k / hh - 1.0 / fact
    if corrector:
        rho = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        rho_d, c_new = rho[:-1], -alpha_t * b_h * rho[-1]
    else:
        rho_d = np.zeros(0) if order == 1 else np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        c_new = 0.0
    c_d = tuple(float(-alpha_t * b_h * rho_k / r_k) for rho_k, r_k in zip(rho_d, rks))
    return UniPCUpdate(float(c_x), float(c_m0), c_d, float(c_new))
