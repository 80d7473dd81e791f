"""PAPR point rendering (`papr-point-cloud` + `papr-renderer`, neutral/lift3d/papr.py): MindSpore equals torch_ref
(outputs and gradients w.r.t. positions, influence, features, attention and decoder parameters), the k-nearest
search equals a brute-force numpy search, GRAPH equals PyNative, bucket padding changes nothing, render_chunked
equals the whole-image render, and the host-side pruning / growing follow upstream zvict/papr."""
import time

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor

from mindspore_impl.lift3d.background.solid_color import SolidColorBackground as MsBackground
from mindspore_impl.lift3d.geometry.point_cloud import PAPRPointCloud as MsCloud
from mindspore_impl.lift3d.renderers.papr_renderer import IMAGE_KEYS, PAPRRenderer as MsRenderer
from neutral.config import ConfigError
from neutral.lift3d import papr
from tests.parity import assert_parity, to_numpy, to_torch, torch_module
from tests.parity_cases import copy_params
from torch_ref.lift3d.background.solid_color import SolidColorBackground as PtBackground
from torch_ref.lift3d.geometry.point_cloud import PAPRPointCloud as PtCloud
from torch_ref.lift3d.renderers.papr_renderer import PAPRRenderer as PtRenderer

GEO = dict(num_points=96, feature_dim=8, init_type="ball", init_radius=0.6, point_buckets=[96, 128],
           max_points=128, seed=0)
SMALL_MLP = dict(d_ff=16, d_out=16, n_layers=2)
RENDERER = dict(k=6, coord_scale=2.0, key_frequencies=[2, 2, 2], query_frequencies=[2], value_frequencies=[2, 2],
                attention_dim=16, key_mlp=SMALL_MLP, query_mlp=SMALL_MLP,
                value_mlp=dict(d_ff=16, d_out=8, n_layers=3, activation="leakyrelu", norm="none", skip_layers=[2]),
                decoder_channels=8, patch_size=8, candidate_tile=4, background_score=2.0)
BACKGROUND = dict(color=[0.2, 0.5, 0.9], learned=True)
B, H, W = 2, 8, 8
_COMPILED = []  # compiled functions stay referenced (tests/parity.py, _RETIRED_STEPS)


def pinhole_rays(b=B, h=H, w=W, seed=3, distance=2.0, fov=0.9):
    """Cameras at `distance` from the origin looking at it -> rays_o, rays_d (b,h,w,3) float32, unit directions."""
    rng = np.random.default_rng(seed)
    eye = rng.normal(size=(b, 3))
    eye = distance * eye / np.linalg.norm(eye, axis=-1, keepdims=True)
    fwd = -eye / np.linalg.norm(eye, axis=-1, keepdims=True)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    up = np.cross(right, fwd)
    half = np.tan(fov / 2)
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
    d = (fwd[:, None, None] + half * xs[None, ..., None] * right[:, None, None]
         - half * ys[None, ..., None] * up[:, None, None])
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(eye[:, None, None], d.shape)
    return o.astype(np.float32), d.astype(np.float32)


def randomise(cloud_arrays, seed=1):
    """Random influence (some negative) so scores, gradients and masking all matter."""
    pos, _, feats = cloud_arrays
    infl = np.random.default_rng(seed).normal(0.5, 1.0, (pos.shape[0], 1)).astype(np.float32)
    return pos, infl, feats


def build_pair(renderer=None, geo=None, arrays=None, seed=0):
    """(torch renderer, MindSpore renderer) with the same parameters; arrays: the real points to use."""
    renderer, geo = dict(RENDERER, **(renderer or {})), dict(GEO, **(geo or {}))
    torch.manual_seed(seed)
    pt_geo, ms_geo = PtCloud(geo), MsCloud(geo)
    arrays = randomise(pt_geo.active_arrays()) if arrays is None else arrays
    pt_geo.set_points(*arrays)
    ms_geo.set_points(*arrays)
    pt_bg, ms_bg = PtBackground(BACKGROUND), MsBackground(BACKGROUND)
    pt_r, ms_r = PtRenderer(renderer, pt_geo, None, pt_bg), MsRenderer(renderer, ms_geo, None, ms_bg)
    for pt_m, ms_m in ((pt_geo, ms_geo), (pt_bg, ms_bg), (pt_r, ms_r)):
        torch_module(pt_m)
        copy_params(pt_m, ms_m)
    return pt_r, ms_r


