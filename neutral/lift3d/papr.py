"""Framework-neutral part of PAPR (Proximity Attention Point Rendering; upstream zvict/papr): the typed configs of
the point cloud (`papr-point-cloud`) and the renderer (`papr-renderer`), their checks, and the numpy host
algorithms that change the point set between steps: initialisation, bucketed capacities with padding, pruning
and growing. Shared by mindspore_impl/ and torch_ref/lift3d/{geometry/point_cloud.py, renderers/papr_renderer.py}.

Upstream facts (zvict/papr at 314dd53):
- defaults: configs/default.yml (select_k 20, point_feats.dim 64, influ_init_val 0, init_type cube,
  init_scale 1.2, init_num 3000, max_num_pts 30000, background.constant 5.0, d_model 256, k_L [6,6,6],
  q_L [6], v_L [6,6], pe_factor 2, key/query MLP 5x256 with layernorm, value MLP 8x256 -> 32 without norm,
  small-unet decoder, coord_scale 10, patches 160x160, prune every 500 in [10000, 150000) at 0.0, add 1000
  points every 1000 in [20000, 70000) with add_type random, add_k 3, add_sample_type top-knn-std,
  add_sample_k 10); configs/nerfsyn/*.yml switch the MLPs to leakyrelu and give the value MLP skip_layers [5];
- pruning: models/model.py PAPR.prune_points keeps points with influence > threshold (prune_type "<");
- growing: models/utils.py add_points_knn: the sparsity of a point is the standard deviation of its distances
  to its add_sample_k nearest points (the point itself included, at distance 0); the add_num points where it is
  largest each spawn one new point, a random convex combination (weights uniform(0,1), normalised) of their
  add_k nearest other points; influence and features are interpolated with the same weights;
- train.py re-creates every optimizer (fresh Adam moments) after each prune or grow, and grows only once a
  prune has happened.

Padding rule (static shapes): the parameters hold `capacity = bucketed_count(n, point_buckets)` rows; rows
>= n are padding with position 0, influence 0, feature 0 and `point_mask` 0. The renderer gives a masked point
the selection distance BIG (it is never chosen over a real point) and, when it is chosen anyway (fewer real
points than k in front of the camera), the attention score MASKED_SCORE, whose softmax weight is exactly 0 in
fp32 next to the background token; so a padded point changes no output and receives exactly zero gradient.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from neutral.config import ConfigError, parse_structured

BIG_DISTANCE = 1.0e10   # squared selection distance of a masked point (real ones are far smaller)
MASKED_SCORE = -1.0e9   # attention score of a masked point: exp(MASKED_SCORE - 5) == 0 in fp32
ACTIVATIONS = ("relu", "leakyrelu")
NORMS = ("layernorm", "none")
INIT_TYPES = ("cube", "sphere", "ball")


# ------------------------------------------------------------------------------------------------ configs
@dataclass
class PointCloudConfig:
    """`papr-point-cloud`: positions (world units), influence scores and features of the points."""
    num_points: int = field(default=3000, metadata={"min": 1})          # upstream points.init_num
    feature_dim: int = field(default=64, metadata={"min": 1})           # upstream point_feats.dim
    influence_init: float = 0.0                                          # upstream influ_init_val
    # cube: upstream's lattice of floor(n^(1/3))^3 points plus uniform random rest; sphere: upstream's Fibonacci
    # points on the sphere surface; ball: uniform random inside the ball
    init_type: str = "cube"
    init_radius: float = field(default=1.2, metadata={"min": 0.0})      # upstream init_scale (world units)
    init_center: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    seed: int = 0                                                         # initial positions and features
    # parameter capacities: the point count is padded to the smallest bucket that holds it (static shapes)
    point_buckets: list = field(default_factory=lambda: [4096, 8192, 16384, 32768])
    max_points: int = field(default=30000, metadata={"min": 1})         # upstream max_num_pts
    # pruning (host, between steps): remove points with influence <= threshold
    prune_threshold: float = 0.0
    prune_thresholds: list = field(default_factory=list)       # upstream prune_thresh_list, switched at
    prune_threshold_steps: list = field(default_factory=list)  # prune_steps_list (bisect_left)
    prune_every: int = field(default=500, metadata={"min": 0})  # 0: never
    prune_start: int = 10000
    prune_stop: int = 150000
    # growing: grow_count points where neighbour distances vary most
    grow_count: int = field(default=1000, metadata={"min": 0})
    grow_every: int = field(default=1000, metadata={"min": 0})  # 0: never
    grow_start: int = 20000
    grow_stop: int = 70000
    grow_sample_k: int = field(default=10, metadata={"min": 2})   # upstream add_sample_k
    grow_interp_k: int = field(default=3, metadata={"min": 1})    # upstream add_k


@dataclass
class EmbedMLPConfig:
    """One embedding feed-forward (upstream models/attn.py FeedForward around models/mlp.py MLP)."""
    d_ff: int = field(default=256, metadata={"min": 1})
    d_out: int = field(default=256, metadata={"min": 1})
    n_layers: int = field(default=5, metadata={"min": 1})
    activation: str = "relu"          # relu | leakyrelu (slope 0.2)
    norm: str = "layernorm"           # layernorm (upstream's: unbiased std, eps on the std) | none
    skip_layers: list = field(default_factory=list)  # linear i also takes the MLP input (concatenated)


def _value_mlp():
    return EmbedMLPConfig(d_ff=256, d_out=32, n_layers=8, norm="none")


@dataclass
class PAPRRendererConfig:
    """`papr-renderer`: proximity attention over the k points nearest each ray, then a UNet decoder."""
    k: int = field(default=20, metadata={"min": 1})                 # upstream select_k
    # nearest-point search: 0 = over every (bucketed) point; C > 0 = per tile of candidate_tile x candidate_tile
    # rays, first the C points nearest the tile's mean ray, then each ray's k among them (approximate; exact
    # when C >= the point capacity, which then skips the first stage)
    candidate_size: int = field(default=0, metadata={"min": 0})
    candidate_tile: int = field(default=8, metadata={"min": 1})
    front_only: bool = True           # only points in front of the camera (upstream has no such test)
    coord_scale: float = field(default=10.0, metadata={"min": 1e-6})  # world -> PAPR units (upstream coord_scale)
    eps: float = 1.0e-6
    key_frequencies: list = field(default_factory=lambda: [6, 6, 6])   # PE of [position, along, perpendicular]
    query_frequencies: list = field(default_factory=lambda: [6])       # PE of the ray direction
    value_frequencies: list = field(default_factory=lambda: [6, 6])    # PE of [along, perpendicular]
    pe_factor: float = 2.0
    attention_dim: int = field(default=256, metadata={"min": 1})       # upstream d_model; scores / sqrt(it)
    key_mlp: EmbedMLPConfig = field(default_factory=EmbedMLPConfig)
    query_mlp: EmbedMLPConfig = field(default_factory=EmbedMLPConfig)
    value_mlp: EmbedMLPConfig = field(default_factory=_value_mlp)      # its d_out = feature-map channels
    background_score: float = 5.0
    normalize_topk_attn: bool = True
    decoder_channels: int = field(default=128, metadata={"min": 1})    # SmallUNet: c, 2c, 4c
    patch_size: int = field(default=160, metadata={"min": 4})          # training crops (the data module's)
    eval_chunk_size: int = field(default=16384, metadata={"min": 1})   # rays per band in render_chunked

    @property
    def feature_channels(self) -> int:
        return self.value_mlp.d_out


# ------------------------------------------------------------------------------------------------ checks
def check_mlp(cfg: EmbedMLPConfig, where: str) -> None:
    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"{where}.activation must be one of {ACTIVATIONS}, got {cfg.activation!r}")
    if cfg.norm not in NORMS:
        raise ConfigError(f"{where}.norm must be one of {NORMS}, got {cfg.norm!r}")
    bad = [s for s in cfg.skip_layers if not (isinstance(s, int) and 0 < s < cfg.n_layers)]
    if bad:
        raise ConfigError(f"{where}.skip_layers must be linear-layer indices in [1, {cfg.n_layers - 1}], got {bad}")


def parse_point_cloud_config(cfg: Any) -> PointCloudConfig:
    c = parse_structured(PointCloudConfig, cfg, "papr-point-cloud")
    if c.init_type not in INIT_TYPES:
        raise ConfigError(f"papr-point-cloud.init_type must be one of {INIT_TYPES}, got {c.init_type!r}")
    if len(c.init_center) != 3:
        raise ConfigError(f"papr-point-cloud.init_center needs 3 values, got {list(c.init_center)}")
    buckets = [int(b) for b in c.point_buckets]
    if not buckets or buckets != sorted(set(buckets)) or buckets[0] < 1:
        raise ConfigError(f"papr-point-cloud.point_buckets must be ascending positive counts, got {buckets}")
    if c.max_points > buckets[-1] or c.num_points > c.max_points:
        raise ConfigError(f"papr-point-cloud: need num_points <= max_points <= the largest bucket, got "
                          f"{c.num_points}, {c.max_points}, {buckets[-1]}")
    if len(c.prune_thresholds) != (len(c.prune_threshold_steps) + 1 if c.prune_thresholds else 0):
        raise ConfigError("papr-point-cloud.prune_thresholds needs one more value than prune_threshold_steps "
                          f"(upstream prune_thresh_list / prune_steps_list), got {list(c.prune_thresholds)} and "
                          f"{list(c.prune_threshold_steps)}")
    return c


def parse_renderer_config(cfg: Any, geometry_cfg: Any) -> PAPRRendererConfig:
    """The renderer's config, checked against the point cloud it renders."""
    c = parse_structured(PAPRRendererConfig, cfg, "papr-renderer")
    if not isinstance(geometry_cfg, PointCloudConfig):
        raise ConfigError(f"papr-renderer renders a papr-point-cloud geometry, got {type(geometry_cfg).__name__}")
    for name, n in (("key_frequencies", 3), ("query_frequencies", 1), ("value_frequencies", 2)):
        freqs = list(getattr(c, name))
        if len(freqs) != n or any(int(f) != f or f < 0 for f in freqs):
            raise ConfigError(f"papr-renderer.{name} needs {n} non-negative integers, got {freqs}")
    for name in ("key_mlp", "query_mlp", "value_mlp"):
        check_mlp(getattr(c, name), f"papr-renderer.{name}")
    smallest = int(geometry_cfg.point_buckets[0])
    if c.k > smallest:
        raise ConfigError(f"papr-renderer.k = {c.k} exceeds the smallest point bucket {smallest}: every capacity "
                          f"must hold k points (padding fills the missing ones)")
    if c.candidate_size and c.candidate_size < c.k:
        raise ConfigError(f"papr-renderer.candidate_size must be 0 or >= k = {c.k}, got {c.candidate_size}")
    if c.candidate_size and c.patch_size % c.candidate_tile:
        raise ConfigError(f"papr-renderer.patch_size {c.patch_size} must be a multiple of candidate_tile "
                          f"{c.candidate_tile}")
    return c


