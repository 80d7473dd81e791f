"""The Zero-1-to-3 model, native MindSpore: the parts of upstream's LatentDiffusion that predict eps.

cvlab-columbia/zero123 zero123/ldm/models/diffusion/ddpm.py (`DiffusionWrapper` with conditioning_key 'hybrid',
`LatentDiffusion.cc_projection`); conditions as zero123/gradio_new.py `sample_model` and threestudio's
threestudio/models/guidance/zero123_guidance.py build them:
- c_crossattn = cc_projection(cat([CLIP image embedding [B, 1, D], T [B, 1, 4]], -1)): [B, 1, context_dim];
- c_concat = the reference image's first-stage posterior mode, NOT multiplied by scale_factor (the noisy latent
  is scale_factor x a posterior sample); the UNet input is cat([x_noisy, c_concat], channels);
- unconditional branch (classifier-free guidance): zeros for c_concat and for the projected c_crossattn.
T comes from neutral/zero123/camera.py `relative_camera_T`. The UNet is mvdream's MultiViewUNetModel configured as
SD 1.x's plain UNet (no camera_dim, one view, conv proj_in / proj_out), the VAE is mvdream's AutoencoderKL.
Parameter names are the checkpoint's (neutral/zero123/checkpoint_layout.py) after convert/zero123.py's renaming,
so a converted checkpoint loads into the whole cell (loading.py). The first stage may be the pixel-space identity
(configs/demo-zero123-model.yaml): the latents are then the (pixel-unshuffled) images. Static shapes; `construct`,
`apply_model` and `unconditional` compile in GRAPH mode. Twin: torch_ref/zero123/model.py.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from mindspore_impl.mvdream.first_stage import build_first_stage
from mindspore_impl.mvdream.unet import build_from_config as build_unet
from mindspore_impl.zero123.clip_image_encoder import build_from_config as build_image_encoder
from neutral.zero123.model_config import first_stage_entry, parse_model_params, submodel_params


class DiffusionWrapper(nn.Cell):
    """conditioning_key 'hybrid' only (Zero123's)."""

    def __init__(self, diffusion_model: nn.Cell):
        super().__init__()
        self.diffusion_model = diffusion_model

    def construct(self, x, t, c_concat, c_crossattn):
        return self.diffusion_model(ops.concat((x, c_concat.astype(x.dtype)), axis=1), t, c_crossattn)


class Zero123(nn.Cell):
    """Built from the model YAML's `model.params` (configs/sd-objaverse-finetune-c_concat-256.yaml)."""

    def __init__(self, model_params: dict):
        super().__init__()
        _, dims = parse_model_params(model_params)
        self.dims = dims
        self.context_dim = dims.context_dim  # a plain int for compiled code
        self.model = DiffusionWrapper(build_unet(submodel_params(model_params, "unet_config")))
        # AutoencoderKL, or the pixel-space identity (mvdream/first_stage.py; no parameters) of the demo model
        self.first_stage_model = build_first_stage(first_stage_entry(model_params))
        self.cond_stage_model = build_image_encoder(submodel_params(model_params, "cond_stage_config"))
        self.cc_projection = nn.Dense(dims.cc_projection_in, dims.context_dim)

    def encode_reference(self, image):
        """image [B, 3, H, W] in [-1, 1] -> (CLIP embedding [B, 1, D], reference latent [B, C, H/f, W/f])."""
        return self.cond_stage_model.encode(image), self.first_stage_model.encode_mode(image)

    def camera_conditioning(self, clip_emb, T):
        """clip_emb [B, 1, D], T [B, 4] -> c_crossattn [B, 1, context_dim]."""
        return self.cc_projection(ops.concat((clip_emb, T.astype(clip_emb.dtype).expand_dims(1)), axis=-1))

    def apply_model(self, x_noisy, t, c_concat, c_crossattn):
        """x_noisy [B, C, h, w], t [B], c_concat [B, C, h, w], c_crossattn [B, 1, context_dim] -> eps float32."""
        return self.model(x_noisy, t, c_concat, c_crossattn)

    def construct(self, x_noisy, t, image, ref_latent, T):
        """Conditional eps: image [B, 3, H, W] in [-1, 1], ref_latent its first-stage mode, T [B, 4]."""
        c_crossattn = self.camera_conditioning(self.cond_stage_model.encode(image), T)
        return self.apply_model(x_noisy, t, ref_latent, c_crossattn)

    def unconditional(self, x_noisy, t):
        """Unconditional eps: zero c_concat and zero (projected) c_crossattn."""
        c_crossattn = ops.zeros((x_noisy.shape[0], 1, self.context_dim), ms.float32)
        return self.apply_model(x_noisy, t, ops.zeros_like(x_noisy), c_crossattn)


def build_from_config(model_params: dict) -> Zero123:
    return Zero123(model_params)
