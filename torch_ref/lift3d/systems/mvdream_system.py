"""PyTorch twin of one MVDreamSystem training step (mindspore_impl/lift3d/systems/mvdream_system.py).

Not a trainer: plain functions over the torch_ref renderer (which holds geometry, material and
background) and guidance, written the way MVDream-threestudio's training_step computes the loss
(guidance loss_sds + orient / sparsity / opaque / z_variance regularisers, each times its lambda), then
loss.backward() and torch.optim.AdamW. The inputs are the numpy dict of MVDreamSystem.draw_step_inputs,
so both frameworks see the same rays, jitter, colours, timestep and noises.

The losses are in torch_ref/lift3d/losses.py (with their two deliberate differences from upstream).
"""
from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import torch

from torch_ref.lift3d.losses import (composite_background, opaque_loss, regularizer_losses, sparsity_loss,
                                     z_variance_loss)

LOSS_TERMS = ("sds", "orient", "sparsity", "opaque", "z_variance")
DEFERRED_MAPS = ("comp_rgb_fg", "comp_rgb_bg", "opacity", "z_variance")  # the maps the image pass differentiates
BUCKET_HEADROOM = 1.3  # the next step's compaction bucket holds this much more than the fullest chunk
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


def _chunk_renders(renderer, chunks, x, shading, bucket, valid, orient_active):
    """Each chunk's render_ray_chunk output (with gradient when enabled) and its orient sum over valid rays (0
    when the orient loss is off)."""
    for (o, d, lp, jit), ok in zip(chunks, valid):
        out = renderer.render_ray_chunk(o, d, lp, jit, None, shading, x["ambient_color"], x["diffuse_color"], bucket)
        orient = torch.zeros((), device=o.device)
        if orient_active:
            w = (out["weights"].reshape(o.shape[0], -1) * ok[:, None]).reshape(-1, 1)
            facing = (out["normal"] * out["t_dirs"]).sum(-1, keepdim=True).clamp(min=0.0)
            orient = (w.detach() * facing ** 2).sum()
        yield out, orient


def deferred_training_step(renderer, guidance, optimizer, inputs: dict, active, chunk_rays: int,
                           buckets=(), bucket_index: int = 0, grad_clip=None,
                           seconds: Optional[dict] = None) -> tuple[float, list, dict]:
    """The step of training_step computed as MVDreamSystem._deferred_step computes it (deferred backpropagation):
    render the rays in chunks of `chunk_rays` without a graph (in the same fixed shuffled order, the last chunk
    padded with copies of the last ray), take d loss / d maps through the guidance and the image regularisers,
    then render each chunk again with a graph and backpropagate its share, accumulating the parameter gradients.
    `buckets`: the renderer's compaction fractions (empty: dense); a chunk that overflows bucket `bucket_index`
    renders every chunk again in the smallest bucket that holds it. -> (loss, terms, {"bucket_index": the next
    step's, "occupied_fraction", "evaluated_fraction", "rerendered"}). `seconds`, when given, receives the host
    seconds of the sections (render, image, backward, update), as MVDreamSystem.step_seconds."""
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    device = renderer.estimator.occs.device
    x = to_torch(inputs, device)
    shading = inputs["shading"]
    b, h, w, _ = x["rays_o"].shape
    n = b * h * w
    pad = (-n) % chunk_rays
    order = torch.as_tensor(np.random.default_rng(0).permutation(n + pad), device=device)

    def per_ray(t, fill=None):
        t = t.reshape(n, -1)
        tail = t[-1:].expand(pad, -1) if fill is None else torch.full((pad, t.shape[1]), fill, device=device)
        return torch.cat([t, tail], 0)[order]

    light = x["light_positions"][:, None, :].expand(b, h * w, 3)
    rays = [per_ray(t) for t in (x["rays_o"], x["rays_d"], light, x["jitter"])]
    valid = per_ray(torch.ones(n, device=device), fill=0.0).reshape(-1)
    starts = range(0, n + pad, chunk_rays)
    chunks = [[r[s:s + chunk_rays] for r in rays] for s in starts]
    valid = [valid[s:s + chunk_rays] for s in starts]

    def bucket(i):
        return renderer.bucket_sizes(chunk_rays, float(buckets[i])) if buckets else (0, 0)

    def smallest(occupied, headroom=1.0):
        for i in range(len(buckets)):
            if np.all(np.ceil(occupied * headroom) <= np.asarray(bucket(i))):
                return i
        return len(buckets) - 1

    index, rerendered = bucket_index, 0.0
    with torch.no_grad():
        while True:
            renders = list(_chunk_renders(renderer, chunks, x, shading, bucket(index), valid, active["orient"]))
            occupied = np.stack([out["occupied"].cpu().numpy() for out, _ in renders])
            needed = smallest(occupied.max(0)) if buckets else index
            if needed <= index:
                break
            index, rerendered = needed, 1.0
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n + pad, device=device)
    maps = {k: torch.cat([out[k] for out, _ in renders], 0)[inverse][:n].reshape(b, h, w, -1).requires_grad_()
            for k in DEFERRED_MAPS}
    orient_total = sum(orient for _, orient in renders)
    del renders
    t1 = time.perf_counter()

    rgb = composite_background(maps, x["bg_color"], x["bg_mask"])
    loss_sds, _ = guidance(rgb, x["c2w"], x["text_embeddings"], x["t"], x["noise"], x["vae_noise"])
    count = (maps["opacity"] > 0).sum().clamp(min=1).detach()
    zero = torch.zeros((), device=device)
    terms = [loss_sds, orient_total / count if active["orient"] else zero,
             sparsity_loss(maps["opacity"]) if active["sparsity"] else zero,
             opaque_loss(maps["opacity"]) if active["opaque"] else zero,
             z_variance_loss(maps["z_variance"], maps["opacity"]) if active["z_variance"] else zero]
    loss = sum(term * x["loss_weights"][i] for i, term in enumerate(terms))
    loss.backward()
    d_maps = {k: per_ray(maps[k].grad, fill=0.0) for k in DEFERRED_MAPS if maps[k].grad is not None}
    orient_scale = x["loss_weights"][1] / count if active["orient"] else zero
    t2 = time.perf_counter()

    for c, (out, orient) in enumerate(_chunk_renders(renderer, chunks, x, shading, bucket(index), valid,
                                                              active["orient"])):
        s = c * chunk_rays
        objective = sum((out[k] * d[s:s + chunk_rays]).sum() for k, d in d_maps.items())
        (objective + orient_scale * orient).backward()
    t3 = time.perf_counter()
    if grad_clip is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if seconds is not None:
        seconds.update(render=t1 - t0, image=t2 - t1, backward=t3 - t2, update=time.perf_counter() - t3)
    samples = len(chunks) * chunk_rays * x["jitter"].shape[-1]
    evaluated = bucket(index)[0] * len(chunks) if buckets else samples
    metrics = {"bucket_index": smallest(occupied.max(0), BUCKET_HEADROOM) if buckets else index,
               "occupied_fraction": float(occupied[:, 0].sum()) / samples, "evaluated_fraction": evaluated / samples,
               "rerendered": rerendered}
    return float(loss.detach()), [float(t.detach()) for t in terms], metrics
