"""PyTorch twin of mindspore_impl/mvdream/samplers.py.

DDIM follows LDM's DDIMSampler.make_schedule / p_sample_ddim (torch float32 buffers, torch.full
coefficients); DPM-Solver++ 2M follows diffusers' DPMSolverMultistepScheduler (float32 sigma
table, torch scalar math); UniPC follows diffusers' UniPCMultistepScheduler.step (x0 from torch
scalar math, the UniP/UniC coefficients from neutral/mvdream/samplers.py). Same eps_fn / rng
interface as the MindSpore samplers.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from neutral.mvdream.samplers import check_sampler, check_unipc, ddim_timesteps, unipc_orders, unipc_update

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def ddim_parameters(alphas_cumprod, timesteps, eta: float):
    alphacums = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float32))
    alphas = alphacums[timesteps]
    alphas_prev = torch.tensor([alphacums[0].item()] + alphacums[timesteps[:-1]].tolist(), dtype=torch.float64)
    sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - alphas.double()) * (1 - alphas.double() / alphas_prev))
    return sigmas.float(), alphas.float(), alphas_prev.float()


@torch.no_grad()
def sample_ddim(eps_fn: EpsFn, x_T, alphas_cumprod, steps: int = 50, eta: float = 0.0,
                rng: Optional[np.random.RandomState] = None, progress: bool = False, callback=None,
                clip_x0: Optional[float] = None):
    ts = ddim_timesteps(steps, len(alphas_cumprod))
    sigmas, alphas, alphas_prev = ddim_parameters(alphas_cumprod, ts, eta)
    sqrt_one_minus_alphas = torch.sqrt(1.0 - alphas)
    if eta > 0 and rng is None:
        raise ValueError("eta > 0 needs a numpy rng for the per-step noise")
    img, b = x_T, x_T.shape[0]
    time_range = np.flip(ts)
    total = ts.shape[0]
    for i, step in enumerate(tqdm(time_range, desc="DDIM", disable=not progress)):
        index = total - i - 1
        e_t = eps_fn(img, int(step))
        a_t = torch.full((b, 1, 1, 1), alphas[index].item(), device=img.device)
        a_prev = torch.full((b, 1, 1, 1), alphas_prev[index].item(), device=img.device)
        sigma_t = torch.full((b, 1, 1, 1), sigmas[index].item(), device=img.device)
        sqrt_one_minus_at = torch.full((b, 1, 1, 1), sqrt_one_minus_alphas[index].item(), device=img.device)
        pred_x0 = (img - sqrt_one_minus_at * e_t) / a_t.sqrt()
        if clip_x0 is not None:  # DDPM's clip_denoised, eps recomputed from the clipped x0
            pred_x0 = pred_x0.clamp(-clip_x0, clip_x0)
            e_t = (img - a_t.sqrt() * pred_x0) / sqrt_one_minus_at
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * e_t
        img = a_prev.sqrt() * pred_x0 + dir_xt
        if sigmas[index] > 0:
            noise = torch.from_numpy(rng.standard_normal(tuple(img.shape)).astype(np.float32)).to(img.device)
            img = img + sigma_t * noise
        if callback is not None:
            callback(i, img)
    return img


def dpmpp_schedule(alphas_cumprod, steps: int, karras: bool = False):
    n_train = len(alphas_cumprod)
    if not 1 <= steps <= n_train:
        raise ValueError(f"steps must be in [1, {n_train}], got {steps}")
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    sigmas = np.sqrt((1 - ac) / ac)
    log_sigmas = np.log(sigmas)
    if karras:
        rho, ramp = 7.0, np.linspace(0, 1, steps)
        lo, hi = sigmas[0] ** (1 / rho), sigmas[-1] ** (1 / rho)
        sig = (hi + ramp * (lo - hi)) ** rho
        # diffusers' _sigma_to_t
        log_sigma = np.log(np.maximum(sig, 1e-10))
        dists = log_sigma - log_sigmas[:, None]
        low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=n_train - 2)
        low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
        w = np.clip((low - log_sigma) / (low - high), 0, 1)
        timesteps = ((1 - w) * low_idx + w * (low_idx + 1)).round()
    else:
        timesteps = np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1].copy()
        sig = np.interp(timesteps, np.arange(n_train), sigmas)
    sig = np.concatenate([sig, [0.0]]).astype(np.float32)
    return timesteps.astype(np.int64), torch.from_numpy(sig)


def _alpha_sigma(sigma):
    alpha = 1 / ((sigma ** 2 + 1) ** 0.5)
    return alpha, sigma * alpha


@torch.no_grad()
def sample_dpmpp_2m(eps_fn: EpsFn, x_T, alphas_cumprod, steps: int = 20, karras: bool = False,
                    progress: bool = False, callback=None, clip_x0: Optional[float] = None):
    timesteps, sigmas = dpmpp_schedule(alphas_cumprod, steps, karras)
    x, outputs = x_T, []
    n = len(timesteps)
    for i in tqdm(range(n), desc="DPM++ 2M", disable=not progress):
        eps = eps_fn(x, int(timesteps[i]))
        alpha_s0, sigma_s0 = _alpha_sigma(sigmas[i])
        x0 = (x - sigma_s0 * eps) / alpha_s0
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        outputs = (outputs + [x0])[-2:]
        alpha_t, sigma_t = _alpha_sigma(sigmas[i + 1])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = lambda_t - lambda_s0
        if i == 0 or i == n - 1:  # first order (the final sigma is 0: x = x0)
            x = (sigma_t / sigma_s0) * x - (alpha_t * (torch.exp(-h) - 1.0)) * x0
        else:
            alpha_s1, sigma_s1 = _alpha_sigma(sigmas[i - 1])
            lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
            r0 = (lambda_s0 - lambda_s1) / h
            m0, m1 = outputs[-1], outputs[-2]
            d0, d1 = m0, (1.0 / r0) * (m0 - m1)
            x = ((sigma_t / sigma_s0) * x - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                 - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1)
        if callback is not None:
            callback(i, x)
    return x


def _unipc_update(c, x, model_outputs, this_model_output=None):
    """diffusers' x_t_ - alpha_t B_h (sum_k rho_k D1_k [+ rho_c D1_t]) with the coefficients folded in."""
    m0 = model_outputs[-1]
    x_t = c.c_x * x + c.c_m0 * m0
    for k, ck in enumerate(c.c_d, start=1):
        x_t = x_t + ck * (model_outputs[-(k + 1)] - m0)
    if this_model_output is not None:
        x_t = x_t + c.c_new * (this_model_output - m0)
    return x_t


