"""Novel views from one image with a Zero-1-to-3 model: classifier-free guidance with zero conditions around
mvdream's samplers (DDIM, DPM-Solver++ 2M, UniPC: mindspore_impl/mvdream/samplers.py), MindSpore.

    sampler = Zero123Sampler(model, model_params)          # a Zero123 cell (loading.py, or being trained)
    images = sampler(cond, T, steps=50, scale=3.0, seed=0)  # cond (N,3,H,W) in [-1,1], T (N,4) -> uint8 (N,H,W,3)

As upstream samples (cvlab-columbia/zero123 zero123/gradio_new.py `sample_model`): the conditional branch has
c_crossattn = cc_projection([image embedding, T]) and c_concat = the condition's first-stage mode; the unconditional
branch has zeros for both; both run as one [uncond; cond] batch and e = e_u + scale (e_c - e_u). In pixel space the
x0 predictions are clipped to [-1, 1] x scale_factor while sampling (as the MVDream demo pipeline). The start noise
comes from numpy RandomState(seed). Twin: torch_ref/zero123/pipeline.py.
"""
from __future__ import annotations

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mindspore_impl.mvdream import samplers
from mindspore_impl.mvdream.first_stage import IdentityFirstStage, latent_shape
from mindspore_impl.mvdream.schedule import schedule_from_config
from neutral.zero123.training import images_from_model


class _ApplyModel(nn.Cell):
    """Zero123.apply_model as a cell, for ms.jit."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, x, t, c_concat, c_crossattn):
        return self.model.apply_model(x, t, c_concat, c_crossattn)


class Zero123Sampler:
    """Holds a Zero123 model and its noise schedule; see the module docstring."""

    def __init__(self, model, model_params: dict, compile: bool = False):
        self.model = model
        self.alphas_cumprod = schedule_from_config(model_params)
        self.scale_factor = float(model.dims.scale_factor)
        self.clip_x0 = self.scale_factor if isinstance(model.first_stage_model, IdentityFirstStage) else None
        self._apply = ms.jit(_ApplyModel(model).construct) if compile else model.apply_model

    def conditions(self, cond, T):
        """(c_concat, c_crossattn) of the conditional branch; cond (N,3,H,W) in [-1,1], T (N,4)."""
        emb, c_concat = self.model.encode_reference(cond)
        return c_concat, self.model.camera_conditioning(emb, T)

    def eps_fn(self, cond, T, scale: float) -> samplers.EpsFn:
        c_concat, c_crossattn = self.conditions(cond, T)
        n = cond.shape[0]
        if scale == 1.0:
            def eps_cond(x, t):
                return self._apply(x, ms.Tensor(np.full((n,), t, np.int32)), c_concat, c_crossattn)
            return eps_cond
        concat_in = ops.concat((ops.zeros_like(c_concat), c_concat), axis=0)
        cross_in = ops.concat((ops.zeros_like(c_crossattn), c_crossattn), axis=0)

        def eps_cfg(x, t):
            out = self._apply(ops.concat((x, x), axis=0), ms.Tensor(np.full((2 * n,), t, np.int32)), concat_in,
                              cross_in)
            e_u, e_c = out[:n], out[n:]
            return e_u + scale * (e_c - e_u)
        return eps_cfg

    def __call__(self, cond: np.ndarray, T: np.ndarray, steps: int = 50, scale: float = 3.0, sampler: str = "ddim",
                 eta: float = 0.0, seed: int = 0, karras: bool = False,
                 rng: Optional[np.random.RandomState] = None) -> np.ndarray:
        """cond float (N,3,H,W) in [-1,1], T float (N,4) -> uint8 (N,H,W,3) samples of the target views."""
        self.model.set_train(False)
        rng = np.random.RandomState(seed) if rng is None else rng
        cond_t = ms.Tensor(np.asarray(cond, np.float32))
        T_t = ms.Tensor(np.asarray(T, np.float32))
        shape = (cond_t.shape[0],) + tuple(latent_shape(self.model.first_stage_model, cond_t.shape[2]))
        x_T = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        x0 = samplers.sample(sampler, self.eps_fn(cond_t, T_t, scale), x_T, self.alphas_cumprod, steps, eta=eta,
                             rng=rng, karras=karras, clip_x0=self.clip_x0)
        return images_from_model(self.model.first_stage_model.decode(x0 / self.scale_factor).asnumpy())
