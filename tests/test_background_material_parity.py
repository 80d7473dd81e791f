"""Backgrounds and materials: MindSpore vs torch_ref parity (outputs and gradients), SH encoding against
tinycudann's constants, host-side augmentation / shading draws, GRAPH-mode compilation (issue 4, item 4)."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from neutral.registry import find
from mindspore_impl.lift3d import ops as ms_ops
from mindspore_impl.lift3d.background import NeuralEnvironmentMapBackground as MsEnvMap
from mindspore_impl.lift3d.background import SolidColorBackground as MsSolid
from mindspore_impl.lift3d.materials import DiffuseWithPointLightMaterial as MsDiffuse
from mindspore_impl.lift3d.materials import NoMaterial as MsNoMaterial
from tests.parity import assert_parity, to_numpy, to_torch, tolerance, torch_module
from tests.parity_cases import MVDREAM_BG, MVDREAM_SHADING, copy_weights, material_inputs, ms_grads
from tests.parity_cases import env_map_pair as make_env_maps
from tests.parity_cases import randomize_torch, torch_grads, unit_dirs
from torch_ref.lift3d import ops as pt_ops
from torch_ref.lift3d.background import SolidColorBackground as PtSolid
from torch_ref.lift3d.materials import DiffuseWithPointLightMaterial as PtDiffuse
from torch_ref.lift3d.materials import NoMaterial as PtNoMaterial


# ----------------------------------------------------------------------------- SH encoding


def test_sh_encoding_matches_tcnn_constants_and_is_orthonormal():
    rng = np.random.default_rng(0)
    d = unit_dirs(rng, (4096, 3)).astype(np.float64)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    c0, c1 = 0.5 / math.sqrt(math.pi), math.sqrt(3) / (2 * math.sqrt(math.pi))
    c2, c3, c4 = math.sqrt(15) / (2 * math.sqrt(math.pi)), math.sqrt(5) / (4 * math.sqrt(math.pi)), \
        math.sqrt(15) / (4 * math.sqrt(math.pi))
    # closed forms from the comments of tcnn's sh_enc (common_device.h)
    want = np.stack([np.full_like(x, c0), -c1 * y, c1 * z, -c1 * x, c2 * x * y, -c2 * y * z,
                     c3 * (3 * z * z - 1), -c2 * x * z, c4 * (x * x - y * y)], -1)
    x01 = ((d + 1) / 2).astype(np.float32)
    got_ms = ms_ops.sh_encode(ms.Tensor(x01), 3)
    got_pt = pt_ops.sh_encode(to_torch(x01), 3)
    assert_parity(got_ms, want, "sh_encode ms vs closed form", rel=1e-5)
    assert_parity(got_pt, want, "sh_encode torch vs closed form", rel=1e-5)
    # real SH are orthonormal on the sphere: 4 pi E[Y_i Y_j] = delta_ij (Monte Carlo)
    big = unit_dirs(rng, (200000, 3))
    y_all = pt_ops.sh_encode(to_torch((big + 1) / 2), 3).double().cpu().numpy()
    gram = 4 * math.pi * (y_all.T @ y_all) / len(big)
    err = np.abs(gram - np.eye(9)).max()
    print(f"[sh] max |4 pi E[Y Y^T] - I| = {err:.4f}")
    assert err < 0.03
    assert tuple(ms_ops.sh_encode(ms.Tensor(x01[:2]), 2).shape) == (2, 4)
    with pytest.raises(ValueError, match="degree 1..3"):
        pt_ops.sh_encode(to_torch(x01), 4)


# ----------------------------------------------------------------------------- backgrounds


def test_env_map_parameter_names_match_threestudio():
    pt, ms_bg = make_env_maps(MVDREAM_BG)
    names = ["network.layers.0.weight", "network.layers.2.weight", "network.layers.4.weight"]
    assert sorted(pt.state_dict()) == names
    assert sorted(p.name for p in ms_bg.get_parameters()) == names
    assert [tuple(p.shape) for p in ms_bg.get_parameters()] == [(16, 9), (16, 16), (3, 16)]
    assert find("neural-environment-map-background") is MsEnvMap


def test_env_map_parity_outputs_and_gradients():
    pt, ms_bg = make_env_maps(MVDREAM_BG, seed=1)
    dirs = unit_dirs(np.random.default_rng(1), (2, 5, 6, 3))
    out_pt, cot, (g_dirs_pt,), g_w_pt = torch_grads(pt, [dirs], pt.parameters())
    out_ms, (g_dirs_ms,), g_w_ms = ms_grads(ms_bg, [dirs], ms_bg.trainable_params(), cot)
    assert out_ms.shape == (2, 5, 6, 3)
    assert_parity(out_ms, out_pt, "env map output", rel=1e-5)
    assert_parity(g_dirs_ms, g_dirs_pt, "env map d/d dirs")
    for p, gm, gp in zip(ms_bg.trainable_params(), g_w_ms, g_w_pt):
        assert_parity(gm, gp, f"env map d/d {p.name}")


def test_env_map_random_aug_is_host_side_and_shared_by_the_batch():
    pt, ms_bg = make_env_maps(MVDREAM_BG, seed=2)
    rng = np.random.default_rng(0)
    draws = [ms_bg.draw_aug(rng, 4) for _ in range(4000)]
    frac = np.mean([d is not None for d in draws])
    print(f"[aug] env map random colour in {frac:.3f} of batches (random_aug_prob 0.5)")
    assert abs(frac - 0.5) < 0.03
    colors = np.stack([d for d in draws if d is not None])
    assert colors.shape[1] == 3 and colors.min() >= 0 and colors.max() < 1
    assert ms_bg.draw_aug(rng, 4, training=False) is None
    assert MsEnvMap({}).draw_aug(rng, 4) is None  # threestudio default: random_aug off
    for seed in range(6):  # both trees draw the same stream
        a, b = ms_bg.draw_aug(np.random.default_rng(seed), 4), pt.draw_aug(np.random.default_rng(seed), 4)
        assert (a is None and b is None) or np.array_equal(a, b)
    color = colors[0]
    dirs = unit_dirs(np.random.default_rng(2), (2, 3, 4, 3))
    out_ms = ms_bg(ms.Tensor(dirs), ms.Tensor(color))
    out_pt = pt(to_torch(dirs), to_torch(color))
    assert_parity(out_ms, out_pt, "env map aug colour", rel=0)
    np.testing.assert_array_equal(out_ms.asnumpy(), np.broadcast_to(color, (2, 3, 4, 3)))


def test_solid_color_background_parity():
    cfg = {"color": [0.2, 0.5, 0.9], "learned": True, "random_aug": True}
    pt, ms_bg = PtSolid(cfg), MsSolid(cfg)
    copy_weights(pt, ms_bg)
    torch_module(pt)
    assert [p.name for p in ms_bg.trainable_params()] == ["env_color"]
    dirs = unit_dirs(np.random.default_rng(3), (2, 3, 4, 3))
    out_pt, cot, _, (g_pt,) = torch_grads(pt, [dirs], [pt.env_color])
    out_ms, _, (g_ms,) = ms_grads(ms_bg, [dirs], ms_bg.trainable_params(), cot)
    assert_parity(out_ms, out_pt, "solid colour output", rel=0)
    np.testing.assert_allclose(out_ms.asnumpy()[1, 2, 3], [0.2, 0.5, 0.9], rtol=1e-6)
    assert_parity(g_ms, g_pt, "solid colour d/d env_color")
    # per-image random colours, drawn on the host
    aug = ms_bg.draw_aug(np.random.default_rng(1), batch_size=2)
    aug = aug if aug is not None else ms_bg.draw_aug(np.random.default_rng(2), batch_size=2)
    assert aug.shape == (2, 3)
    out_ms = ms_bg(ms.Tensor(dirs), ms.Tensor(aug)).asnumpy()
    out_pt = pt(to_torch(dirs), to_torch(aug))
    assert_parity(out_ms, out_pt, "solid colour aug", rel=0)
    np.testing.assert_array_equal(out_ms[1, 0, 0], aug[1])
    fixed = MsSolid({})
    assert not fixed.trainable_params() and [p.name for p in fixed.get_parameters()] == ["env_color"]
    assert sorted(PtSolid({}).state_dict()) == ["env_color"]
    with pytest.raises(ValueError, match="n_output_dims=3"):
        MsSolid({"color": [1.0, 1.0]})


# ----------------------------------------------------------------------------- materials


def test_no_material_parity():
    pt, ms_mat = torch_module(PtNoMaterial({})), MsNoMaterial({})
    assert not ms_mat.requires_normal and find("no-material") is MsNoMaterial
    feats = material_inputs()[0]
    out_pt, cot, (g_pt,), _ = torch_grads(lambda f: pt(f), [feats], [])
    out_ms, (g_ms,), _ = ms_grads(lambda f: ms_mat(f), [feats], [], cot)
    assert_parity(out_ms, out_pt, "no-material output", rel=1e-5)
    assert_parity(g_ms, g_pt, "no-material d/d features", rel=1e-5)
    np.testing.assert_allclose(out_ms.asnumpy(), 1 / (1 + np.exp(-feats)), rtol=tolerance(1e-5))
    with pytest.raises(ValueError, match="n_output_dims"):
        ms_mat(ms.Tensor(np.zeros((4, 5), np.float32)))
    # optional MLP head (threestudio input_feature_dims + mlp_network_config)
    cfg = {"input_feature_dims": 5, "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU",
                                                           "n_neurons": 8, "n_hidden_layers": 1}}
    pt, ms_mat = PtNoMaterial(cfg), MsNoMaterial(cfg)
    randomize_torch(pt, 3)
    copy_weights(pt, ms_mat)
    torch_module(pt)
    feats = material_inputs(f=5)[0]
    out_pt, cot, (g_pt,), gw_pt = torch_grads(lambda f: pt(f), [feats], pt.parameters())
    out_ms, (g_ms,), gw_ms = ms_grads(lambda f: ms_mat(f), [feats], ms_mat.trainable_params(), cot)
    assert_parity(out_ms, out_pt, "no-material mlp output")
    assert_parity(g_ms, g_pt, "no-material mlp d/d features")
    for p, a, b in zip(ms_mat.trainable_params(), gw_ms, gw_pt):
        assert_parity(a, b, f"no-material mlp d/d {p.name}")


@pytest.mark.parametrize("shading", ["albedo", "textureless", "diffuse"])
@pytest.mark.parametrize("colors", ["config", "soft"])
def test_diffuse_material_parity(shading, colors):
    cfg = {} if colors == "config" else MVDREAM_SHADING
    pt, ms_mat = PtDiffuse(cfg), MsDiffuse(cfg)
    state = copy_weights(pt, ms_mat)
    torch_module(pt)
    assert sorted(state) == ["ambient_light_color", "diffuse_light_color"] and not ms_mat.trainable_params()
    f, v, p, l, n = material_inputs(f=4, seed=5)
    amb = dif = None
    if colors == "soft":
        dif = np.full(3, 0.3, np.float32)
        amb = 1 - dif
    extra_pt = {} if amb is None else {"ambient_color": to_torch(amb), "diffuse_color": to_torch(dif)}
    extra_ms = {} if amb is None else {"ambient_color": ms.Tensor(amb), "diffuse_color": ms.Tensor(dif)}
    out_pt, cot, g_pt, _ = torch_grads(lambda *a: pt(a[0], v, *a[1:], shading=shading, **extra_pt),
                                       [f, p, l, n], [])
    out_ms, g_ms, _ = ms_grads(lambda *a: ms_mat(a[0], ms.Tensor(v), *a[1:], shading=shading, **extra_ms),
                               [f, p, l, n], [], cot)
    assert tuple(out_ms.shape) == (64, 3)
    assert_parity(out_ms, out_pt, f"diffuse material [{shading}, {colors}] output", rel=1e-5)
    for name, a, b in zip(["features", "positions", "light_positions", "shading_normal"], g_ms, g_pt):
        if b is None:  # albedo mode does not read the geometry inputs
            assert np.abs(a.asnumpy()).max() == 0, name
            continue
        assert_parity(a, b, f"diffuse material [{shading}, {colors}] d/d {name}", rel=1e-5)


def test_diffuse_material_matches_the_lambert_formula():
    mat = MsDiffuse({})
    f, v, p, l, n = material_inputs(f=3, seed=6)
    albedo = 1 / (1 + np.exp(-f))
    ldir = (l - p) / np.linalg.norm(l - p, axis=-1, keepdims=True)
    lambert = np.clip(np.sum(n * ldir, -1, keepdims=True), 0, None)
    want = albedo * (lambert * 0.9 + 0.1)
    got = mat(*[ms.Tensor(x) for x in (f, v, p, l, n)], shading="diffuse")
    np.testing.assert_allclose(got.asnumpy(), want, rtol=tolerance(1e-5), atol=1e-6)
    albedo_only = mat(ms.Tensor(f), ms.Tensor(v), ms.Tensor(p), ms.Tensor(l), None, shading="albedo")
    np.testing.assert_allclose(albedo_only.asnumpy(), albedo, rtol=tolerance(1e-5))
    with pytest.raises(ValueError, match="shading_normal"):
        mat(ms.Tensor(f), ms.Tensor(v), ms.Tensor(p), ms.Tensor(l), None, shading="diffuse")
    with pytest.raises(ValueError, match="unknown shading"):
        mat(*[ms.Tensor(x) for x in (f, v, p, l, n)], shading="phong")
    np.testing.assert_allclose(mat.export(ms.Tensor(f))["albedo"].asnumpy(), albedo, rtol=tolerance(1e-5))
    np.testing.assert_allclose(MsNoMaterial({}).export(ms.Tensor(f))["albedo"].asnumpy(), albedo, rtol=tolerance(1e-5))
    for pt_material in (torch_module(PtDiffuse({})), PtNoMaterial({})):
        np.testing.assert_allclose(to_numpy(pt_material.export(to_torch(f))["albedo"]), albedo, rtol=tolerance(1e-5))
    assert find("diffuse-with-point-light") is MsDiffuse and find("diffuse-with-point-light-material") is MsDiffuse


def test_shading_draws_follow_threestudio():
    mat, pt = MsDiffuse(MVDREAM_SHADING), PtDiffuse(MVDREAM_SHADING)
    rng = np.random.default_rng(0)
    mat.update_step(4999)
    assert mat.ambient_only
    warm = [mat.draw_shading(rng) for _ in range(200)]
    assert {d["shading"] for d in warm} == {"albedo"}  # ambient-only warm-up
    mat.update_step(5000)
    pt.update_step(5000)
    assert not mat.ambient_only
    draws = [mat.draw_shading(rng) for _ in range(8000)]
    freq = {m: np.mean([d["shading"] == m for d in draws]) for m in ("albedo", "textureless", "diffuse")}
    print(f"[shading] frequencies after warm-up: {freq} (expect 0.25 / 0.375 / 0.375)")
    assert abs(freq["albedo"] - 0.25) < 0.02 and abs(freq["textureless"] - 0.375) < 0.02
    mix = np.stack([d["diffuse_color"] for d in draws])
    np.testing.assert_allclose(np.stack([d["ambient_color"] for d in draws]) + mix, 1.0, atol=1e-6)
    assert np.all(mix[:, 0] == mix[:, 2]) and 0.45 < mix.mean() < 0.55  # soft shading: grey, U(0, 1)
    evaluation = mat.draw_shading(rng, training=False)
    assert evaluation == {"shading": "diffuse", "ambient_color": None, "diffuse_color": None}
    ratio = mat.draw_shading(rng, ambient_ratio=0.25)
    np.testing.assert_allclose(ratio["ambient_color"], 0.25)
    np.testing.assert_allclose(ratio["diffuse_color"], 0.75)
    a, b = mat.draw_shading(np.random.default_rng(5)), pt.draw_shading(np.random.default_rng(5))
    assert a["shading"] == b["shading"] and np.array_equal(a["diffuse_color"], b["diffuse_color"])


# ----------------------------------------------------------------------------- GRAPH mode


class _ShadeAndBackground(nn.Cell):
    """One static-shape step: material in a fixed mode + background, as the renderer calls them."""

    def __init__(self, material, background, shading):
        super().__init__()
        self.material, self.background, self.shading = material, background, shading

    def construct(self, f, v, p, l, n, dirs, amb, dif):
        rgb = self.material(f, v, p, l, n, self.shading, amb, dif)
        bg = self.background(dirs)
        return rgb.sum() + bg.sum() * 0.5, rgb, bg


class _Loss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, *args):
        return self.net(*args)[0]


def test_graph_mode_matches_pynative():
    _, env = make_env_maps(MVDREAM_BG, seed=4)
    f, v, p, l, n = material_inputs(f=3, seed=7)
    dirs = unit_dirs(np.random.default_rng(7), (2, 4, 4, 3))
    amb, dif = np.full(3, 0.6, np.float32), np.full(3, 0.4, np.float32)
    args = [ms.Tensor(x) for x in (f, v, p, l, n, dirs, amb, dif)]
    results = {}
    for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
        ms.set_context(mode=mode)
        for shading in ("diffuse", "textureless"):
            net = _ShadeAndBackground(MsDiffuse(MVDREAM_SHADING), env, shading)
            grad_fn = ms.value_and_grad(_Loss(net), grad_position=(0, 4, 5), weights=env.trainable_params())
            (loss, (g_in, g_w)) = grad_fn(*args)
            _, rgb, bg = net(*args)
            results[(mode, shading)] = [rgb, bg, loss, *g_in, *g_w]
        # the augmentation branch (colour given) compiles too
        aug = ms.Tensor(np.array([0.1, 0.2, 0.3], np.float32))
        results[(mode, "aug")] = [env(args[5], aug)]
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert_parity(results[(ms.GRAPH_MODE, "aug")][0], results[(ms.PYNATIVE_MODE, "aug")][0], "GRAPH aug colour", rel=0)
    np.testing.assert_allclose(results[(ms.GRAPH_MODE, "aug")][0].asnumpy()[1, 3, 2], [0.1, 0.2, 0.3])
    for shading in ("diffuse", "textureless"):
        names = ["rgb", "background", "loss", "d/d features", "d/d normal", "d/d dirs", "d/d w0", "d/d w2", "d/d w4"]
        for name, a, b in zip(names, results[(ms.GRAPH_MODE, shading)], results[(ms.PYNATIVE_MODE, shading)]):
            assert_parity(a, b, f"GRAPH vs PyNative [{shading}] {name}", rel=1e-5)
