"""GeNVS lifting model: FrustumEncoder, ProjectedFeatureField, FeatureRenderer (mindspore_impl/genvs/, torch_ref/genvs/,
neutral/genvs/model_config.py).

- parity MindSpore vs torch_ref with the same weights (torch's random init copied by name; GroupNorm
  weight/bias are gamma/beta in MindSpore): outputs and gradients w.r.t. inputs and parameters;
- encoder + renderer forward and backward under ms.jit (GRAPH) equal PyNative;
- projection: a feature planted at one voxel (pixel, plane) is read back at the 3D point that projects there,
  and nowhere a voxel away; the field's output there is the MLP of it, averaged with the other views;
- invariance: permuting the source views leaves the field unchanged;
- config checks.
Tiny sizes: 2-3 source views, 16 x 16 images, 8 depth planes, 8 + 8 samples per ray.
"""
import re

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import ops

from mindspore_impl.genvs import encoder as ms_enc
from mindspore_impl.genvs import field as ms_field
from mindspore_impl.genvs import renderer as ms_rend
from neutral.config import ConfigError
from neutral.genvs.model_config import (EncoderConfig, FieldConfig, RendererConfig, check_model, draw_input_noise,
                                        draw_ray_uniforms, intrinsics_from_fovy, parse_encoder, parse_field,
                                        parse_renderer, plane_depths, project_points, unproject_pixels)
from neutral.lift3d.multiview_cameras import get_ray_directions, get_rays, look_at_c2w, spherical_to_cartesian
from tests.parity import assert_parity, to_numpy, to_torch, torch_module
from torch_ref.genvs import encoder as t_enc
from torch_ref.genvs import field as t_field
from torch_ref.genvs import renderer as t_rend

SIDE, C, D, FEAT = 16, 4, 8, 16
ENCODER = {"base_channels": 8, "channel_mult": [1, 2, 2], "norm_groups": 4, "feature_channels": C, "depth_planes": D}
FIELD = {"feature_channels": C, "hidden": 16, "out_features": FEAT}
RENDERER = {"n_samples": 8, "n_importance": 8}
FOVY = np.deg2rad(40.0)


def ms_t(a):
    return ms.Tensor(np.ascontiguousarray(a))


def copy_weights(t_module, ms_cell):
    """torch state dict -> MindSpore cell by name, strictly (GroupNorm's weight/bias -> gamma/beta)."""
    state = {re.sub(r"(^|\.)norm\.weight$", r"\1norm.gamma", re.sub(r"(^|\.)norm\.bias$", r"\1norm.beta", k)):
             v.detach().cpu().numpy() for k, v in t_module.state_dict().items()}
    params = dict(ms_cell.parameters_and_names())
    assert set(params) == set(state), (sorted(set(params) ^ set(state)))
    for name, p in params.items():
        assert tuple(p.shape) == state[name].shape, name
        p.set_data(ms.Tensor(state[name].copy()))
    return t_module, ms_cell


def cameras(n, distance=2.5, seed=0, fovy=FOVY, side=SIDE):
    """n look-at cameras around the origin -> c2w (n, 4, 4), intrinsics (n, 4), float32."""
    rng = np.random.default_rng(seed)
    pos = spherical_to_cartesian(rng.uniform(-0.5, 0.6, n), rng.uniform(0, 2 * np.pi, n), np.full(n, distance))
    c2w = look_at_c2w(pos, np.zeros(3), np.array([0.0, 0.0, 1.0])).astype(np.float32)
    return c2w, np.repeat(intrinsics_from_fovy(np.array([fovy]), side, side), n, 0)


def source_views(b=2, n=2, seed=0):
    """c2w (B, N, 4, 4), intrinsics (B, N, 4), volumes (B, N, C, D, H, W)."""
    c2w, k = cameras(b * n, seed=seed)
    vol = np.random.default_rng(seed + 10).normal(0, 1.5, (b, n, C, D, SIDE, SIDE)).astype(np.float32)
    return c2w.reshape(b, n, 4, 4), k.reshape(b, n, 4), vol


