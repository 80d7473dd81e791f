"""PyTorch twin of one MVDreamSystem training step (mindspore_impl/lift3d/systems/mvdream_system.py).

Not a trainer: plain functions over the torch_ref renderer (which holds geometry, material and
background) and guidance, written the way MVDream-threestudio's training_step computes the loss
(guidance loss_sds + orient / sparsity / opaque / z_variance regularisers, each times its lambda), then
loss.backward() and torch.optim.AdamW. The inputs are the numpy dict of MVDreamSystem.draw_step_inputs,
so both frameworks see the same rays, jitter, colours, timestep and noises.

Two deliberate differences from upstream, shared by both twins: the background augmentation enters as a
colour and a 0/1 mask (one static graph), and the orient / z_variance denominators are clamped to >= 1
(upstream divides by zero, giving NaN, when no pixel qualifies).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

LOSS_TERMS = ("sds", "orient", "sparsity", "opaque", "z_variance")
STEP_INPUTS = ("rays_o", "rays_d", "light_positions", "c2w", "jitter", "bg_color", "bg_mask", "ambient_color",
               "diffuse_color", "text_embeddings", "t", "noise", "vae_noise", "loss_weights")


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


def regularizer_losses(out: dict, active) -> list:
    zero = torch.zeros(())
    return [orient_loss(out["weights"], out["normal"], out["t_dirs"], out["opacity"]) if active[1] else zero,
            sparsity_loss(out["opacity"]) if active[2] else zero,
            opaque_loss(out["opacity"]) if active[3] else zero,
            z_variance_loss(out["z_variance"], out["opacity"]) if active[4] else zero]


def composite_background(out: dict, bg_color, bg_mask):
    b = out["opacity"].shape[0]
    bg = bg_mask * bg_color.reshape(b, 1, 1, -1) + (1.0 - bg_mask) * out["comp_rgb_bg"]
    return out["comp_rgb_fg"] + bg * (1.0 - out["opacity"])


def to_torch(inputs: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in STEP_INPUTS}


def forward(renderer, guidance, inputs: dict, shading: str, active) -> tuple[torch.Tensor, list]:
    """-> (weighted total loss, [sds, orient, sparsity, opaque, z_variance])."""
    x = to_torch(inputs)
    out = renderer(x["rays_o"], x["rays_d"], x["light_positions"], x["jitter"], None, shading,
                   x["ambient_color"], x["diffuse_color"])
    rgb = composite_background(out, x["bg_color"], x["bg_mask"])
    loss_sds, _ = guidance(rgb, x["c2w"], x["text_embeddings"], x["t"], x["noise"], x["vae_noise"])
    terms = [loss_sds] + regularizer_losses(out, active)
    loss = sum(term * x["loss_weights"][i] for i, term in enumerate(terms))
    return loss, terms


def get_by_path(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def build_optimizer(modules: Any, spec: dict) -> torch.optim.Optimizer:
    """threestudio's parse_optimizer: groups by dotted path ({geometry.encoding: {lr}}) over `modules`."""
    groups = [{"params": list(get_by_path(modules, path).parameters()), "name": path, **args}
              for path, args in spec["params"].items()]
    cls = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}[spec.get("name", "AdamW")]
    args = dict(spec.get("args") or {})
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    return cls(groups, **args)


def training_step(renderer, guidance, optimizer, inputs: dict, active, grad_clip=None) -> tuple[float, list]:
    """One step: forward, backward, (global-norm clip), optimizer update. Returns (loss, terms) as floats."""
    optimizer.zero_grad(set_to_none=True)
    loss, terms = forward(renderer, guidance, inputs, inputs["shading"], active)
    loss.backward()
    if grad_clip is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return float(loss.detach()), [float(t.detach()) for t in terms]
