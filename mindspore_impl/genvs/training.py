"""The GeNVS training loss (MindSpore; twin of torch_ref/genvs/training.py): encoder -> feature render ->
EDM denoiser, plus the render's auxiliary losses (jfozard/genvs_unofficial genvs_model.py NerfDiffDLV3.forward).

    loss_cell = GeNVSLoss(encoder, renderer, denoiser)        # denoiser: edm.EDMPrecond around the UNet
    loss, terms = loss_cell(*tensors)                          # tensors: neutral/genvs/training.py STEP_INPUTS

terms are the unweighted losses in LOSS_TERMS order; loss = sum(loss_weights * terms). Every random number comes
in as an input (drawn on the host by neutral/genvs/training.py step_arrays), so the step has static shapes, no
randomness of its own (the denoiser's dropout aside, when configured) and compiles under ms.jit.
"""
from __future__ import annotations

from mindspore import nn, ops

from mindspore_impl.genvs.edm import edm_loss, uniform_noise_dropout
from mindspore_impl.genvs.renderer import camera_rays, upsample_nearest2x
from neutral.genvs.training import DEPTH_EPS


def rgb_loss(rgb, target):
    """MSE of the render's RGB channels (B, 3, h, w) against the view at render resolution."""
    return ops.square(rgb - target).mean()


def opacity_loss(opacity):
    """mean(o): penalises density that does not show in the image (floaters)."""
    return opacity.mean()


def depth_loss(opacity, depth, distance):
    """mean(o (d / (o + eps) - camera_d)^2), opacity and depth (B, Q, 1, h, w), distance (B, Q): pulls the
    expected depth of covered pixels towards the camera's distance to the origin (upstream: against "floating
    filters" near the camera)."""
    d = distance.reshape(distance.shape + (1, 1, 1))
    return (opacity * ops.square(depth / (opacity + DEPTH_EPS) - d)).mean()


class GeNVSLoss(nn.Cell):
    """construct(*STEP_INPUTS) -> (loss, terms (len(LOSS_TERMS),)). Holds the three models (their parameters keep
    the names the system gave them)."""

    def __init__(self, encoder, renderer, denoiser):
        super().__init__(auto_prefix=False)
        self.encoder = encoder
        self.renderer = renderer
        self.denoiser = denoiser

    def render(self, src_images, src_noise, src_c2w, src_intrinsics, src_valid, render_c2w, render_intrinsics,
               ray_u, height: int, width: int):
        """Encode the sources and render the Q cameras at height x width -> features (B, Q, F, h, w), opacity
        and depth (B, Q, 1, h, w)."""
        b, n, c, hi, wi = src_images.shape
        q = render_c2w.shape[1]
        vol = self.encoder(src_images.reshape(b * n, c, hi, wi),
                           None if src_noise is None else src_noise.reshape(b * n, c, hi, wi))
        vol = vol.reshape((b, n) + vol.shape[1:])
        rays_o, rays_d = camera_rays(render_c2w.reshape(b * q, 4, 4), render_intrinsics.reshape(b * q, 4),
                                     height, width)
        # the Q cameras of an object share its source views: their rays go in one call
        out = self.renderer(rays_o.reshape(b, -1, 3), rays_d.reshape(b, -1, 3), src_c2w, src_intrinsics, vol,
                            ray_u, src_valid)

        def image(x):
            return x.reshape(b, q, height, width, -1).transpose(0, 1, 4, 2, 3)

        return image(out["features"]), image(out["opacity"]), image(out["depth"])

    def construct(self, src_images, src_noise, src_c2w, src_intrinsics, src_valid, render_c2w, render_intrinsics,
                  ray_u, render_rgb, render_distance, tgt_image, sigma, noise, drop_mask, drop_noise, loss_weights):
        h, w = render_rgb.shape[3], render_rgb.shape[4]
        feat, opacity, depth = self.render(src_images, src_noise, src_c2w, src_intrinsics, src_valid, render_c2w,
                                           render_intrinsics, ray_u, h, w)
        cond = uniform_noise_dropout(upsample_nearest2x(feat[:, 0]), drop_mask, drop_noise)
        l_diffusion = edm_loss(self.denoiser, tgt_image, noise, sigma, cond)
        l_rgb_target = rgb_loss(feat[:, 0, :3], render_rgb[:, 0])
        if feat.shape[1] > 1:
            l_rgb_source = rgb_loss(feat[:, 1, :3], render_rgb[:, 1])
        else:
            l_rgb_source = ops.zeros((), l_rgb_target.dtype)
        terms = ops.stack([l_diffusion, l_rgb_target, l_rgb_source, opacity_loss(opacity),
                           depth_loss(opacity, depth, render_distance)])
        return (terms * loss_weights).sum(), terms


def training_forward(loss_cell: GeNVSLoss):
    """The forward core/train_step.py make_train_step takes: (*STEP_INPUTS) -> (loss, terms without gradient)."""
    def forward(*inputs):
        loss, terms = loss_cell(*inputs)
        return loss, ops.stop_gradient(terms)
    return forward