def field_pair(seed=0):
    torch.manual_seed(seed)
    return copy_weights(torch_module(t_field.ProjectedFeatureField(FIELD)), ms_field.ProjectedFeatureField(FIELD))


def renderer_pair(seed=0):
    t_f, m_f = field_pair(seed)
    return (torch_module(t_rend.FeatureRenderer(RENDERER, t_f)), ms_rend.FeatureRenderer(RENDERER, m_f))


def grads_by_name(ms_cell, grads):
    return {p.name: g for p, g in zip(ms_cell.trainable_params(), grads)}


# ----------------------------------------------------------------------------- parity
def test_encoder_parity():
    torch.manual_seed(0)
    t_m, m_m = copy_weights(torch_module(t_enc.FrustumEncoder(ENCODER)), ms_enc.FrustumEncoder(ENCODER))
    rng = np.random.default_rng(1)
    img = rng.uniform(-1, 1, (2, 3, SIDE, SIDE)).astype(np.float32)
    noise = draw_input_noise(np.random.default_rng(2), img.shape)
    g_out = rng.normal(size=(2, C, D, SIDE, SIDE)).astype(np.float32)

    fn = ms.value_and_grad(lambda x, n: (m_m(x, n) * ms_t(g_out)).sum(), 0, m_m.trainable_params())
    loss_m, (gx_m, gp_m) = fn(ms_t(img), ms_t(noise))
    vol_m = m_m(ms_t(img), ms_t(noise))
    x_t = to_torch(img, requires_grad=True)
    vol_t = t_m(x_t, to_torch(noise))
    (vol_t * to_torch(g_out)).sum().backward()
    assert vol_m.shape == (2, C, D, SIDE, SIDE)
    assert_parity(vol_m, vol_t, "encoder volume")
    assert_parity(gx_m, x_t.grad, "d encoder / d image")
    t_params = dict(t_m.named_parameters())
    for name, g in grads_by_name(m_m, gp_m).items():
        t_name = name.replace("norm.gamma", "norm.weight").replace("norm.beta", "norm.bias")
        assert_parity(g, t_params[t_name].grad, f"d encoder / d {name}")
    assert_parity(m_m(ms_t(img)), t_m(to_torch(img)), "encoder volume without noise")
    with pytest.raises(ValueError, match="multiples of 4"):
        m_m(ms_t(img[:, :, :6, :6]))


def test_field_parity():
    t_f, m_f = field_pair()
    c2w, k, vol = source_views()
    pts = np.random.default_rng(3).uniform(-1, 1, (2, 64, 3)).astype(np.float32)
    rng = np.random.default_rng(4)
    g_s, g_f = rng.normal(size=(2, 64)).astype(np.float32), rng.normal(size=(2, 64, FEAT)).astype(np.float32)

    def loss_ms(p, v):
        s, f = m_f(p, ms_t(c2w), ms_t(k), v)
        return (s * ms_t(g_s)).sum() + (f * ms_t(g_f)).sum(), s, f

    fn = ms.value_and_grad(loss_ms, (0, 1), m_f.trainable_params(), has_aux=True)
    (_, s_m, f_m), ((gp_m, gv_m), gw_m) = fn(ms_t(pts), ms_t(vol))
    p_t, v_t = to_torch(pts, requires_grad=True), to_torch(vol, requires_grad=True)
    s_t, f_t = t_f(p_t, to_torch(c2w), to_torch(k), v_t)
    ((s_t * to_torch(g_s)).sum() + (f_t * to_torch(g_f)).sum()).backward()
    assert s_m.shape == (2, 64) and f_m.shape == (2, 64, FEAT)
    inside = to_numpy(t_f.sample_features(p_t, to_torch(c2w), to_torch(k), v_t)).any(-1).mean()
    assert inside > 0.5, f"the test points must mostly fall inside the frusta ({inside:.2f})"
    assert_parity(s_m, s_t, "field sigma")
    assert_parity(f_m, f_t, "field features")
    assert_parity(gp_m, p_t.grad, "d field / d points")
    assert_parity(gv_m, v_t.grad, "d field / d volumes")
    t_params = dict(t_f.named_parameters())
    for name, g in grads_by_name(m_f, gw_m).items():
        assert_parity(g, t_params[name].grad, f"d field / d {name}")


