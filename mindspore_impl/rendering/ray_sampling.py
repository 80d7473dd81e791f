"""Static-shape ray sampling and compositing (MindSpore; twin of torch_ref/.../ray_sampling.py).

Every ray gets the same number of samples so the step compiles with static shapes (GRAPH mode).
Shapes: R rays, S samples per ray.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

_TINY_DIR = 1e-9  # direction components below this are nudged so 1/d stays finite
_sort_last = ops.Sort(axis=-1)


def _arange(n: int, dtype):
    return ops.arange(0, n, 1, dtype=ms.int32).astype(dtype)


def ray_box_intersect(rays_o, rays_d, radius: float):
    """Slab test against [-radius, radius]^3. (R,3),(R,3) -> near (R,1), far (R,1); near = far = 0 on a miss."""
    tiny = ops.ones_like(rays_d) * _TINY_DIR
    safe_d = ops.where(ops.abs(rays_d) < _TINY_DIR, ops.where(rays_d >= 0, tiny, -tiny), rays_d)
    inv_d = 1.0 / safe_d
    t0 = (-radius - rays_o) * inv_d
    t1 = (radius - rays_o) * inv_d
    t_enter = ops.clamp(ops.minimum(t0, t1).max(axis=-1, keepdims=True), min=0.0)
    t_exit = ops.maximum(t0, t1).min(axis=-1, keepdims=True)
    hit = t_exit > t_enter
    zero = ops.zeros_like(t_enter)
    return ops.where(hit, t_enter, zero), ops.where(hit, t_exit, zero)


def stratified_t(near, step, u):
    """Sample i of each ray at near + (i + u_i) * step. near, step (R,1); u (R,S) in [0,1) -> t (R,S)."""
    return near + (_arange(u.shape[-1], u.dtype) + u) * step


def uniform_intervals(near, step, n: int):
    """Bins [near + i*step, near + (i+1)*step] for i < n -> starts, ends (R,n)."""
    starts = near + _arange(n, near.dtype) * step
    return starts, starts + step


def sample_pdf(near, step, weights, u):
    """Inverse-CDF sampling of the piecewise-constant pdf given by `weights` on the uniform bins.

    near, step (R,1); weights (R,Sc); u (R,Si) sorted in [0,1) -> t (R,Si), sorted.
    The bin search is a comparison count (no searchsorted) so both frameworks run the same arithmetic.
    """
    pdf = weights + 1e-5  # keeps every bin reachable and the cdf strictly increasing
    pdf = pdf / pdf.sum(axis=-1, keepdims=True)
    cdf = ops.cumsum(pdf, -1)
    inner = cdf[:, :-1]
    b = (ops.expand_dims(u, 2) >= ops.expand_dims(inner, 1)).astype(u.dtype).sum(axis=-1).astype(ms.int32)
    cdf_full = ops.concat([ops.zeros_like(cdf[:, :1]), cdf], -1)
    lo = ops.gather_elements(cdf_full, 1, b)
    hi = ops.gather_elements(cdf_full, 1, b + 1)
    frac = ops.clamp((u - lo) / (hi - lo), 0.0, 1.0)
    return near + (b.astype(u.dtype) + frac) * step


def sort_samples(t):
    return _sort_last(t)[0]


def merged_intervals(t, near, far):
    """Sorted sample positions t (R,S) -> intervals split at the midpoints, spanning [near, far]."""
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    return ops.concat([near, mids], -1), ops.concat([mids, far], -1)


def composite_weights(sigma, delta):
    """Volume-rendering weights: alpha = 1 - exp(-sigma delta), T = exp(-exclusive cumsum(sigma delta)). (R,S)."""
    tau = sigma * delta
    alpha = 1.0 - ops.exp(-tau)
    transmittance = ops.exp(-(ops.cumsum(tau, -1) - tau))
    return transmittance * alpha


def normalize(x, eps: float = 1e-12):
    """F.normalize semantics x / max(|x|, eps); the clamp sits under the sqrt so a zero vector has a zero gradient."""
    return x / ops.sqrt(ops.clamp((x * x).sum(axis=-1, keepdims=True), min=eps * eps))


def compact_slots(occupied, bucket: int):
    """Empty-space skipping with static shapes: a buffer of `bucket` slots for the occupied samples.

    occupied (M,) bool -> slot (M,) int32: each occupied sample's place in the buffer, in sample order, and
    `bucket` (no place) for empty samples and occupied ones beyond the buffer; source (bucket,) int32: the sample
    each slot holds (0 in unused slots, whose results are never read back); count () int32: occupied samples.
    """
    m = occupied.shape[0]
    occ = occupied.astype(ms.int32)
    rank = ops.cumsum(occ, 0) - 1
    keep = ops.logical_and(occupied, rank < bucket)
    slot = ops.where(keep, rank, ops.full_like(rank, bucket))
    ids = ops.arange(0, m, 1, dtype=ms.int32) * keep.astype(ms.int32)
    source = ops.unsorted_segment_sum(ids, slot, bucket + 1)[:bucket]
    return slot, source, occ.sum()


def scatter_back(values, slot):
    """Buffer values (K,C) -> per sample (M,C) by slot; samples without a slot (slot K) get 0."""
    padded = ops.concat([values, ops.zeros((1, values.shape[1]), values.dtype)], 0)
    return ops.gather(padded, slot, 0)