# ------------------------------------------------------------------------------------------------ positional encoding
def pe_dim(d: int, frequencies: int) -> int:
    """Width of upstream posenc with the input kept (embed_type 1): d * (1 + 2L)."""
    return d * (1 + 2 * int(frequencies))


def embed_dims(cfg: PAPRRendererConfig, feature_dim: int) -> tuple[int, int, int]:
    """Input widths of the key, query and value MLPs (upstream models/attn.py Embeddings): key PE of three
    3-vectors, query PE of the direction, value PE of two 3-vectors plus the point feature."""
    k = sum(pe_dim(3, f) for f in cfg.key_frequencies)
    q = sum(pe_dim(3, f) for f in cfg.query_frequencies)
    v = sum(pe_dim(3, f) for f in cfg.value_frequencies) + feature_dim
    return k, q, v


def mlp_layer_dims(d_in: int, cfg: EmbedMLPConfig) -> list[tuple[int, int]]:
    """(in, out) of each linear layer of upstream models/mlp.py MLP (skip layers concatenate the input)."""
    dims = []
    for i in range(cfg.n_layers):
        d_i = d_in if i == 0 else cfg.d_ff
        if i in cfg.skip_layers:
            d_i += d_in
        dims.append((d_i, cfg.d_out if i == cfg.n_layers - 1 else cfg.d_ff))
    return dims