def _render_inputs(seed=5, b=2, side=8, fovy=np.deg2rad(80.0)):
    """Target cameras (wide: the corner rays miss the box), source views and host uniforms."""
    c2w, k = cameras(b, distance=2.2, seed=seed, fovy=fovy, side=side)
    src_c2w, src_k, vol = source_views(b)
    u = draw_ray_uniforms(np.random.default_rng(seed), (b, side * side), parse_renderer(RENDERER))
    return c2w, k, side, src_c2w, src_k, vol, u


def test_renderer_parity_and_background():
    t_r, m_r = renderer_pair()
    c2w, k, side, src_c2w, src_k, vol, u = _render_inputs()
    g = np.random.default_rng(6).normal(size=(2, FEAT + 2, side, side)).astype(np.float32)

    def loss_ms(v, u_):
        f, o, d = ms_rend.render_image(m_r, ms_t(c2w), ms_t(k), side, side, ms_t(src_c2w), ms_t(src_k), v, u_)
        return (ops.concat([f, o, d], 1) * ms_t(g)).sum(), f, o, d

    fn = ms.value_and_grad(loss_ms, 0, m_r.trainable_params(), has_aux=True)
    (_, f_m, o_m, d_m), (gv_m, gw_m) = fn(ms_t(vol), ms_t(u))
    v_t = to_torch(vol, requires_grad=True)
    f_t, o_t, d_t = t_rend.render_image(t_r, to_torch(c2w), to_torch(k), side, side, to_torch(src_c2w),
                                        to_torch(src_k), v_t, to_torch(u))
    (torch.cat([f_t, o_t, d_t], 1) * to_torch(g)).sum().backward()
    assert f_m.shape == (2, FEAT, side, side) and o_m.shape == d_m.shape == (2, 1, side, side)
    assert_parity(f_m, f_t, "rendered features")
    assert_parity(o_m, o_t, "opacity")
    assert_parity(d_m, d_t, "depth")
    assert_parity(gv_m, v_t.grad, "d render / d volumes")
    t_params = dict(t_r.named_parameters())
    for name, grad in grads_by_name(m_r, gw_m).items():
        assert_parity(grad, t_params[name].grad, f"d render / d {name}")

    opacity = o_m.asnumpy()[:, 0]
    miss = opacity == 0.0
    assert miss.any() and (opacity.max() > 0.3), "the corner rays miss the box, the centre sees density"
    np.testing.assert_array_equal(f_m.asnumpy().transpose(0, 2, 3, 1)[miss], 1.0)  # background 1
    # u None: the deterministic midpoints, in both trees
    f0_m = ms_rend.render_image(m_r, ms_t(c2w), ms_t(k), side, side, ms_t(src_c2w), ms_t(src_k), ms_t(vol))[0]
    with torch.no_grad():
        f0_t = t_rend.render_image(t_r, to_torch(c2w), to_torch(k), side, side, to_torch(src_c2w), to_torch(src_k),
                                   to_torch(vol))[0]
    assert_parity(f0_m, f0_t, "rendered features, deterministic samples")


def test_upsample_nearest2x_parity():
    x = np.random.default_rng(7).normal(size=(2, 3, 4, 5)).astype(np.float32)
    g = np.random.default_rng(8).normal(size=(2, 3, 8, 10)).astype(np.float32)
    y_m, gx_m = ms.value_and_grad(lambda a: (ms_rend.upsample_nearest2x(a) * ms_t(g)).sum())(ms_t(x))
    x_t = to_torch(x, requires_grad=True)
    y_t = t_rend.upsample_nearest2x(x_t)
    (y_t * to_torch(g)).sum().backward()
    np.testing.assert_array_equal(ms_rend.upsample_nearest2x(ms_t(x)).asnumpy(), to_numpy(y_t))
    assert_parity(gx_m, x_t.grad, "d upsample / d x", rel=1e-6)