def _ms_params(ms_r):
    return (list(ms_r.geometry.trainable_params()) + list(ms_r.trainable_params())
            + list(ms_r.background.trainable_params()))


def _pt_params(pt_r):
    return list(pt_r.geometry.named_parameters()) + list(pt_r.named_parameters()) + \
        list(pt_r.background.named_parameters())


def cotangents(seed=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(B, H, W, c)).astype(np.float32) for c in (3, 1, 1)]


def ms_render_and_grads(ms_r, o, d, g):
    gt = [Tensor(x) for x in g]
    params = _ms_params(ms_r)

    def loss_fn(a, b):
        out = ms_r(a, b)
        return (out["comp_rgb"] * gt[0]).sum() + (out["opacity"] * gt[1]).sum() + (out["depth"] * gt[2]).sum()

    out = ms_r(Tensor(o), Tensor(d))
    grads = ms.grad(loss_fn, None, params)(Tensor(o), Tensor(d))
    return out, {p.name: x.asnumpy() for p, x in zip(params, grads)}


def pt_render_and_grads(pt_r, o, d, g):
    out = pt_r(to_torch(o), to_torch(d))
    loss = sum((out[k] * to_torch(x)).sum() for k, x in zip(("comp_rgb", "opacity", "depth"), g))
    params = _pt_params(pt_r)
    grads = torch.autograd.grad(loss, [p for _, p in params])
    return out, {n: to_numpy(x) for (n, _), x in zip(params, grads)}


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("search", ["exact", "candidates"])
def test_matches_torch_ref_outputs_and_gradients(search):
    t0 = time.time()
    pt_r, ms_r = build_pair({"candidate_size": 24} if search == "candidates" else None)
    o, d = pinhole_rays()
    g = cotangents()
    pt_out, pt_grads = pt_render_and_grads(pt_r, o, d, g)
    ms_out, ms_grads = ms_render_and_grads(ms_r, o, d, g)
    for key in IMAGE_KEYS:
        assert_parity(ms_out[key], pt_out[key], f"{search} {key}")
    opacity = to_numpy(pt_out["opacity"])
    assert 0.05 < opacity.mean() < 0.95, opacity.mean()  # neither all background nor all points
    names = set(ms_grads)
    assert names == set(pt_grads), sorted(names ^ set(pt_grads))
    for key in ("points", "points_influ_scores", "pc_feats", "decoder.inc.double_conv.0.weight",
                "decoder.up1.up.weight", "proximity_attn.attention_layer.w_k.weight", "env_color"):
        assert key in names, (key, sorted(names))
        assert np.abs(pt_grads[key]).max() > 0, key
    for key in sorted(names):
        assert_parity(ms_grads[key], pt_grads[key], f"{search} d/d {key}")
    print(f"[papr] parity {search}: {time.time() - t0:.1f} s")


# ----------------------------------------------------------------------------- k nearest
def brute_force_nearest(o, d, pts, mask, k, eps=1e-6, front_only=True):
    """Upstream _calculate_global_distances in float64, per ray -> (indices (R,k) sets, distances (R,k) sorted)."""
    o, d, pts = (np.asarray(x, np.float64).reshape(-1, 3) for x in (o, d, pts))
    v = pts[None] - o[:, None]
    vd = (v * d[:, None]).sum(-1)
    dist = np.linalg.norm(v - d[:, None] * (vd / ((d * d).sum(-1)[:, None] + eps))[..., None], axis=-1)
    valid = (mask[None] > 0.5) & ((vd > 0) if front_only else True)
    dist = np.where(valid, dist, np.inf)
    idx = np.argsort(dist, axis=-1, kind="stable")[:, :k]
    return idx, np.take_along_axis(dist, idx, -1)


