"""The 3D systems' losses on rendered outputs, each a small named function (in graph).

The regularisers of MVDream-threestudio's MVDreamSystem.training_step (threestudio/systems/mvdream.py upstream):
orient (normals must not face the camera), sparsity, opaque (binary entropy of the opacity) and z_variance (HiFA).
The reconstruction losses (photometric MSE against a target composited on the render's background, mask BCE) are
those of threestudio's image-conditioned systems (threestudio/systems/zero123.py upstream).
Two deliberate differences from upstream, shared with the twin: the orient / z_variance denominators are clamped
to >= 1 (upstream divides by zero, giving NaN, when no pixel qualifies), and the background augmentation enters
as a colour and a 0/1 mask (one static graph).
Twin: torch_ref/lift3d/losses.py.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

# the regulariser terms of regularizer_losses, in order (after the guidance's own loss)
REGULARIZERS = ("orient", "sparsity", "opaque", "z_variance")


def orient_sum(weights, normal, t_dirs):
    """sum(sg(w) * clamp(n . d, min=0)^2) over samples: additive over ray chunks."""
    facing = ops.clamp((normal * t_dirs).sum(axis=-1, keepdims=True), min=0.0)
    return (ops.stop_gradient(weights) * facing ** 2).sum()


def lit_pixel_count(opacity):
    """count(opacity > 0), at least 1: the orient loss's denominator (no gradient)."""
    return ops.maximum(ops.stop_gradient((opacity > 0).astype(ms.float32).sum()), 1.0)


def orient_loss(weights, normal, t_dirs, opacity):
    """sum(sg(w) * clamp(n . d, min=0)^2) / count(opacity > 0): normals must not face the camera ray."""
    return orient_sum(weights, normal, t_dirs) / lit_pixel_count(opacity)


def sparsity_loss(opacity):
    return ops.sqrt(opacity ** 2 + 0.01).mean()


def opaque_loss(opacity):
    """Binary cross entropy of the clamped opacity with itself (pushes opacity to 0 or 1)."""
    x = ops.clamp(opacity, 1.0e-3, 1.0 - 1.0e-3)
    return -(x * ops.log(x) + (1.0 - x) * ops.log(1.0 - x)).mean()


def z_variance_loss(z_variance, opacity):
    """Mean z-variance over pixels with opacity > 0.5 (HiFA); a static-shape masked mean (0 if none)."""
    mask = ops.stop_gradient((opacity > 0.5).astype(z_variance.dtype))
    return (z_variance * mask).sum() / ops.maximum(mask.sum(), 1.0)


def image_regularizers(out: dict, active: dict) -> list:
    """[sparsity, opaque, z_variance], the regularisers of per-pixel maps (inactive ones are 0, not computed)."""
    zero = ops.zeros((), ms.float32)
    sparsity = sparsity_loss(out["opacity"]) if active["sparsity"] else zero
    opaque = opaque_loss(out["opacity"]) if active["opaque"] else zero
    z_var = z_variance_loss(out["z_variance"], out["opacity"]) if active["z_variance"] else zero
    return [sparsity, opaque, z_var]


def regularizer_losses(out: dict, active: dict) -> list:
    """[orient, sparsity, opaque, z_variance] for the active flags by name (inactive ones are 0, not computed)."""
    zero = ops.zeros((), ms.float32)
    orient = orient_loss(out["weights"], out["normal"], out["t_dirs"], out["opacity"]) if active["orient"] else zero
    return [orient] + image_regularizers(out, active)


def background_rgb(out: dict, bg_color, bg_mask):
    """The background colour per pixel (B,H,W,3): bg_color (B,3) where bg_mask is 1, else the renderer's comp_rgb_bg."""
    b = out["opacity"].shape[0]
    return bg_mask * bg_color.reshape(b, 1, 1, -1) + (1.0 - bg_mask) * out["comp_rgb_bg"]


def composite_background(out: dict, bg_color, bg_mask):
    """comp_rgb with the background replaced by bg_color (B,3) where bg_mask is 1 (random colour augmentation).

    With mask 0 it is exactly the renderer's comp_rgb; one graph serves both cases.
    """
    return out["comp_rgb_fg"] + background_rgb(out, bg_color, bg_mask) * (1.0 - out["opacity"])


def composite_target(rgb, alpha, background):
    """A target image over the render's background: rgb * alpha + sg(background) * (1 - alpha) (straight alpha)."""
    return rgb * alpha + ops.stop_gradient(background) * (1.0 - alpha)


