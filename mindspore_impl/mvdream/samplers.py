"""Samplers for text-to-multiview generation: DDIM (as LDM/MVDream), DPM-Solver++ 2M and UniPC.

Written here rather than taken from a library: the DDIM numerics must be the original LDM ones
(uniform discretization with the +1 offset, alphas_prev starting at alphas_cumprod[0], LDM's eta
sigma) and DPM-Solver++ 2M follows the diffusers DPMSolverMultistepScheduler defaults
(dpmsolver++, midpoint, linspace spacing, first-order first and last step, final sigma 0).
UniPC (Zhao et al. 2023) follows diffusers' UniPCMultistepScheduler (data prediction, bh1/bh2,
orders 1-3, lower-order final steps, corrector after every model call but the first, final sigma 0);
its coefficients come from neutral/mvdream/samplers.py.

The loop over steps runs on the host. The model is reached through `eps_fn(x, t) -> eps`,
x (N, 4, h, w) float32 latents of every view, t a Python int; `guided_eps_fn` builds one with
classifier-free guidance. Noise comes from an explicit numpy RNG, so the torch twin
(torch_ref/mvdream/samplers.py) can draw exactly the same numbers.
"""
from __future__ import annotations

from typing import Callable, Optional

import mindspore as ms
import numpy as np
from mindspore import ops
from tqdm import tqdm

from neutral.mvdream.samplers import check_sampler, check_unipc, ddim_timesteps, unipc_orders, unipc_update

EpsFn = Callable[[ms.Tensor, int], ms.Tensor]


def ddim_parameters(alphas_cumprod: np.ndarray, timesteps: np.ndarray, eta: float):
    """(sigmas, alphas, alphas_prev) per DDIM step, float32 like the buffers upstream reads."""
    ac = np.asarray(alphas_cumprod, dtype=np.float32)
    alphas = ac[timesteps].astype(np.float64)
    alphas_prev = np.concatenate([ac[:1], ac[timesteps[:-1]]]).astype(np.float64)
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    return sigmas.astype(np.float32), alphas.astype(np.float32), alphas_prev.astype(np.float32)


def ddim_step(x, e_t, a_t: float, a_prev: float, sigma_t: float, noise=None, clip_x0: Optional[float] = None):
    """One DDIM update; returns (x_prev, pred_x0). Coefficients are float32 scalars.

    clip_x0 = c: pred_x0 clipped to [-c, c] and eps recomputed from it (DDPM's clip_denoised; pixel space,
    where an eps error at high t is amplified by sqrt(1 - a_t) / sqrt(a_t) in pred_x0).
    """
    f32 = np.float32
    sqrt_one_minus_at = f32(np.sqrt(f32(1.0) - f32(a_t)))
    sqrt_at = f32(np.sqrt(f32(a_t)))
    pred_x0 = (x - float(sqrt_one_minus_at) * e_t) / float(sqrt_at)
    if clip_x0 is not None:
        pred_x0 = ops.clamp(pred_x0, -float(clip_x0), float(clip_x0))
        e_t = (x - float(sqrt_at) * pred_x0) / float(sqrt_one_minus_at)
    dir_xt = float(f32(np.sqrt(f32(1.0) - f32(a_prev) - f32(sigma_t) ** 2))) * e_t
    x_prev = float(f32(np.sqrt(f32(a_prev)))) * pred_x0 + dir_xt
    if noise is not None:
        x_prev = x_prev + float(sigma_t) * noise
    return x_prev, pred_x0


def sample_ddim(eps_fn: EpsFn, x_T, alphas_cumprod: np.ndarray, steps: int = 50, eta: float = 0.0,
                rng: Optional[np.random.RandomState] = None, progress: bool = False, callback=None,
                clip_x0: Optional[float] = None):
    """DDIM from x_T (float32 tensor) to x_0; per-step noise (eta > 0) drawn from `rng`."""
    ts = ddim_timesteps(steps, len(alphas_cumprod))
    sigmas, alphas, alphas_prev = ddim_parameters(alphas_cumprod, ts, eta)
    if eta > 0 and rng is None:
        raise ValueError("eta > 0 needs a numpy rng for the per-step noise")
    x = x_T
    for i, index in enumerate(tqdm(range(len(ts) - 1, -1, -1), desc="DDIM", disable=not progress)):
        e_t = eps_fn(x, int(ts[index]))
        noise = None
        if sigmas[index] > 0:
            noise = ms.Tensor(rng.standard_normal(tuple(x.shape)).astype(np.float32))
        x, _ = ddim_step(x, e_t, alphas[index], alphas_prev[index], sigmas[index], noise, clip_x0)
        if callback is not None:
            callback(i, x)
    return x


