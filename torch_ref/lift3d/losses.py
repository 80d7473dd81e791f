"""PyTorch twin of mindspore_impl/lift3d/losses.py, written the way MVDream-threestudio's training_step computes
the regularisers (threestudio/systems/mvdream.py upstream), with the same two deliberate differences: clamped
denominators and the background augmentation as a colour and a 0/1 mask. The reconstruction losses as
threestudio's image-conditioned systems compute them (threestudio/systems/zero123.py upstream)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def orient_loss(weights, normal, t_dirs, opacity):
    count = (opacity > 0).sum().clamp(min=1)
    return (weights.detach() * (normal * t_dirs).sum(-1, keepdim=True).clamp(min=0.0) ** 2).sum() / count


def sparsity_loss(opacity):
    return (opacity ** 2 + 0.01).sqrt().mean()


def binary_cross_entropy(input, target):
    """threestudio.utils.ops.binary_cross_entropy."""
    return -(target * torch.log(input) + (1 - target) * torch.log(1 - input)).mean()


def opaque_loss(opacity):
    clamped = opacity.clamp(1.0e-3, 1.0 - 1.0e-3)
    return binary_cross_entropy(clamped, clamped)


def z_variance_loss(z_variance, opacity):
    mask = (opacity > 0.5).float()
    return (z_variance * mask).sum() / mask.sum().clamp(min=1.0)


def regularizer_losses(out: dict, active: dict) -> list:
    """[orient, sparsity, opaque, z_variance] for the active flags by name (inactive ones are 0)."""
    zero = torch.zeros((), device=out["opacity"].device)
    return [orient_loss(out["weights"], out["normal"], out["t_dirs"], out["opacity"]) if active["orient"] else zero,
            sparsity_loss(out["opacity"]) if active["sparsity"] else zero,
            opaque_loss(out["opacity"]) if active["opaque"] else zero,
            z_variance_loss(out["z_variance"], out["opacity"]) if active["z_variance"] else zero]


def composite_background(out: dict, bg_color, bg_mask):
    b = out["opacity"].shape[0]
    bg = bg_mask * bg_color.reshape(b, 1, 1, -1) + (1.0 - bg_mask) * out["comp_rgb_bg"]
    return out["comp_rgb_fg"] + bg * (1.0 - out["opacity"])


def background_rgb(out: dict, bg_color, bg_mask):
    b = out["opacity"].shape[0]
    return bg_mask * bg_color.reshape(b, 1, 1, -1) + (1.0 - bg_mask) * out["comp_rgb_bg"]


def composite_target(rgb, alpha, background):
    return rgb * alpha + background.detach() * (1.0 - alpha)


def photometric_loss(rgb, target):
    """threestudio zero123 system: F.mse_loss(gt_rgb, comp_rgb)."""
    return F.mse_loss(rgb, target)


def mask_loss(opacity, alpha):
    """threestudio zero123 system: F.binary_cross_entropy(opacity.clamp(1e-5, 1 - 1e-5), gt_mask)."""
    return F.binary_cross_entropy(opacity.clamp(1.0e-5, 1.0 - 1.0e-5), alpha)


# ----- image-conditioned systems: threestudio/systems/zero123.py (masked terms index the valid pixels, as upstream)
# and the zero123 3drec losses (cvlab-columbia/zero123 3drec/run_zero123.py, 3drec/my3d.py)

DEPTH_BACKGROUND = 10.0  # 3drec voxnerf/render.py: bg_dist


def mask_mse_loss(opacity, alpha):
    return F.mse_loss(alpha, opacity)


def composite_depth(depth, opacity, background: float = DEPTH_BACKGROUND):
    return depth + (1 - opacity) * background


def depth_smooth_loss(depth):
    """my3d.py gradient_x / gradient_y on each (H, W) map; the mean over a batch of equal maps."""
    d = depth[..., 0]
    grad_x = d[:, :, :-1] - d[:, :, 1:]
    grad_y = d[:, :-1, :] - d[:, 1:, :]
    return (grad_x.abs().mean() + grad_y.abs().mean()) / 2.0


def near_view_loss(rgb_near, rgb, depth_near, depth):
    return (rgb_near - rgb).abs().mean() + (depth_near - depth).abs().mean()


def normal_smooth_loss(normal):
    return (normal[:, 1:, :, :] - normal[:, :-1, :, :]).square().mean() + \
        (normal[:, :, 1:, :] - normal[:, :, :-1, :]).square().mean()


def depth_alignment_loss(depth, ref_depth, mask):
    gt_mask = mask[..., 0] > 0.5
    valid_gt_depth = ref_depth[gt_mask]            # [N, 1]
    valid_pred_depth = depth[gt_mask]              # [N, 1]
    with torch.no_grad():
        A = torch.cat([valid_gt_depth, torch.ones_like(valid_gt_depth)], dim=-1)  # [N, 2]
        X = torch.linalg.lstsq(A, valid_pred_depth).solution  # [2, 1]
        valid_gt_depth = A @ X
    return F.mse_loss(valid_gt_depth, valid_pred_depth)


def depth_correlation_loss(depth, ref_depth, mask):
    """1 - PearsonCorrCoef()(pred, gt) on the valid pixels (torchmetrics' formula)."""
    gt_mask = mask[..., 0] > 0.5
    p, g = depth[gt_mask][:, 0], ref_depth[gt_mask][:, 0]
    p, g = p - p.mean(), g - g.mean()
    return 1 - (p * g).sum() / torch.sqrt((p * p).sum() * (g * g).sum())


def normal_consistency_loss(comp_normal, ref_normal, mask):
    gt_mask = mask[..., 0] > 0.5
    valid_gt_normal = 1 - 2 * ref_normal[gt_mask]  # [N, 3]
    valid_pred_normal = 2 * comp_normal[gt_mask] - 1  # [N, 3]
    return 1 - F.cosine_similarity(valid_pred_normal, valid_gt_normal).mean()
