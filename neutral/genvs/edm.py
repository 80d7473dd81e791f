"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models") host math
for GeNVS (jfozard/genvs_unofficial): the Karras sigma schedule (eq. 5), the preconditioning coefficients
(Table 1), the training-sigma draw, the churn of the stochastic sampler (Algorithm 2) and its config.

All of it is numpy on the host, shared by mindspore_impl/genvs/edm.py and torch_ref/genvs/edm.py, so both
trees use the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SOLVERS = ("euler", "heun")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """n sigmas from sigma_max down to sigma_min (EDM eq. 5), then a final 0: float64, shape (n + 1,)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"karras_sigmas: n must be >= 1, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"karras_sigmas: need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if rho <= 0:
        raise ValueError(f"karras_sigmas: rho must be > 0, got {rho}")
    ramp = np.linspace(0.0, 1.0, n)
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min if n > 1 else sigma_max  # exact endpoints
    return np.concatenate([sigmas, [0.0]])


def edm_precond_coefficients(sigma, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1, float64, broadcast over sigma:
    c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4."""
    s = np.asarray(sigma, dtype=np.float64)
    sd = float(sigma_data)
    norm = s * s + sd * sd
    return sd * sd / norm, s * sd / np.sqrt(norm), 1.0 / np.sqrt(norm), np.log(s) / 4.0


def edm_loss_weight(sigma, sigma_data: float = 0.5):
    """lambda(sigma) = (s^2+sd^2)/(s sd)^2 (EDM Table 1); lambda c_out^2 = 1."""
    s = np.asarray(sigma, dtype=np.float64)
    return (s * s + sigma_data ** 2) / (s * sigma_data) ** 2


def sample_training_sigmas(rng, n: int, p_mean: float = 0.5, p_std: float = 1.4, lo: float = 0.03,
                           hi: float = 50.0) -> np.ndarray:
    """n training sigmas exp(p_mean + p_std N(0, 1)) clipped to [lo, hi] (GeNVS: LogNormal(0.5, 1.4) in
    [0.03, 50]); float32 (n,), drawn with the numpy rng's standard_normal."""
    if not 0 < lo <= hi:
        raise ValueError(f"sample_training_sigmas: need 0 < lo <= hi, got {lo}, {hi}")
    z = np.asarray(rng.standard_normal(int(n)), dtype=np.float64)
    return np.clip(np.exp(p_mean + p_std * z), lo, hi).astype(np.float32)


def draw_cond_dropout(rng, batch: int, cond_shape, p: float = 0.1, lo: float = 0.0, hi: float = 1.0):
    """(drop_mask float32 (batch,), noise float32 (batch, *cond_shape)) for uniform_noise_dropout: each sample's
    conditioning is replaced with probability p by uniform noise in [lo, hi) (GeNVS; the rendered features are
    sigmoids, so [0, 1) by default). Mask first, then noise, from the one numpy rng."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"draw_cond_dropout: p must be in [0, 1], got {p}")
    mask = (rng.random(int(batch)) < p).astype(np.float32)
    noise = rng.uniform(lo, hi, size=(int(batch),) + tuple(cond_shape)).astype(np.float32)
    return mask, noise


def churn_gamma(s_churn: float, n_steps: int) -> float:
    """gamma = min(S_churn / N, sqrt(2) - 1) (EDM Algorithm 2)."""
    if n_steps < 1:
        raise ValueError(f"churn_gamma: n_steps must be >= 1, got {n_steps}")
    return min(float(s_churn) / int(n_steps), math.sqrt(2.0) - 1.0)


def step_gammas(sigmas, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf) -> np.ndarray:
    """gamma_i of each step i of the schedule `sigmas` (N + 1 values ending in 0): churn_gamma(S_churn, N)
    where s_tmin <= sigma_i <= s_tmax, else 0 (EDM Algorithm 2, line 4)."""
    sig = np.asarray(sigmas, dtype=np.float64)[:-1]
    g = churn_gamma(s_churn, len(sig))
    return np.where((sig >= s_tmin) & (sig <= s_tmax), g, 0.0)


@dataclass
class EDMSamplerConfig:
    """GeNVS sampling: Karras sigmas (rho 7), 250 Euler steps; deterministic with s_churn 0, stochastic
    otherwise (gamma = min(s_churn / steps, sqrt 2 - 1); GeNVS reaches the clamp), s_noise 1.003 (EDM
    Algorithm 2). sigma_min / sigma_max are EDM's defaults. The output is clipped to [-1, 1] when clip."""
    steps: int = 250
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    solver: str = "euler"
    s_churn: float = 0.0
    s_noise: float = 1.003
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    sigma_data: float = 0.5
    clip: bool = True

    def sigmas(self) -> np.ndarray:
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)


def check_edm_sampler(cfg: EDMSamplerConfig) -> EDMSamplerConfig:
    """ValueError naming the first bad field of cfg; returns cfg."""
    if not isinstance(cfg.steps, (int, np.integer)) or isinstance(cfg.steps, bool) or cfg.steps < 1:
        raise ValueError(f"EDM sampler: steps must be an integer >= 1, got {cfg.steps!r}")
    if not (math.isfinite(cfg.sigma_min) and math.isfinite(cfg.sigma_max) and 0 < cfg.sigma_min < cfg.sigma_max):
        raise ValueError(f"EDM sampler: need 0 < sigma_min < sigma_max (finite), got sigma_min={cfg.sigma_min}, "
                         f"sigma_max={cfg.sigma_max}")
    if not cfg.rho > 0:
        raise ValueError(f"EDM sampler: rho must be > 0, got {cfg.rho}")
    if cfg.solver not in SOLVERS:
        raise ValueError(f"EDM sampler: solver must be one of {', '.join(SOLVERS)}, got {cfg.solver!r}")
    if not (math.isfinite(cfg.s_churn) and cfg.s_churn >= 0):
        raise ValueError(f"EDM sampler: s_churn must be >= 0, got {cfg.s_churn}")
    if not (math.isfinite(cfg.s_noise) and cfg.s_noise > 0):
        raise ValueError(f"EDM sampler: s_noise must be > 0, got {cfg.s_noise}")
    if not (cfg.s_tmin >= 0 and cfg.s_tmin <= cfg.s_tmax):
        raise ValueError(f"EDM sampler: need 0 <= s_tmin <= s_tmax, got s_tmin={cfg.s_tmin}, s_tmax={cfg.s_tmax}")
    if not (math.isfinite(cfg.sigma_data) and cfg.sigma_data > 0):
        raise ValueError(f"EDM sampler: sigma_data must be > 0, got {cfg.sigma_data}")
    return cfg