def _perp(o, d, pts, idx):
    o, d, pts = (np.asarray(x, np.float64) for x in (o, d, pts))
    v = pts[idx] - o[:, None]
    return np.linalg.norm(v - d[:, None] * ((v * d[:, None]).sum(-1) / (d * d).sum(-1)[:, None])[..., None], axis=-1)


@pytest.mark.parametrize("distance", [2.0, 0.2])
def test_topk_equals_brute_force(distance):
    """Indices as sets and distances equal to upstream's formula in float64; at distance 0.2 the cameras sit
    inside the cloud, so front_only drops the points behind them."""
    _, ms_r = build_pair()
    o, d = pinhole_rays(seed=11, distance=distance)
    pts, _, _, mask = (x.asnumpy() for x in ms_r.geometry())
    s = ms_r.scale
    idx = ms_r.select_points(Tensor(o * s), Tensor(d), Tensor(pts * s), Tensor(mask)).asnumpy().reshape(-1, 6)
    ref_idx, ref_dist = brute_force_nearest(o * s, d, pts * s, mask, 6)
    flat_o, flat_d = o.reshape(-1, 3) * s, d.reshape(-1, 3)
    for r in range(idx.shape[0]):
        assert set(idx[r]) == set(ref_idx[r]), r
    np.testing.assert_allclose(np.sort(_perp(flat_o, flat_d, pts * s, idx), -1), ref_dist, rtol=1e-5, atol=1e-5)
    along = (((pts * s)[idx] - flat_o[:, None]) * flat_d[:, None]).sum(-1)
    assert np.all(along > 0)  # behind-the-camera points never chosen (enough points lie in front)
    behind = (((pts * s)[None] - flat_o[:, None]) * flat_d[:, None]).sum(-1) <= 0
    assert behind.any() == (distance < 1.0)


def test_candidate_search_two_stage_and_exact_limit():
    """candidate_size C: per 4x4 tile the C points nearest the tile's mean ray (brute force here), then each ray's
    k among them; C >= the capacity is the exact search."""
    o, d = pinhole_rays(seed=12)
    _, ms_r = build_pair({"candidate_size": 20})
    pts, _, _, mask = (x.asnumpy() for x in ms_r.geometry())
    s, t, k = ms_r.scale, 4, 6
    idx = ms_r.select_points(Tensor(o * s), Tensor(d), Tensor(pts * s), Tensor(mask)).asnumpy()
    for bi in range(B):
        for ty in range(0, H, t):
            for tx in range(0, W, t):
                to, td = o[bi, ty:ty + t, tx:tx + t].reshape(-1, 3) * s, d[bi, ty:ty + t, tx:tx + t].reshape(-1, 3)
                du = td / np.linalg.norm(td, axis=-1, keepdims=True)
                cand, _ = brute_force_nearest(to.mean(0, keepdims=True), du.mean(0, keepdims=True), pts * s, mask, 20)
                local, _ = brute_force_nearest(to, td, (pts * s)[cand[0]], mask[cand[0]], k)
                got = idx[bi, ty:ty + t, tx:tx + t].reshape(-1, k)
                for r in range(got.shape[0]):
                    assert set(got[r]) == set(cand[0][local[r]])
    _, exact = build_pair()
    _, wide = build_pair({"candidate_size": 200})
    args = (Tensor(o * s), Tensor(d), Tensor(pts * s), Tensor(mask))
    a, b = exact.select_points(*args).asnumpy(), wide.select_points(*args).asnumpy()
    assert np.array_equal(np.sort(a, -1), np.sort(b, -1))