def test_encoder_and_renderer_graph_matches_pynative():
    """Source images -> encoder -> volumes -> rendered features: forward and backward under ms.jit."""
    _, m_r = renderer_pair(seed=1)
    enc = ms_enc.FrustumEncoder(ENCODER)
    c2w, k, side, src_c2w, src_k, _, u = _render_inputs(b=1, side=4)
    rng = np.random.default_rng(9)
    images = ms_t(rng.uniform(-1, 1, (2, 3, SIDE, SIDE)).astype(np.float32))  # B * N source images
    noise = ms_t(draw_input_noise(rng, (2, 3, SIDE, SIDE)))
    rays_o, rays_d = ms_rend.camera_rays(ms_t(c2w), ms_t(k), side, side)
    g = ms_t(rng.normal(size=(1, side * side, FEAT)).astype(np.float32))
    params = enc.trainable_params() + m_r.trainable_params()

    def loss_fn(imgs, u_):
        vol = enc(imgs, noise).reshape(1, 2, C, D, SIDE, SIDE)
        out = m_r(rays_o, rays_d, ms_t(src_c2w), ms_t(src_k), vol, u_)
        loss = (out["features"] * g).sum() + out["depth"].mean() + out["opacity"].mean()
        return loss, out["features"], out["depth"]

    step = ms.value_and_grad(loss_fn, 0, params, has_aux=True)
    (l_py, f_py, d_py), (gi_py, gw_py) = step(images, ms_t(u))
    (l_gr, f_gr, d_gr), (gi_gr, gw_gr) = ms.jit(step)(images, ms_t(u))
    assert_parity(l_gr, l_py, "GRAPH loss", rel=1e-5)
    assert_parity(f_gr, f_py, "GRAPH features", rel=1e-5)
    assert_parity(d_gr, d_py, "GRAPH depth", rel=1e-5)
    assert_parity(gi_gr, gi_py, "GRAPH d / d images", rel=1e-5)
    for p, a, b in zip(params, gw_gr, gw_py):
        assert_parity(a, b, f"GRAPH d / d {p.name}", rel=1e-5)
    assert float(np.abs(gi_py.asnumpy()).max()) > 0


def test_camera_rays_follow_the_project_convention():
    """camera_rays with centred intrinsics equals neutral get_ray_directions + get_rays; project_points inverts it."""
    c2w, k = cameras(2, seed=13, side=6)
    focal = float(k[0, 0])
    o_ref, d_ref = get_rays(np.broadcast_to(get_ray_directions(6, 6, focal), (2, 6, 6, 3)), c2w.astype(np.float64))
    o_m, d_m = ms_rend.camera_rays(ms_t(c2w), ms_t(k), 6, 6)
    o_t, d_t = t_rend.camera_rays(to_torch(c2w), to_torch(k), 6, 6)
    for o, d in ((o_m.asnumpy(), d_m.asnumpy()), (to_numpy(o_t), to_numpy(d_t))):
        np.testing.assert_allclose(o, o_ref.reshape(2, 36, 3), atol=1e-6)
        np.testing.assert_allclose(d, d_ref.reshape(2, 36, 3), atol=1e-6)
    px, depth = project_points(o_ref[0, 2, 5] + 1.7 * d_ref[0, 2, 5], c2w[0], k[0])
    np.testing.assert_allclose(px, [5.5, 2.5], atol=1e-5)  # column 5, row 2
    assert depth > 0


