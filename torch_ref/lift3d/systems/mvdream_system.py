"""PyTorch twin of one MVDreamSystem training step (mindspore_impl/lift3d/systems/mvdream_system.py).

Not a trainer: plain functions over the torch_ref renderer (which holds geometry, material and
background) and guidance, written the way MVDream-threestudio's training_step computes the loss
(guidance loss_sds + orient / sparsity / opaque / z_variance regularisers, each times its lambda), then
loss.backward() and torch.optim.AdamW. The inputs are the numpy dict of MVDreamSystem.draw_step_inputs,
so both frameworks see the same rays, jitter, colours, timestep and noises.

The losses are in torch_ref/lift3d/losses.py (with their two deliberate differences from upstream).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torch_ref.lift3d.losses import composite_background, regularizer_losses

LOSS_TERMS = ("sds", "orient", "sparsity", "opaque", "z_variance")
STEP_INPUTS = ("rays_o", "rays_d", "light_positions", "c2w", "jitter", "bg_color", "bg_mask", "ambient_color",
               "diffuse_color", "text_embeddings", "t", "noise", "vae_noise", "loss_weights")


def to_torch(inputs: dict, device=None) -> dict:
    """The step inputs as torch tensors on `device` (None: where torch creates tensors by default)."""
    return {k: torch.as_tensor(np.ascontiguousarray(inputs[k]), device=device) for k in STEP_INPUTS}


def forward(renderer, guidance, inputs: dict, shading: str, active) -> tuple[torch.Tensor, list]:
    """-> (weighted total loss, [sds, orient, sparsity, opaque, z_variance]); the inputs go to the device the
    renderer's state lives on."""
    x = to_torch(inputs, renderer.estimator.occs.device)
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