# ------------------------------------------------------------------------------------------------ point sets
def bucketed_count(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n: parameter capacities come from a small fixed set, so a compiled graph is
    reused across prune/grow until the count crosses a bucket."""
    for b in sorted(int(x) for x in buckets):
        if n <= b:
            return b
    raise ValueError(f"{n} points exceed the largest point bucket {max(buckets)}")


def pad_points(positions: np.ndarray, influence: np.ndarray, features: np.ndarray, capacity: int):
    """Pad the n real points to `capacity` rows (the padding rule in the module doc) -> (positions (C,3),
    influence (C,1), features (C,F), mask (C,)) float32."""
    n = positions.shape[0]
    if n > capacity:
        raise ValueError(f"{n} points do not fit capacity {capacity}")

    def pad(x, width):
        out = np.zeros((capacity, width), np.float32)
        out[:n] = np.asarray(x, np.float32).reshape(n, width)
        return out

    mask = np.zeros((capacity,), np.float32)
    mask[:n] = 1.0
    return pad(positions, 3), pad(influence, 1), pad(features, features.shape[-1]), mask


def _fibonacci_sphere(n: int) -> np.ndarray:
    """Upstream models/model.py PAPR._sphere_pc: n points spread on the unit sphere."""
    i = np.arange(n, dtype=np.float64)
    y = 1.0 - i / max(n - 1, 1) * 2.0
    r = np.sqrt(np.maximum(1.0 - y * y, 0.0))
    theta = math.pi * (3.0 - math.sqrt(5.0)) * i
    return np.stack([np.cos(theta) * r, y, np.sin(theta) * r], -1)


def _cube(n: int, rng: np.random.Generator) -> np.ndarray:
    """Upstream PAPR._cube_normal_pc: a floor(n^(1/3))^3 lattice in [-1, 1]^3, the rest uniform in the cube."""
    m = int(n ** (1.0 / 3.0))
    while (m + 1) ** 3 <= n:  # float cube roots of exact cubes round down (64 ** (1/3) = 3.999...)
        m += 1
    axis = np.linspace(-1.0, 1.0, m)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    rest = rng.uniform(-1.0, 1.0, (n - grid.shape[0], 3))
    return np.concatenate([grid, rest], 0)


def _ball(n: int, rng: np.random.Generator) -> np.ndarray:
    direction = rng.standard_normal((n, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True) + 1e-12
    return direction * rng.random((n, 1)) ** (1.0 / 3.0)


def init_points(cfg: PointCloudConfig, cloud: Optional[np.ndarray] = None):
    """Initial (positions (n,3), influence (n,1), features (n,F)) float32, from cfg.seed. A given cloud
    (m,3) is shuffled and cut to max_points, as upstream does with points.load_path."""
    rng = np.random.default_rng(cfg.seed)
    if cloud is not None:
        cloud = np.asarray(cloud, np.float64).reshape(-1, 3)
        positions = cloud[rng.permutation(cloud.shape[0])][:cfg.max_points]
    else:
        n = cfg.num_points
        unit = {"cube": lambda: _cube(n, rng), "sphere": lambda: _fibonacci_sphere(n),
                "ball": lambda: _ball(n, rng)}[cfg.init_type]()
        positions = unit * cfg.init_radius + np.asarray(cfg.init_center, np.float64)
    n = positions.shape[0]
    influence = np.full((n, 1), cfg.influence_init, np.float32)
    features = rng.standard_normal((n, cfg.feature_dim)).astype(np.float32)  # upstream torch.randn
    return positions.astype(np.float32), influence, features


def prune_points(positions: np.ndarray, influence: np.ndarray, features: np.ndarray, threshold: float):
    """Upstream PAPR.prune_points (prune_type "<"): keep points with influence > threshold.
    -> (positions, influence, features, keep mask (n,) bool)."""
    keep = np.asarray(influence).reshape(-1) > threshold
    return positions[keep], influence[keep], features[keep], keep


def knn_distances(query: np.ndarray, points: np.ndarray, k: int, exclude_self: bool = False,
                  chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest points (float64, ascending) -> (distances (q,k), indices (q,k)). exclude_self:
    query i is points[i], and that index is skipped."""
    query, points = np.asarray(query, np.float64), np.asarray(points, np.float64)
    k = min(k, points.shape[0] - (1 if exclude_self else 0))
    dists = np.empty((query.shape[0], k))
    inds = np.empty((query.shape[0], k), np.int64)
    sq = (points ** 2).sum(-1)
    for s in range(0, query.shape[0], chunk):
        q = query[s:s + chunk]
        d2 = np.maximum((q ** 2).sum(-1)[:, None] - 2.0 * q @ points.T + sq[None], 0.0)
        if exclude_self:
            d2[np.arange(q.shape[0]), np.arange(s, s + q.shape[0])] = np.inf
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d2, part, 1), axis=1, kind="stable")
        inds[s:s + chunk] = np.take_along_axis(part, order, 1)
        dists[s:s + chunk] = np.sqrt(np.take_along_axis(d2, inds[s:s + chunk], 1))
    return dists, inds


