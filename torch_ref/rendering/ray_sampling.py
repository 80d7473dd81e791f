"""Static-shape ray sampling and compositing (PyTorch reference; twin of mindspore_impl/.../ray_sampling.py).

Every ray gets the same number of samples so the MindSpore step compiles with static shapes.
Shapes: R rays, S samples per ray.
"""
from __future__ import annotations

import torch

_TINY_DIR = 1e-9  # direction components below this are nudged so 1/d stays finite


def ray_box_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float):
    """Slab test against [-radius, radius]^3. (R,3),(R,3) -> near (R,1), far (R,1); near = far = 0 on a miss."""
    safe_d = torch.where(rays_d.abs() < _TINY_DIR,
                         torch.where(rays_d >= 0, torch.full_like(rays_d, _TINY_DIR), torch.full_like(rays_d, -_TINY_DIR)),
                         rays_d)
    inv_d = 1.0 / safe_d
    t0 = (-radius - rays_o) * inv_d
    t1 = (radius - rays_o) * inv_d
    t_enter = torch.minimum(t0, t1).amax(dim=-1, keepdim=True).clamp(min=0.0)
    t_exit = torch.maximum(t0, t1).amin(dim=-1, keepdim=True)
    hit = t_exit > t_enter
    zero = torch.zeros_like(t_enter)
    return torch.where(hit, t_enter, zero), torch.where(hit, t_exit, zero)


def stratified_t(near: torch.Tensor, step: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample i of each ray at near + (i + u_i) * step. near, step (R,1); u (R,S) in [0,1) -> t (R,S)."""
    idx = torch.arange(u.shape[-1], dtype=u.dtype, device=u.device)
    return near + (idx + u) * step


def uniform_intervals(near: torch.Tensor, step: torch.Tensor, n: int):
    """Bins [near + i*step, near + (i+1)*step] for i < n -> starts, ends (R,n)."""
    idx = torch.arange(n, dtype=near.dtype, device=near.device)
    starts = near + idx * step
    return starts, starts + step


def sample_pdf(near: torch.Tensor, step: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling of the piecewise-constant pdf given by `weights` on the uniform bins.

    near, step (R,1); weights (R,Sc); u (R,Si) sorted in [0,1) -> t (R,Si), sorted.
    The bin search is a comparison count (no searchsorted) so both frameworks run the same arithmetic.
    """
    pdf = weights + 1e-5  # keeps every bin reachable and the cdf strictly increasing
    pdf = pdf / pdf.sum(dim=-1, keepdim=True)
    cdf = torch.cumsum(pdf, dim=-1)
    inner = cdf[:, :-1]
    b = (u[:, :, None] >= inner[:, None, :]).to(u.dtype).sum(dim=-1).long()
    cdf_full = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], dim=-1)
    lo = torch.gather(cdf_full, 1, b)
    hi = torch.gather(cdf_full, 1, b + 1)
    frac = ((u - lo) / (hi - lo)).clamp(0.0, 1.0)
    return near + (b.to(u.dtype) + frac) * step


def merged_intervals(t: torch.Tensor, near: torch.Tensor, far: torch.Tensor):
    """Sorted sample positions t (R,S) -> intervals split at the midpoints, spanning [near, far]."""
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    return torch.cat([near, mids], dim=-1), torch.cat([mids, far], dim=-1)


def composite_weights(sigma: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Volume-rendering weights: alpha = 1 - exp(-sigma delta), T = exp(-exclusive cumsum(sigma delta)). (R,S)."""
    tau = sigma * delta
    alpha = 1.0 - torch.exp(-tau)
    transmittance = torch.exp(-(torch.cumsum(tau, dim=-1) - tau))
    return transmittance * alpha


def normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """F.normalize semantics x / max(|x|, eps); the clamp sits under the sqrt so a zero vector has a zero gradient."""
    return x / torch.sqrt(torch.clamp((x * x).sum(dim=-1, keepdim=True), min=eps * eps))


def compact_slots(occupied: torch.Tensor, bucket: int):
    """Empty-space skipping with static shapes: occupied (M,) bool -> slot (M,), source (bucket,), count ();
    see the MindSpore twin. Slot `bucket` means no place in the buffer."""
    m = occupied.shape[0]
    occ = occupied.to(torch.int64)
    rank = torch.cumsum(occ, 0) - 1
    keep = occupied & (rank < bucket)
    slot = torch.where(keep, rank, torch.full_like(rank, bucket))
    source = torch.zeros(bucket + 1, dtype=torch.int64, device=occupied.device)
    source.index_add_(0, slot, torch.arange(m, device=occupied.device) * keep.to(torch.int64))
    return slot, source[:bucket], occ.sum()


def scatter_back(values: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Buffer values (K,C) -> per sample (M,C) by slot; samples without a slot get 0."""
    return torch.cat([values, values.new_zeros(1, values.shape[1])], 0)[slot]