# ----------------------------------------------------------------------------- projection, invariance
@pytest.mark.parametrize("tree", ["mindspore", "torch"])
def test_planted_feature_is_recovered_at_its_point(tree):
    c2w, k, _ = source_views(b=1, n=2, seed=11)
    vol = np.zeros((1, 2, C, D, SIDE, SIDE), np.float32)
    planted = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    col, row, plane = 11, 4, 5
    vol[0, 0, :, plane, row, col] = planted
    dist = float(np.linalg.norm(c2w[0, 0, :3, 3]))
    depths = plane_depths(dist - 1.0, dist + 1.0, D)  # FieldConfig.plane_radius 1
    at = lambda px, d: unproject_pixels(np.array(px, np.float64), d, c2w[0, 0], k[0, 0])
    pts = np.stack([at([col + 0.5, row + 0.5], depths[plane]),              # the voxel's centre
                    at([col + 1.5, row + 0.5], depths[plane]),              # a pixel to the right
                    at([col + 0.5, row + 0.5], depths[plane + 1]),          # the next plane
                    at([col + 1.0, row + 0.5], depths[plane]),              # half-way to the next pixel
                    at([col + 0.5, row + 0.5], 0.5 * (depths[plane] + depths[plane - 1])),
                    at([3.5, 12.5], depths[1])])[None].astype(np.float32)
    px, depth = project_points(pts[0, 0], c2w[0, 0], k[0, 0])
    np.testing.assert_allclose(px, [col + 0.5, row + 0.5], atol=1e-4)
    np.testing.assert_allclose(depth, depths[plane], rtol=1e-5)

    if tree == "mindspore":
        f = ms_field.ProjectedFeatureField(FIELD)
        feat = f.sample_features(ms_t(pts), ms_t(c2w), ms_t(k), ms_t(vol)).asnumpy()
        sigma, out = (x.asnumpy() for x in f(ms_t(pts), ms_t(c2w), ms_t(k), ms_t(vol)))
        weights = [(p.asnumpy(), q.asnumpy()) for p, q in zip(f.trainable_params()[::2], f.trainable_params()[1::2])]
    else:
        f = torch_module(t_field.ProjectedFeatureField(FIELD))
        with torch.no_grad():
            feat = to_numpy(f.sample_features(to_torch(pts), to_torch(c2w), to_torch(k), to_torch(vol)))
            sigma, out = (to_numpy(x) for x in f(to_torch(pts), to_torch(c2w), to_torch(k), to_torch(vol)))
        weights = [(to_numpy(l.weight), to_numpy(l.bias)) for l in f.layers]
    np.testing.assert_allclose(feat[0, 0, 0], planted, atol=1e-5)       # recovered
    np.testing.assert_allclose(feat[0, 0, 1:3], 0.0, atol=1e-5)         # a voxel away: nothing
    np.testing.assert_allclose(feat[0, 0, 3], planted / 2, atol=1e-4)   # trilinear between pixels
    np.testing.assert_allclose(feat[0, 0, 4], planted / 2, atol=1e-4)   # and between planes
    np.testing.assert_allclose(feat[0, 0, 5], 0.0, atol=1e-6)           # far from it
    np.testing.assert_allclose(feat[0, 1], 0.0, atol=1e-6)              # the other view's volume is empty

    def mlp(x):
        for i, (w, b) in enumerate(weights):
            x = x @ w.T + b
            x = np.logaddexp(0.0, x) if i < len(weights) - 1 else x
        return x
    raw = 0.5 * (mlp(feat[0, 0, 0]) + mlp(np.zeros(C, np.float32)))  # mean over the two views, then activations
    np.testing.assert_allclose(sigma[0, 0], np.logaddexp(0.0, raw[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0, 0], 1.0 / (1.0 + np.exp(-raw[1:])), rtol=1e-5, atol=1e-6)


def test_field_is_invariant_to_source_view_order():
    _, m_f = field_pair(seed=2)
    c2w, k, vol = source_views(b=1, n=3, seed=3)
    pts = ms_t(np.random.default_rng(12).uniform(-1, 1, (1, 50, 3)).astype(np.float32))
    s0, f0 = m_f(pts, ms_t(c2w), ms_t(k), ms_t(vol))
    perm = [2, 0, 1]
    s1, f1 = m_f(pts, ms_t(c2w[:, perm]), ms_t(k[:, perm]), ms_t(vol[:, perm]))
    np.testing.assert_allclose(s1.asnumpy(), s0.asnumpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f1.asnumpy(), f0.asnumpy(), rtol=1e-6, atol=1e-6)
    # and it does depend on which volume goes with which camera
    s2, _ = m_f(pts, ms_t(c2w), ms_t(k), ms_t(vol[:, perm]))
    assert np.abs(s2.asnumpy() - s0.asnumpy()).max() > 1e-3


def test_fixed_planes_and_bounds_parity():
    """plane_near / plane_far and renderer near / far instead of the camera distance and the box."""
    field_cfg = {**FIELD, "plane_near": 1.5, "plane_far": 3.5}
    rend_cfg = {**RENDERER, "near": 1.2, "far": 3.8}
    torch.manual_seed(3)
    t_f, m_f = copy_weights(torch_module(t_field.ProjectedFeatureField(field_cfg)),
                            ms_field.ProjectedFeatureField(field_cfg))
    t_r, m_r = torch_module(t_rend.FeatureRenderer(rend_cfg, t_f)), ms_rend.FeatureRenderer(rend_cfg, m_f)
    c2w, k, side, src_c2w, src_k, vol, u = _render_inputs(side=4)
    f_m, o_m, _ = ms_rend.render_image(m_r, ms_t(c2w), ms_t(k), side, side, ms_t(src_c2w), ms_t(src_k), ms_t(vol),
                                       ms_t(u))
    with torch.no_grad():
        f_t, o_t, _ = t_rend.render_image(t_r, to_torch(c2w), to_torch(k), side, side, to_torch(src_c2w),
                                          to_torch(src_k), to_torch(vol), to_torch(u))
    assert_parity(f_m, f_t, "features, fixed planes and bounds")
    assert_parity(o_m, o_t, "opacity, fixed planes and bounds")
    assert o_m.asnumpy().min() > 0.0  # fixed bounds: no ray misses


# ----------------------------------------------------------------------------- configs
def test_defaults_are_upstream_sizes():
    enc, fld, rend = parse_encoder(), parse_field(), parse_renderer()
    assert (enc.feature_channels, enc.depth_planes) == (16, 64)
    assert (fld.feature_channels, fld.hidden, fld.out_features, fld.n_hidden_layers) == (16, 64, 16, 1)
    assert (rend.n_samples, rend.n_importance, rend.background) == (64, 64, 1.0)
    check_model(enc, fld, rend)
    np.testing.assert_allclose(plane_depths(1.5, 3.5, 5), [1.5, 2.0, 2.5, 3.0, 3.5])


@pytest.mark.parametrize("parse,cfg,match", [
    (parse_encoder, {"norm_groups": 5}, "norm_groups 5 must divide"),
    (parse_encoder, {"depth_planes": 1}, "depth_planes must be an integer >= 2"),
    (parse_encoder, {"channel_mult": []}, "at least one level"),
    (parse_encoder, {"depth_plane": 8}, "Allowed keys"),
    (parse_field, {"plane_near": 1.0}, "give both plane_near and plane_far"),
    (parse_field, {"plane_near": 3.0, "plane_far": 2.0}, "need plane_near < plane_far"),
    (parse_field, {"plane_radius": 0.0}, "plane_radius must be a finite number > 0"),
    (parse_field, {"hidden": 0}, "hidden must be an integer >= 1"),
    (parse_renderer, {"n_samples": 1}, "n_samples must be an integer >= 2"),
    (parse_renderer, {"n_importance": -1}, "n_importance must be an integer >= 0"),
    (parse_renderer, {"near": 0.5, "far": 0.5}, "need near < far"),
    (parse_renderer, {"background": float("nan")}, "not a finite number"),
])
def test_config_errors(parse, cfg, match):
    with pytest.raises(ConfigError, match=match):
        parse(cfg)


def test_model_check_matches_channels():
    with pytest.raises(ConfigError, match="must equal encoder.feature_channels"):
        check_model(EncoderConfig(feature_channels=8), FieldConfig(), RendererConfig())
    with pytest.raises(ConfigError, match="hidden"):
        ms_field.ProjectedFeatureField({"hidden": -1})