# ----------------------------------------------------------------------------- GRAPH, padding, chunks
def test_graph_equals_pynative():
    _, ms_r = build_pair()
    o, d = (Tensor(x) for x in pinhole_rays())
    py = ms_r(o, d)

    @ms.jit
    def render(a, b):
        out = ms_r(a, b)
        return out["comp_rgb"], out["opacity"], out["depth"]

    _COMPILED.append(render)
    gr = render(o, d)
    for key, x in zip(("comp_rgb", "opacity", "depth"), gr):
        assert_parity(x, py[key], f"GRAPH vs PyNative {key}", rel=1e-5)
    # a point set that stays in its bucket is written in place: the compiled render sees it
    pos, infl, feats = ms_r.geometry.active_arrays()
    assert not ms_r.geometry.set_points(pos[:90] * 0.9, infl[:90] + 0.5, feats[:90])
    py = ms_r(o, d)
    gr = render(o, d)
    assert np.abs(gr[0].asnumpy() - to_numpy(py["comp_rgb"])).max() <= 1e-5


def test_bucket_padding_changes_nothing():
    """96 real points rendered at capacity 96 and padded to 128: equal images, equal gradients of the real
    points, zero gradients for the padding; with fewer real points than k the padding fills the selection and
    still contributes nothing (finite, equal to torch_ref)."""
    _, tight = build_pair(geo={"point_buckets": [96, 128]})
    arrays = tight.geometry.active_arrays()
    _, padded = build_pair(geo={"point_buckets": [128]}, arrays=arrays)
    copy_params_ms(tight, padded)
    assert tight.geometry.capacity == 96 and padded.geometry.capacity == 128
    o, d = pinhole_rays()
    g = cotangents()
    out_a, grads_a = ms_render_and_grads(tight, o, d, g)
    out_b, grads_b = ms_render_and_grads(padded, o, d, g)
    for key in IMAGE_KEYS:
        assert_parity(out_b[key], out_a[key], f"padded {key}", rel=1e-6)
    for key in grads_a:
        b_grad = grads_b[key][:96] if key in ("points", "points_influ_scores", "pc_feats") else grads_b[key]
        assert_parity(b_grad, grads_a[key], f"padded d/d {key}", rel=1e-5)
    for key in ("points", "points_influ_scores", "pc_feats"):
        assert not np.any(grads_b[key][96:]), key
    few = tuple(x[:4] for x in arrays)  # 4 real points, k = 6
    pt_r, ms_r = build_pair(arrays=few)
    pt_out, _ = pt_render_and_grads(pt_r, o, d, g)
    ms_out = ms_r(Tensor(o), Tensor(d))
    for key in IMAGE_KEYS:
        assert np.all(np.isfinite(ms_out[key].asnumpy())), key
        assert_parity(ms_out[key], pt_out[key], f"4 points {key}")


def copy_params_ms(src, dst):
    """Renderer and background parameters of one MindSpore renderer into another (same config)."""
    for a, b in ((src, dst), (src.background, dst.background)):
        values = {p.name: p.asnumpy() for p in a.get_parameters()}
        for p in b.get_parameters():
            p.set_data(Tensor(values[p.name]))


def test_render_chunked_equals_construct():
    for renderer in (None, {"candidate_size": 24}):
        _, ms_r = build_pair(renderer)
        o, d = (Tensor(x) for x in pinhole_rays(seed=4))
        whole = ms_r(o, d)
        # 3 rows per band without candidates (the last band padded), 4 (one tile) with them
        banded = ms_r.render_chunked(o, d, chunk_size=3 * B * W)
        for key in IMAGE_KEYS:
            assert_parity(banded[key], whole[key], f"chunked {key} {renderer}", rel=1e-6)


def test_decoder_odd_sizes_match_torch_ref():
    """SmallUNet on a 6x10 map: the upsampled maps are padded to their skips as upstream Up does."""
    pt_r, ms_r = build_pair()
    x = np.random.default_rng(0).normal(size=(1, 8, 6, 10)).astype(np.float32)
    ref = pt_r.decoder(to_torch(x))
    assert_parity(ms_r.decoder(Tensor(x)), ref, "decoder 6x10")