def sparsity(positions: np.ndarray, sample_k: int) -> np.ndarray:
    """Upstream add_sample_type "top-knn-std": std of the distances to the sample_k nearest points, the point
    itself (distance 0) counted among them (scipy KDTree.query returns it first) -> (n,)."""
    others, _ = knn_distances(positions, positions, sample_k - 1, exclude_self=True)
    return np.concatenate([np.zeros((positions.shape[0], 1)), others], 1).std(axis=-1)


def grow_points(positions: np.ndarray, influence: np.ndarray, features: np.ndarray, count: int,
                rng: np.random.Generator, sample_k: int = 10, interp_k: int = 3, max_points: Optional[int] = None):
    """Upstream models/utils.py add_points_knn with add_type "random", add_sample_type "top-knn-std": new points
    appended after the old ones -> (positions, influence, features, seeds (m,) indices of the points each new one
    was grown from). max_points caps the total (upstream's clip, applied to the count that is added).

    Where: the `count` points of largest sparsity (all points, drawn with replacement, when n <= count, as
    upstream); what: per seed a random convex combination (weights uniform(0,1), normalised) of its interp_k
    nearest other points, for position, influence and features alike."""
    n = positions.shape[0]
    if max_points is not None:
        count = min(count, max_points - n)
    if count <= 0 or n < 2:
        empty = np.zeros((0,), np.int64)
        return positions, influence, features, empty
    if n <= count:
        seeds = rng.choice(n, count, replace=True)
    else:
        seeds = np.argsort(sparsity(positions, sample_k), kind="stable")[-count:]
    _, nbr = knn_distances(positions[seeds], positions, interp_k + 1)
    # drop each seed's own row (its nearest, distance 0) as upstream drops the first neighbour
    nbr = np.stack([row[row != s][:interp_k] if np.any(row == s) else row[:interp_k] for row, s in zip(nbr, seeds)])
    w = rng.uniform(0.0, 1.0, (len(seeds), nbr.shape[1]))
    w /= w.sum(-1, keepdims=True)

    def mix(x):
        return (np.asarray(x, np.float64)[nbr] * w[..., None]).sum(1).astype(np.float32)

    return (np.concatenate([positions, mix(positions)], 0), np.concatenate([influence, mix(influence)], 0),
            np.concatenate([features, mix(features)], 0), seeds)


