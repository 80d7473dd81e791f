"""EDM preconditioning, learned-variance loss, conditioning dropout and the EDM sampler (MindSpore).

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models": Table 1
(preconditioning, loss weight) and Algorithm 2 (stochastic sampler, Euler or Heun); GeNVS
(jfozard/genvs_unofficial) adds a learned per-pixel log-variance u to the loss,
mean(((F_theta - F_target)^2 e^-u + u) / 2), conditioning replaced by uniform noise, and clipped output.
Host math (schedule, gammas) comes from neutral/genvs/edm.py; noise is drawn on the host with numpy so the
torch twin (torch_ref/genvs/edm.py) sees the same numbers.
"""
from __future__ import annotations

import math
from typing import Callable

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from tqdm import tqdm

from neutral.genvs.edm import SOLVERS, step_gammas

DenoiseFn = Callable[[ms.Tensor, float], ms.Tensor]


def _per_sample(v, ndim: int):
    """(B,) -> (B, 1, ..., 1) with ndim dims."""
    return v.reshape(v.shape[:1] + (1,) * (ndim - 1))


class EDMPrecond(nn.Cell):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, cond) around `net` (EDM Table 1).

    net(x_in, c_noise, cond) returns F, or (F, u) with u the log-variance of the learned-variance loss
    (per pixel, F's shape, or per sample, (B,)). sigma is per sample, (B,), float32.
    construct returns (D, u); u is None when the net returns F only.
    """

    def __init__(self, net: nn.Cell, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma, ndim: int):
        """(c_skip, c_out, c_in) shaped (B, 1, ..., 1) and c_noise (B,)."""
        sd2 = self.sigma_data ** 2
        s = _per_sample(sigma, ndim)
        norm = s * s + sd2
        return sd2 / norm, s * self.sigma_data / ops.sqrt(norm), 1.0 / ops.sqrt(norm), ops.log(sigma) / 4.0

    def net_outputs(self, x, sigma, cond=None):
        """(F, u, c_skip, c_out): the raw network output at c_in x and its coefficients."""
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma, x.ndim)
        out = self.net(c_in * x, c_noise, cond)
        f, u = out if isinstance(out, (tuple, list)) else (out, None)
        return f, u, c_skip, c_out

    def construct(self, x, sigma, cond=None):
        f, u, c_skip, c_out = self.net_outputs(x, sigma, cond)
        return c_skip * x + c_out * f, u


def edm_loss(precond: EDMPrecond, y, noise, sigma, cond=None):
    """EDM training loss at y + sigma * noise (noise ~ N(0, I), drawn on the host; sigma (B,)).

    F_target = (y - c_skip (y + n)) / c_out, n = sigma * noise, so D - y = c_out (F_theta - F_target) and,
    with lambda(sigma) c_out^2 = 1, the standard EDM loss is lambda ||D - y||^2 = ||F_theta - F_target||^2.
    - net without u: mean(lambda(sigma) (D - y)^2) = mean((F_theta - F_target)^2) (EDM eq. 2 with Table 1);
    - net with u (GeNVS): mean(((F_theta - F_target)^2 e^-u + u) / 2), the Gaussian negative log-likelihood
      of F_target up to a constant; at u = 0 it is exactly half the standard loss.
    """
    n = _per_sample(sigma, y.ndim) * noise
    f, u, c_skip, c_out = precond.net_outputs(y + n, sigma, cond)
    target = (y - c_skip * (y + n)) / c_out
    sq = ops.square(f - target)
    if u is None:
        return sq.mean()
    if u.ndim == 1:
        u = _per_sample(u, sq.ndim)
    return ((sq * ops.exp(-u) + u) / 2).mean()  # u broadcasts against sq


def uniform_noise_dropout(cond, drop_mask, noise):
    """cond with the samples whose drop_mask (B,) is 1 replaced by `noise` (cond's shape; GeNVS draws it
    uniform, with p 0.1: neutral/genvs/edm.py draw_cond_dropout)."""
    m = _per_sample(drop_mask, cond.ndim) > 0.5
    return ops.where(m.broadcast_to(cond.shape), noise, cond)


def sample_edm(denoise_fn: DenoiseFn, x_T_noise, sigmas, solver: str = "euler", s_churn: float = 0.0,
               s_noise: float = 1.0, s_tmin: float = 0.0, s_tmax: float = math.inf, rng=None,
               progress: bool = False, clip: bool = True, callback=None):
    """EDM Algorithm 2 from x_T_noise ~ N(0, I) (float32 tensor) along `sigmas` (N + 1, ending in 0;
    neutral karras_sigmas). denoise_fn(x, sigma) -> D(x; sigma), sigma a Python float.

    Per step: gamma (neutral step_gammas), sigma_hat = sigma (1 + gamma), x_hat = x + sqrt(sigma_hat^2 -
    sigma^2) s_noise eps (eps from the numpy rng), Euler step with d = (x_hat - D(x_hat, sigma_hat)) / sigma_hat,
    then Heun's correction when solver is "heun" and sigma_next != 0. Deterministic when s_churn is 0.
    The result is clipped to [-1, 1] when clip (GeNVS).
    """
    if solver not in SOLVERS:
        raise ValueError(f"sample_edm: solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    sig = np.asarray(sigmas, dtype=np.float64)
    gammas = step_gammas(sig, s_churn, s_tmin, s_tmax)
    if np.any(gammas > 0) and rng is None:
        raise ValueError("sample_edm: s_churn > 0 needs a numpy rng for the churn noise")
    x = x_T_noise * float(sig[0])
    for i in tqdm(range(len(sig) - 1), desc=f"EDM {solver}", disable=not progress):
        s_cur, s_next = float(sig[i]), float(sig[i + 1])
        s_hat = s_cur * (1.0 + float(gammas[i]))
        x_hat = x
        if gammas[i] > 0:
            eps = ms.Tensor(rng.standard_normal(tuple(x.shape)).astype(np.float32))
            x_hat = x + float(math.sqrt(s_hat ** 2 - s_cur ** 2) * s_noise) * eps
        d = (x_hat - denoise_fn(x_hat, s_hat)) / s_hat
        x = x_hat + (s_next - s_hat) * d
        if solver == "heun" and s_next != 0:
            d_next = (x - denoise_fn(x, s_next)) / s_next
            x = x_hat + (s_next - s_hat) * (0.5 * d + 0.5 * d_next)
        if callback is not None:
            callback(i, x)
    return ops.clamp(x, -1.0, 1.0) if clip else x