@torch.no_grad()
def sample_unipc(eps_fn: EpsFn, x_T, alphas_cumprod, steps: int = 20, order: int = 2, variant: str = "bh2",
                 karras: bool = False, progress: bool = False, callback=None, clip_x0: Optional[float] = None):
    check_unipc(order, variant)
    timesteps, sigmas = dpmpp_schedule(alphas_cumprod, steps, karras)
    sigmas_np = sigmas.numpy()
    orders = unipc_orders(len(timesteps), order)
    sample, last_sample, model_outputs = x_T, None, []
    for i in tqdm(range(len(timesteps)), desc="UniPC", disable=not progress):
        eps = eps_fn(sample, int(timesteps[i]))
        alpha_t, sigma_t = _alpha_sigma(sigmas[i])
        x0_pred = (sample - sigma_t * eps) / alpha_t  # convert_model_output
        if clip_x0 is not None:
            x0_pred = x0_pred.clamp(-clip_x0, clip_x0)
        if i > 0:  # multistep_uni_c_bh_update with the order of the previous predictor
            c = unipc_update(sigmas_np, i - 1, orders[i - 1], variant, corrector=True)
            sample = _unipc_update(c, last_sample, model_outputs, x0_pred)
        model_outputs = (model_outputs + [x0_pred])[-order:]
        last_sample = sample
        sample = _unipc_update(unipc_update(sigmas_np, i, orders[i], variant), sample, model_outputs)
        if callback is not None:
            callback(i, sample)
    return sample


def sample(name: str, eps_fn: EpsFn, x_T, alphas_cumprod, steps: int, eta: float = 0.0, rng=None,
           karras: bool = False, progress: bool = False, callback=None, clip_x0: Optional[float] = None,
           order: int = 2, variant: str = "bh2"):
    check_sampler(name, eta)
    if name == "ddim":
        return sample_ddim(eps_fn, x_T, alphas_cumprod, steps, eta, rng, progress, callback, clip_x0)
    if name == "unipc":
        return sample_unipc(eps_fn, x_T, alphas_cumprod, steps, order, variant, karras, progress, callback, clip_x0)
    return sample_dpmpp_2m(eps_fn, x_T, alphas_cumprod, steps, karras, progress, callback, clip_x0)


def guided_eps_fn(model_fn, context, uncontext=None, scale: float = 1.0, camera=None,
                  num_frames: int = 1) -> EpsFn:
    """LDM classifier-free guidance: one call on cat([uncond, cond]), e_u + s (e_c - e_u)."""
    n = context.shape[0]
    if uncontext is None or scale == 1.0:
        return lambda x, t: model_fn(x, torch.full((n,), t, dtype=torch.long, device=context.device), context,
                                     camera, num_frames)
    c_in = torch.cat([uncontext, context])
    cam_in = None if camera is None else torch.cat([camera, camera])

    def eps_cfg(x, t):
        out = model_fn(torch.cat([x] * 2), torch.full((2 * n,), t, dtype=torch.long, device=x.device), c_in, cam_in,
                       num_frames)
        e_u, e_c = out.chunk(2)
        return e_u + scale * (e_c - e_u)
    return eps_cfg
