"""The GeNVS training loss (PyTorch reference; twin of mindspore_impl/genvs/training.py, which documents it).

Upstream: jfozard/genvs_unofficial genvs_model.py NerfDiffDLV3.forward (render [source 0, target] at half
resolution, RGB / opacity / depth losses) and k_pipeline.py KPipeline.train_step (the EDM loss on the target,
conditioning replaced by torch.rand_like with p 0.1). The random numbers come from
neutral/genvs/training.py step_arrays instead of torch's generator.
"""
from __future__ import annotations

import torch
from torch import nn

from neutral.genvs.training import DEPTH_EPS
from torch_ref.genvs.edm import edm_loss, uniform_noise_dropout
from torch_ref.genvs.renderer import camera_rays, upsample_nearest2x


def rgb_loss(rgb, target):
    return ((rgb - target) ** 2).mean()


def opacity_loss(opacity):
    return opacity.mean()


def depth_loss(opacity, depth, distance):
    """genvs_model.py: (o1 * (d1 / (o1 + 1e-6) - camera_d) ** 2).mean(), here per rendered camera."""
    return (opacity * (depth / (opacity + DEPTH_EPS) - distance[:, :, None, None, None]) ** 2).mean()


class GeNVSLoss(nn.Module):
    """forward(*STEP_INPUTS) -> (loss, terms (len(LOSS_TERMS),))."""

    def __init__(self, encoder, renderer, denoiser):
        super().__init__()
        self.encoder = encoder
        self.renderer = renderer
        self.denoiser = denoiser

    def render(self, src_images, src_noise, src_c2w, src_intrinsics, src_valid, render_c2w, render_intrinsics,
               ray_u, height: int, width: int):
        b, n, c, hi, wi = src_images.shape
        q = render_c2w.shape[1]
        vol = self.encoder(src_images.reshape(b * n, c, hi, wi),
                           None if src_noise is None else src_noise.reshape(b * n, c, hi, wi))
        vol = vol.reshape((b, n) + tuple(vol.shape[1:]))
        rays_o, rays_d = camera_rays(render_c2w.reshape(b * q, 4, 4), render_intrinsics.reshape(b * q, 4),
                                     height, width)
        out = self.renderer(rays_o.reshape(b, -1, 3), rays_d.reshape(b, -1, 3), src_c2w, src_intrinsics, vol,
                            ray_u, src_valid)

        def image(x):
            return x.reshape(b, q, height, width, -1).permute(0, 1, 4, 2, 3)

        return image(out["features"]), image(out["opacity"]), image(out["depth"])

    def forward(self, src_images, src_noise, src_c2w, src_intrinsics, src_valid, render_c2w, render_intrinsics,
                ray_u, render_rgb, render_distance, tgt_image, sigma, noise, drop_mask, drop_noise, loss_weights):
        h, w = render_rgb.shape[3], render_rgb.shape[4]
        feat, opacity, depth = self.render(src_images, src_noise, src_c2w, src_intrinsics, src_valid, render_c2w,
                                           render_intrinsics, ray_u, h, w)
        cond = uniform_noise_dropout(upsample_nearest2x(feat[:, 0]), drop_mask, drop_noise)
        l_diffusion = edm_loss(self.denoiser, tgt_image, noise, sigma, cond)
        l_rgb_target = rgb_loss(feat[:, 0, :3], render_rgb[:, 0])
        l_rgb_source = rgb_loss(feat[:, 1, :3], render_rgb[:, 1]) if feat.shape[1] > 1 else l_rgb_target.new_zeros(())
        terms = torch.stack([l_diffusion, l_rgb_target, l_rgb_source, opacity_loss(opacity),
                             depth_loss(opacity, depth, render_distance)])
        return (terms * loss_weights).sum(), terms