# ----------------------------------------------------------------------------- DPM-Solver++ 2M
def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional train timestep of each sigma, by linear interpolation in log sigma."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    return np.interp(log_sigma, log_sigmas, np.arange(len(log_sigmas), dtype=np.float64))


def dpmpp_schedule(alphas_cumprod: np.ndarray, steps: int, karras: bool = False):
    """(timesteps int64 (S,), sigmas float32 (S+1,) ending in 0), diffusers' linspace spacing."""
    n_train = len(alphas_cumprod)
    if not 1 <= steps <= n_train:
        raise ValueError(f"steps must be in [1, {n_train}], got {steps}")
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    train_sigmas = np.sqrt((1 - ac) / ac)
    if karras:
        sigmas = karras_sigmas(train_sigmas[0], train_sigmas[-1], steps)
        timesteps = np.round(sigma_to_t(sigmas, np.log(train_sigmas)))
    else:
        timesteps = np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1].copy()
        sigmas = np.interp(timesteps, np.arange(n_train), train_sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return timesteps.astype(np.int64), sigmas


def _alpha_sigma(sigma: float):
    alpha = 1.0 / np.sqrt(sigma ** 2 + 1.0)
    return alpha, sigma * alpha


def dpmpp_2m_coefficients(sigmas: np.ndarray, i: int):
    """Update x_{i+1} = c_x x_i + c0 D0 + c1 D1 for step i, with D0 = x0_i, D1 = x0_i - x0_{i-1}.

    First step and the final step (sigma 0) are first order, the others second order (midpoint).
    """
    s0, t = float(sigmas[i]), float(sigmas[i + 1])
    if t == 0.0:
        return 0.0, 1.0, 0.0
    alpha_t, sig_t = _alpha_sigma(t)
    alpha_s0, sig_s0 = _alpha_sigma(s0)
    lam = lambda a, s: np.log(a) - np.log(s)  # noqa: E731
    h = lam(alpha_t, sig_t) - lam(alpha_s0, sig_s0)
    c_x, c0 = sig_t / sig_s0, -alpha_t * (np.exp(-h) - 1.0)
    if i == 0:
        return c_x, c0, 0.0
    alpha_s1, sig_s1 = _alpha_sigma(float(sigmas[i - 1]))
    r0 = (lam(alpha_s0, sig_s0) - lam(alpha_s1, sig_s1)) / h
    return c_x, c0, 0.5 * c0 / r0


def sample_dpmpp_2m(eps_fn: EpsFn, x_T, alphas_cumprod: np.ndarray, steps: int = 20, karras: bool = False,
                    progress: bool = False, callback=None, clip_x0: Optional[float] = None):
    """DPM-Solver++ 2M (data prediction, multistep) from x_T; deterministic. clip_x0: x0 clipped to [-c, c]."""
    timesteps, sigmas = dpmpp_schedule(alphas_cumprod, steps, karras)
    x, prev_x0 = x_T, None
    for i in tqdm(range(len(timesteps)), desc="DPM++ 2M", disable=not progress):
        eps = eps_fn(x, int(timesteps[i]))
        alpha_s, sig_s = _alpha_sigma(float(sigmas[i]))
        x0 = (x - float(sig_s) * eps) / float(alpha_s)
        if clip_x0 is not None:
            x0 = ops.clamp(x0, -float(clip_x0), float(clip_x0))
        c_x, c0, c1 = dpmpp_2m_coefficients(sigmas, i)
        x_new = float(c0) * x0
        if c_x != 0.0:
            x_new = float(c_x) * x + x_new
        if c1 != 0.0:
            x_new = x_new + float(c1) * (x0 - prev_x0)
        x, prev_x0 = x_new, x0
        if callback is not None:
            callback(i, x)
    return x


# ----------------------------------------------------------------------------- UniPC
def _unipc_apply(c, x, history, m_new=None):
    """c.c_x x + c.c_m0 m0 + sum_k c.c_d[k-1] (m_{-k} - m0) [+ c.c_new (m_new - m0)], m0 = history[-1]."""
    m0 = history[-1]
    out = float(c.c_m0) * m0
    if c.c_x != 0.0:
        out = float(c.c_x) * x + out
    for k, ck in enumerate(c.c_d, start=1):
        out = out + float(ck) * (history[-1 - k] - m0)
    if m_new is not None:
        out = out + float(c.c_new) * (m_new - m0)
    return out


def sample_unipc(eps_fn: EpsFn, x_T, alphas_cumprod: np.ndarray, steps: int = 20, order: int = 2,
                 variant: str = "bh2", karras: bool = False, progress: bool = False, callback=None,
                 clip_x0: Optional[float] = None):
    """UniPC multistep (UniP predictor + UniC corrector, data prediction) from x_T; deterministic.

    One model call per step: the model output at the predicted x_i corrects x_i (UniC) and then drives
    the next prediction. callback(i, x) gets the predicted x_{i+1}, as diffusers' step() returns it.
    """
    check_unipc(order, variant)
    timesteps, sigmas = dpmpp_schedule(alphas_cumprod, steps, karras)
    orders = unipc_orders(len(timesteps), order)
    x, last_x, history = x_T, None, []
    for i in tqdm(range(len(timesteps)), desc="UniPC", disable=not progress):
        eps = eps_fn(x, int(timesteps[i]))
        alpha_s, sig_s = _alpha_sigma(float(sigmas[i]))
        m = (x - float(sig_s) * eps) / float(alpha_s)
        if clip_x0 is not None:
            m = ops.clamp(m, -float(clip_x0), float(clip_x0))
        if i > 0:  # UniC: x_i again from x_{i-1}, now with m_i
            x = _unipc_apply(unipc_update(sigmas, i - 1, orders[i - 1], variant, corrector=True), last_x, history, m)
        history = (history + [m])[-order:]
        last_x, x = x, _unipc_apply(unipc_update(sigmas, i, orders[i], variant), x, history)
        if callback is not None:
            callback(i, x)
    return x


def sample(name: str, eps_fn: EpsFn, x_T, alphas_cumprod: np.ndarray, steps: int, eta: float = 0.0,
           rng=None, karras: bool = False, progress: bool = False, callback=None, clip_x0: Optional[float] = None,
           order: int = 2, variant: str = "bh2"):
    """Dispatch by sampler name ("ddim" | "dpmpp2m" | "unipc"); order/variant: UniPC's."""
    check_sampler(name, eta)
    if name == "ddim":
        return sample_ddim(eps_fn, x_T, alphas_cumprod, steps, eta, rng, progress, callback, clip_x0)
    if name == "unipc":
        return sample_unipc(eps_fn, x_T, alphas_cumprod, steps, order, variant, karras, progress, callback, clip_x0)
    return sample_dpmpp_2m(eps_fn, x_T, alphas_cumprod, steps, karras, progress, callback, clip_x0)


# ----------------------------------------------------------------------------- guidance
def guided_eps_fn(model_fn, context, uncontext=None, scale: float = 1.0, camera=None,
                  num_frames: int = 1) -> EpsFn:
    """Classifier-free guidance around `model_fn(x, t (B,), context, camera, num_frames)`.

    Like LDM: [uncond; cond] batches concatenated in one call, e = e_u + scale (e_c - e_u).
    context/uncontext (N, 77, C), camera (N, 16) or None; a negative prompt is the uncontext.
    """
    n = context.shape[0]
    if uncontext is None or scale == 1.0:
        def eps_single(x, t):
            return model_fn(x, ms.Tensor(np.full((n,), t, dtype=np.int32)), context, camera, num_frames)
        return eps_single
    c_in = ops.concat([uncontext, context], axis=0)
    cam_in = None if camera is None else ops.concat([camera, camera], axis=0)
    t_cache: dict[int, ms.Tensor] = {}

    def eps_cfg(x, t):
        if t not in t_cache:
            t_cache.clear()
            t_cache[t] = ms.Tensor(np.full((2 * n,), t, dtype=np.int32))
        out = model_fn(ops.concat([x, x], axis=0), t_cache[t], c_in, cam_in, num_frames)
        e_u, e_c = out[:n], out[n:]
        return e_u + scale * (e_c - e_u)
    return eps_cfg