# ----------------------------------------------------------------------------- host algorithms
def test_bucketed_count_and_padding():
    assert papr.bucketed_count(1, [4, 8]) == 4 and papr.bucketed_count(4, [4, 8]) == 4
    assert papr.bucketed_count(5, [8, 4]) == 8
    with pytest.raises(ValueError):
        papr.bucketed_count(9, [4, 8])
    pos, infl, feats, mask = papr.pad_points(np.ones((3, 3)), np.ones((3, 1)), np.ones((3, 2)), 8)
    assert pos.shape == (8, 3) and feats.shape == (8, 2) and mask.tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert not pos[3:].any() and not infl[3:].any() and not feats[3:].any()


def test_init_points():
    cfg = papr.parse_point_cloud_config(dict(GEO, init_type="cube", num_points=70, init_center=[0.1, 0, 0]))
    pos, infl, feats = papr.init_points(cfg)
    assert pos.shape == (70, 3) and infl.shape == (70, 1) and feats.shape == (70, 8)
    # upstream _cube_normal_pc: a 4^3 lattice, then uniform random points in the cube
    assert np.allclose(np.sort(np.unique(pos[:64, 0])), 0.1 + np.linspace(-0.6, 0.6, 4), atol=1e-6)
    assert np.all(np.abs(pos - [0.1, 0, 0]) <= 0.6 + 1e-6)
    ball, _, _ = papr.init_points(papr.parse_point_cloud_config(dict(GEO, init_type="ball")))
    assert np.all(np.linalg.norm(ball, axis=-1) <= 0.6 + 1e-6)
    sphere, _, _ = papr.init_points(papr.parse_point_cloud_config(dict(GEO, init_type="sphere")))
    assert np.allclose(np.linalg.norm(sphere, axis=-1), 0.6, atol=1e-5)
    cloud = np.random.default_rng(0).normal(size=(300, 3))
    given, _, _ = papr.init_points(cfg, cloud)
    assert given.shape == (128, 3)  # cut to max_points after a shuffle
    assert {tuple(p) for p in given} <= {tuple(p) for p in cloud.astype(np.float32)}


def test_prune_points():
    rng = np.random.default_rng(0)
    pos, feats = rng.normal(size=(10, 3)), rng.normal(size=(10, 4))
    infl = np.array([0.5, -0.1, 0.0, 2.0, -3.0, 0.01, 0.3, -0.2, 1.0, 0.0])[:, None]
    p, i, f, keep = papr.prune_points(pos, infl, feats, 0.0)
    assert keep.tolist() == [True, False, False, True, False, True, True, False, True, False]  # > 0 kept
    assert np.array_equal(p, pos[keep]) and np.array_equal(i, infl[keep]) and np.array_equal(f, feats[keep])
    cloud = MsCloud(dict(GEO, num_points=100, point_buckets=[64, 128]))
    pos, _, feats = cloud.active_arrays()
    cloud.set_points(pos, np.linspace(-1, 1, 100, dtype=np.float32)[:, None], feats)
    removed, changed = cloud.prune(0.0)
    assert removed == 50 and changed and cloud.num_active == 50 and cloud.capacity == 64
    assert np.array_equal(cloud.points.asnumpy()[:50], pos[50:])
    assert cloud.point_mask.asnumpy().sum() == 50


