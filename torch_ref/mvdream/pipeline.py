"""PyTorch twin of mindspore_impl/mvdream/pipeline.py: the same text-to-multiview sampling
(t2i of the original MVDream) on the torch_ref models, loaded from an original-layout
(torch-named) state dict (key prefixes: neutral/mvdream/checkpoint_layout.py). Used by the end-to-end
parity test.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from neutral.mvdream.checkpoint_layout import PREFIXES
from torch_ref.mvdream import samplers
from torch_ref.mvdream.cameras import get_camera
from torch_ref.mvdream.schedule import schedule_from_config
from torch_ref.mvdream.sliding_window import DEFAULT_WINDOW, sliding_window_eps_fn


class MVDreamPipeline:
    def __init__(self, unet, vae, text_encoder, tokenizer, model_params: dict):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet.eval(), vae.eval(), text_encoder.eval(), tokenizer
        self.alphas_cumprod = schedule_from_config(model_params)
        self.scale_factor = float(model_params.get("scale_factor", 0.18215))
        from neutral.mvdream.first_stage import downsample_of, is_identity
        self.downsample = downsample_of(model_params["first_stage_config"])
        self.clip_x0 = self.scale_factor if is_identity(model_params["first_stage_config"]) else None
        self.latent_channels = int(model_params["unet_config"]["params"].get("in_channels", 4))

    @classmethod
    def from_state_dict(cls, state: dict, model_params: dict, tokenizer) -> "MVDreamPipeline":
        from torch_ref.mvdream import first_stage, text_encoder, unet
        parts = {"unet": unet.build_from_config(dict(model_params["unet_config"]["params"])),
                 "vae": first_stage.build_first_stage(dict(model_params["first_stage_config"])),
                 "text_encoder": text_encoder.build_from_config(dict(model_params["cond_stage_config"]["params"]))}
        for name, module in parts.items():
            p = PREFIXES[name]
            module.load_state_dict({k[len(p):]: torch.as_tensor(v) for k, v in state.items() if k.startswith(p)},
                                   strict=True)
        return cls(parts["unet"], parts["vae"], parts["text_encoder"], tokenizer, model_params)

    @property
    def device(self) -> torch.device:
        """Where the models' weights are: the sampling runs there."""
        return next(self.unet.parameters()).device

    def encode_text(self, prompts):
        ids = torch.as_tensor(np.asarray(self.tokenizer(prompts)), dtype=torch.long, device=self.device)
        return self.text_encoder(ids).float()

    def model_fn(self, x, t, context, camera, num_frames: int):
        return self.unet(x, t, context=context, camera=camera, num_frames=num_frames)

    def decode(self, latents, batch: int = 4) -> np.ndarray:
        out = []
        for i in range(0, latents.shape[0], batch):
            img = self.vae.decode(1.0 / self.scale_factor * latents[i:i + batch])
            img = torch.clamp((img + 1.0) / 2.0, min=0.0, max=1.0)
            out.append((255.0 * img.permute(0, 2, 3, 1).cpu().numpy()).astype(np.uint8))
        return np.concatenate(out, 0)

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str = "", num_frames: int = 4, elevation: float = 15,
                 azimuth_start: float = 90, azimuth_span: float = 360, steps: int = 50, scale: float = 10.0,
                 eta: float = 0.0, sampler: str = "ddim", seed: int = 23, height: int = 256, width: int = 256,
                 single_view: bool = False, karras: bool = False, joint_views: int = 4,
                 window: Optional[int] = DEFAULT_WINDOW, rng: Optional[np.random.RandomState] = None,
                 progress: bool = False, return_latents: bool = False, unipc_order: int = 2,
                 unipc_variant: str = "bh2"):
        rng = np.random.RandomState(seed) if rng is None else rng
        c, uc = self.encode_text([prompt]), self.encode_text([negative_prompt])
        camera = None if single_view else get_camera(num_frames, elevation, azimuth_start, azimuth_span).to(self.device)
        rep = lambda e: e.repeat(num_frames, 1, 1)  # noqa: E731
        if single_view:
            eps_fn = samplers.guided_eps_fn(self.model_fn, rep(c), rep(uc), scale, None, 1)
        elif num_frames <= joint_views:
            eps_fn = samplers.guided_eps_fn(self.model_fn, rep(c), rep(uc), scale, camera, num_frames)
        else:
            eps_fn = sliding_window_eps_fn(self.model_fn, c, uc, camera, scale, window)
        f = self.downsample
        shape = (num_frames, self.latent_channels, height // f, width // f)
        x_T = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(self.device)
        latents = samplers.sample(sampler, eps_fn, x_T, self.alphas_cumprod, steps, eta=eta, rng=rng,
                                  karras=karras, progress=progress, clip_x0=self.clip_x0, order=unipc_order,
                                  variant=unipc_variant)
        images = self.decode(latents)
        return (images, latents) if return_latents else images