# ------------------------------------------------------------------------------------------------ schedule
def _first_at_or_after(start: int, every: int) -> int:
    return -(-max(start, 0) // every) * every


def prune_due(cfg: PointCloudConfig, step: int) -> bool:
    """Upstream train.py: prune at step % prune_every == 0 within [prune_start, prune_stop)."""
    return cfg.prune_every > 0 and cfg.prune_start <= step < cfg.prune_stop and step % cfg.prune_every == 0


def prune_threshold(cfg: PointCloudConfig, step: int) -> float:
    if cfg.prune_thresholds:
        return float(cfg.prune_thresholds[bisect.bisect_left(list(cfg.prune_threshold_steps), step)])
    return float(cfg.prune_threshold)


def grow_due(cfg: PointCloudConfig, step: int) -> bool:
    """Upstream train.py: grow at step % grow_every == 0 within [grow_start, grow_stop), once a prune has run
    (at this step or before)."""
    if cfg.grow_every <= 0 or cfg.grow_count <= 0 or not cfg.grow_start <= step < cfg.grow_stop:
        return False
    if step % cfg.grow_every:
        return False
    if cfg.prune_every <= 0:
        return False
    first_prune = _first_at_or_after(cfg.prune_start, cfg.prune_every)
    return first_prune < cfg.prune_stop and first_prune <= step