def test_grow_points_where_neighbour_distances_vary_most():
    rng = np.random.default_rng(1)
    dense = rng.normal(0, 0.05, size=(60, 3))
    sparse = np.array([[2.0, 0, 0], [2.5, 0, 0], [0, 3.0, 0], [0, 0, -2.8], [1.5, 1.5, 0]])
    pos = np.concatenate([dense, sparse]).astype(np.float32)
    infl = rng.normal(size=(65, 1)).astype(np.float32)
    feats = rng.normal(size=(65, 4)).astype(np.float32)
    std = papr.sparsity(pos, 10)
    try:  # upstream measures it with scipy's KDTree (the point itself included)
        from scipy.spatial import KDTree
        ref = KDTree(pos).query(pos, k=10)[0].std(axis=-1)
        np.testing.assert_allclose(std, ref, rtol=1e-5, atol=1e-6)
    except ImportError:
        pass
    p, i, f, seeds = papr.grow_points(pos, infl, feats, 5, np.random.default_rng(2), sample_k=10, interp_k=3)
    assert p.shape == (70, 3) and i.shape == (70, 1) and f.shape == (70, 4)
    assert np.array_equal(p[:65], pos) and np.array_equal(i[:65], infl)
    assert set(seeds.tolist()) == set(np.argsort(std)[-5:].tolist()) and set(seeds.tolist()) <= set(range(60, 65))
    # each new point is a convex combination of its seed's 3 nearest other points (positions, influence, features)
    _, nbr = papr.knn_distances(pos[seeds], pos, 4)
    for j, s in enumerate(seeds):
        others = [n for n in nbr[j] if n != s][:3]
        w = np.linalg.lstsq(np.concatenate([pos[others].T, np.ones((1, 3))]), np.append(p[65 + j], 1.0),
                            rcond=None)[0]
        assert np.all(w > -1e-4) and abs(w.sum() - 1) < 1e-4
        np.testing.assert_allclose(w @ infl[others], i[65 + j], atol=1e-4)
        np.testing.assert_allclose(w @ feats[others], f[65 + j], atol=1e-4)
    # the cap: at most max_points in all; the geometry moves to the next bucket when needed
    p, _, _, seeds = papr.grow_points(pos, infl, feats, 50, np.random.default_rng(2), max_points=70)
    assert p.shape[0] == 70 and len(seeds) == 5
    cloud = MsCloud(dict(GEO, num_points=90, point_buckets=[96, 128]))
    added, changed = cloud.grow(20, np.random.default_rng(0))
    assert added == 20 and changed and cloud.capacity == 128 and cloud.num_active == 110
    assert cloud.point_mask.asnumpy().sum() == 110


def test_prune_grow_schedule():
    cfg = papr.parse_point_cloud_config(GEO)  # upstream defaults: prune 500 in [10000, 150000), grow 1000 ...
    assert not papr.prune_due(cfg, 9500) and papr.prune_due(cfg, 10000) and not papr.prune_due(cfg, 10001)
    assert not papr.prune_due(cfg, 150000)
    assert not papr.grow_due(cfg, 19000) and papr.grow_due(cfg, 20000) and not papr.grow_due(cfg, 70000)
    assert not papr.grow_due(papr.parse_point_cloud_config(dict(GEO, prune_start=30000)), 20000)
    lego = papr.parse_point_cloud_config(dict(GEO, prune_thresholds=[0.0, 0.2], prune_threshold_steps=[40000]))
    assert papr.prune_threshold(lego, 40000) == 0.0 and papr.prune_threshold(lego, 40500) == 0.2


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("renderer,geo,match", [
    (dict(k=200), None, "exceeds the smallest point bucket"),
    (dict(candidate_size=3), None, "candidate_size"),
    (dict(candidate_size=24, candidate_tile=3), None, "multiple of candidate_tile"),
    (dict(key_frequencies=[2, 2]), None, "key_frequencies"),
    (dict(value_mlp=dict(activation="gelu")), None, "activation"),
    (dict(key_mlp=dict(norm="batch")), None, "norm"),
    (dict(value_mlp=dict(n_layers=3, skip_layers=[3])), None, "skip_layers"),
    (dict(bogus=1), None, "Allowed keys"),
    (dict(coord_scale=0.0), None, "coord_scale"),
    (None, dict(point_buckets=[128, 96]), "ascending"),
    (None, dict(max_points=500), "largest bucket"),
    (None, dict(init_type="disc"), "init_type"),
    (None, dict(prune_thresholds=[0.0, 0.2]), "prune_thresholds"),
    (None, dict(grow_sample_k=1), "grow_sample_k"),
])
def test_config_errors(renderer, geo, match):
    with pytest.raises(ConfigError, match=match):
        geometry = MsCloud(dict(GEO, **(geo or {})))
        MsRenderer(dict(RENDERER, **(renderer or {})), geometry, None, MsBackground(BACKGROUND))


def test_renderer_needs_point_cloud():
    class Other:
        cfg = object()

    with pytest.raises(ConfigError, match="papr-point-cloud"):
        MsRenderer(RENDERER, Other(), None, None)
