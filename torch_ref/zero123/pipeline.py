"""PyTorch twin of mindspore_impl/zero123/pipeline.py: novel views of a condition image with classifier-free
guidance whose unconditional branch is zeros for c_concat and c_crossattn (cvlab-columbia/zero123
zero123/gradio_new.py `sample_model`), on torch_ref's samplers.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from neutral.zero123.training import images_from_model
from torch_ref.mvdream import samplers
from torch_ref.mvdream.first_stage import IdentityFirstStage
from torch_ref.mvdream.schedule import schedule_from_config


class Zero123Sampler:
    def __init__(self, model, model_params: dict):
        self.model = model.eval()
        self.alphas_cumprod = schedule_from_config(model_params)
        self.scale_factor = float(model.dims.scale_factor)
        self.clip_x0 = self.scale_factor if isinstance(model.first_stage_model, IdentityFirstStage) else None

    @torch.no_grad()
    def eps_fn(self, cond, T, scale: float) -> samplers.EpsFn:
        emb, c_concat = self.model.encode_reference(cond)
        c = self.model.camera_conditioning(emb, T)
        n = cond.shape[0]
        if scale == 1.0:
            return lambda x, t: self.model.apply_model(x, torch.full((n,), t, dtype=torch.long), c_concat, c)
        cond_in = {"c_concat": torch.cat([torch.zeros_like(c_concat), c_concat]),
                   "c_crossattn": torch.cat([torch.zeros_like(c), c])}

        def eps_cfg(x, t):
            out = self.model.apply_model(torch.cat([x] * 2), torch.full((2 * n,), t, dtype=torch.long),
                                         cond_in["c_concat"], cond_in["c_crossattn"])
            e_u, e_c = out.chunk(2)
            return e_u + scale * (e_c - e_u)
        return eps_cfg

    @torch.no_grad()
    def __call__(self, cond: np.ndarray, T: np.ndarray, steps: int = 50, scale: float = 3.0, sampler: str = "ddim",
                 eta: float = 0.0, seed: int = 0, karras: bool = False,
                 rng: Optional[np.random.RandomState] = None) -> np.ndarray:
        rng = np.random.RandomState(seed) if rng is None else rng
        cond_t = torch.as_tensor(np.asarray(cond, np.float32))
        T_t = torch.as_tensor(np.asarray(T, np.float32))
        fs = self.model.first_stage_model
        c_ref = self.model.first_stage_mode(cond_t[:1])
        shape = (cond_t.shape[0],) + tuple(c_ref.shape[1:])
        x_T = torch.as_tensor(rng.standard_normal(shape).astype(np.float32))
        x0 = samplers.sample(sampler, self.eps_fn(cond_t, T_t, scale), x_T, self.alphas_cumprod, steps, eta=eta,
                             rng=rng, karras=karras, clip_x0=self.clip_x0)
        return images_from_model(fs.decode(x0 / self.scale_factor).numpy())
