"""PyTorch twin of mindspore_impl/genvs/edm.py: EDM preconditioning, the learned-variance loss, uniform-noise
conditioning dropout and EDM Algorithm 2, written as Karras et al. 2022 ("Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1, Algorithm 2) and GeNVS (jfozard/genvs_unofficial) compute them.
Same names, arguments and host rng use as the MindSpore module.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from neutral.genvs.edm import SOLVERS, step_gammas

DenoiseFn = Callable[[torch.Tensor, float], torch.Tensor]


def _per_sample(v, ndim: int):
    return v.reshape(v.shape[:1] + (1,) * (ndim - 1))


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, cond); forward returns (D, u), u None when the net
    returns F only. sigma is per sample, (B,)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma, ndim: int):
        sd2 = self.sigma_data ** 2
        s = _per_sample(sigma, ndim)
        norm = s * s + sd2
        return sd2 / norm, s * self.sigma_data / torch.sqrt(norm), 1.0 / torch.sqrt(norm), torch.log(sigma) / 4.0

    def net_outputs(self, x, sigma, cond=None):
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma, x.ndim)
        out = self.net(c_in * x, c_noise, cond)
        f, u = out if isinstance(out, (tuple, list)) else (out, None)
        return f, u, c_skip, c_out

    def forward(self, x, sigma, cond=None):
        f, u, c_skip, c_out = self.net_outputs(x, sigma, cond)
        return c_skip * x + c_out * f, u


def edm_loss(precond: EDMPrecond, y, noise, sigma, cond=None):
    """mean((F_theta - F_target)^2) without u (= mean(lambda (D - y)^2)); with u
    mean(((F_theta - F_target)^2 e^-u + u) / 2). n = sigma * noise."""
    n = _per_sample(sigma, y.ndim) * noise
    f, u, c_skip, c_out = precond.net_outputs(y + n, sigma, cond)
    target = (y - c_skip * (y + n)) / c_out
    sq = (f - target) ** 2
    if u is None:
        return sq.mean()
    if u.ndim == 1:
        u = _per_sample(u, sq.ndim)
    return ((sq * torch.exp(-u) + u) / 2).mean()


def uniform_noise_dropout(cond, drop_mask, noise):
    m = _per_sample(drop_mask, cond.ndim) > 0.5
    return torch.where(m, noise, cond)


@torch.no_grad()
def sample_edm(denoise_fn: DenoiseFn, x_T_noise, sigmas, solver: str = "euler", s_churn: float = 0.0,
               s_noise: float = 1.0, s_tmin: float = 0.0, s_tmax: float = math.inf, rng=None,
               progress: bool = False, clip: bool = True, callback=None):
    if solver not in SOLVERS:
        raise ValueError(f"sample_edm: solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    sig = np.asarray(sigmas, dtype=np.float64)
    gammas = step_gammas(sig, s_churn, s_tmin, s_tmax)
    if np.any(gammas > 0) and rng is None:
        raise ValueError("sample_edm: s_churn > 0 needs a numpy rng for the churn noise")
    x = x_T_noise * float(sig[0])
    for i in tqdm(range(len(sig) - 1), desc=f"EDM {solver}", disable=not progress):
        t_cur, t_next = float(sig[i]), float(sig[i + 1])
        gamma = float(gammas[i])
        t_hat = t_cur * (1.0 + gamma)
        x_hat = x
        if gamma > 0:
            eps = torch.as_tensor(rng.standard_normal(tuple(x.shape)).astype(np.float32), device=x.device)
            x_hat = x + float(math.sqrt(t_hat ** 2 - t_cur ** 2) * s_noise) * eps
        d_cur = (x_hat - denoise_fn(x_hat, t_hat)) / t_hat
        x = x_hat + (t_next - t_hat) * d_cur
        if solver == "heun" and t_next != 0:
            d_prime = (x - denoise_fn(x, t_next)) / t_next
            x = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if callback is not None:
            callback(i, x)
    return x.clamp(-1.0, 1.0) if clip else x