def photometric_loss(rgb, target):
    """Mean squared error over pixels and channels."""
    return ((rgb - target) ** 2).mean()


MASK_EPS = 1.0e-5


def mask_loss(opacity, alpha):
    """Binary cross entropy of the clamped opacity against the target alpha."""
    x = ops.clamp(opacity, MASK_EPS, 1.0 - MASK_EPS)
    return -(alpha * ops.log(x) + (1.0 - alpha) * ops.log(1.0 - x)).mean()


# ----- image-conditioned systems (lift3d/systems/zero123_system.py): threestudio's threestudio/systems/zero123.py
# and the zero123 3D-reconstruction losses (cvlab-columbia/zero123 3drec/run_zero123.py, 3drec/my3d.py). Masked
# terms are static-shape masked means here; the twin indexes the valid pixels as upstream does.

# 3drec (voxnerf/render.py) composites depth over a background 10 units away, so empty rays read as far, not as 0
DEPTH_BACKGROUND = 10.0


def mask_mse_loss(opacity, alpha):
    """threestudio zero123.py: F.mse_loss(gt_mask, opacity)."""
    return ((opacity - alpha) ** 2).mean()


def composite_depth(depth, opacity, background: float = DEPTH_BACKGROUND):
    """E[t] + (1 - opacity) * background (B,H,W,1)."""
    return depth + (1.0 - opacity) * background


def depth_smooth_loss(depth):
    """3drec depth_smooth_loss: (mean |horizontal difference| + mean |vertical difference|) / 2 of (B,H,W,1)."""
    dx = depth[:, :, :-1] - depth[:, :, 1:]
    dy = depth[:, :-1] - depth[:, 1:]
    return (ops.abs(dx).mean() + ops.abs(dy).mean()) / 2.0


def near_view_loss(rgb_near, rgb, depth_near, depth):
    """3drec near-view consistency: mean |y_near - y| + mean |depth_near - depth| (a view and one 0.05 away)."""
    return ops.abs(rgb_near - rgb).mean() + ops.abs(depth_near - depth).mean()


def normal_smooth_loss(comp_normal):
    """threestudio zero123.py lambda_normal_smooth: mean squared difference of vertical plus horizontal neighbours."""
    dy = comp_normal[:, 1:] - comp_normal[:, :-1]
    dx = comp_normal[:, :, 1:] - comp_normal[:, :, :-1]
    return (dy ** 2).mean() + (dx ** 2).mean()


def _masked_stats(pred, gt, mask):
    """(count, masked mean of pred, of gt) over pixels with mask 1 (count at least 1)."""
    n = ops.maximum(mask.sum(), 1.0)
    return n, (pred * mask).sum() / n, (gt * mask).sum() / n


def depth_alignment_loss(depth, ref_depth, mask):
    """threestudio lambda_depth: the reference depth fitted to the render by least squares (scale and shift, no
    gradient) over the masked pixels, then the MSE of render and fitted reference there."""
    n, mp, mg = _masked_stats(depth, ref_depth, mask)
    cov = (mask * (ref_depth - mg) * (depth - mp)).sum()
    var = (mask * (ref_depth - mg) ** 2).sum()
    scale = ops.stop_gradient(cov / ops.maximum(var, 1e-12))
    shift = ops.stop_gradient(mp - scale * mg)
    return (mask * (scale * ref_depth + shift - depth) ** 2).sum() / n


def depth_correlation_loss(depth, ref_depth, mask):
    """threestudio lambda_depth_rel: 1 - Pearson correlation of render and reference depth over the masked pixels."""
    _, mp, mg = _masked_stats(depth, ref_depth, mask)
    cov = (mask * (depth - mp) * (ref_depth - mg)).sum()
    var_p = (mask * (depth - mp) ** 2).sum()
    var_g = (mask * (ref_depth - mg) ** 2).sum()
    return 1.0 - cov / ops.sqrt(ops.maximum(var_p * var_g, 1e-24))


def normal_consistency_loss(comp_normal, ref_normal, mask):
    """threestudio lambda_normal: 1 - mean cosine of (2 comp_normal - 1) and (1 - 2 ref_normal) over the mask."""
    pred = 2.0 * comp_normal - 1.0
    gt = 1.0 - 2.0 * ref_normal
    norms = ops.sqrt((pred * pred).sum(-1, keepdims=True)) * ops.sqrt((gt * gt).sum(-1, keepdims=True))
    cos = (pred * gt).sum(-1, keepdims=True) / ops.maximum(norms, 1e-8)
    return 1.0 - (cos * mask).sum() / ops.maximum(mask.sum(), 1.0)
