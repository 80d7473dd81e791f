"""Parity of the static-shape `nerf-volume-renderer`: torch_ref vs mindspore_impl.

Same geometry / background / material parameters, same rays and jitter -> every render output and the parameter
gradients of a loss on the render agree; the occupancy-grid update agrees; chunked == unchunked rendering.
"""
import numpy as np
import mindspore as ms
import torch
from mindspore import Tensor

from tests.parity import assert_parity
from mindspore_impl.lift3d.renderers import NeRFVolumeRenderer as MsRenderer
from torch_ref.lift3d.renderers import NeRFVolumeRenderer as PtRenderer
from mindspore_impl.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground as MsEnv
from torch_ref.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground as PtEnv
from mindspore_impl.lift3d.materials.no_material import NoMaterial as MsNoMat
from torch_ref.lift3d.materials.no_material import NoMaterial as PtNoMat
from mindspore_impl.lift3d.materials.diffuse_with_point_light import DiffuseWithPointLightMaterial as MsDiffuse
from torch_ref.lift3d.materials.diffuse_with_point_light import DiffuseWithPointLightMaterial as PtDiffuse
from mindspore_impl.lift3d.geometry.implicit_volume import ImplicitVolume as MsVolume
from torch_ref.lift3d.geometry.implicit_volume import ImplicitVolume as PtVolume

# tiny hash grid with one dense and hashed levels (2^10 table) so the test stays fast
GEOMETRY = {"radius": 1.0, "normal_type": None,
            "pos_encoding_config": {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2,
                                    "log2_hashmap_size": 10, "base_resolution": 4, "per_level_scale": 2.0},
            "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                                   "n_neurons": 16, "n_hidden_layers": 1}}
IMAGE_KEYS = ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth", "z_variance", "comp_normal")
SAMPLE_KEYS = ("weights", "t_points", "t_dirs", "normal")


def copy_params(pt_module, ms_cell):
    """Straight name copy torch -> MindSpore (the twins use the same parameter names); also randomises the
    hash table so the field is not flat."""
    state = {k: v.detach().numpy() for k, v in pt_module.state_dict().items()}
    for p in ms_cell.get_parameters():
        assert p.name in state, f"{p.name} missing from torch state {sorted(state)}"
        assert tuple(p.shape) == state[p.name].shape, p.name
        p.set_data(Tensor(state[p.name]))
    return state


def build(renderer_cfg, normal_type=None, material="none", seed=0):
    torch.manual_seed(seed)
    geo_cfg = dict(GEOMETRY, normal_type=normal_type)
    pt_geo, ms_geo = PtVolume(geo_cfg), MsVolume(geo_cfg)
    with torch.no_grad():
        for name, p in pt_geo.named_parameters():
            if "encoding" in name:
                p.uniform_(-1.0, 1.0)  # a textured field instead of the 1e-4 init
    if material == "diffuse":
        mat_cfg = {"ambient_light_color": [0.3, 0.3, 0.3], "diffuse_light_color": [0.7, 0.7, 0.7]}
        pt_mat, ms_mat = PtDiffuse(mat_cfg), MsDiffuse(mat_cfg)
    else:
        pt_mat, ms_mat = PtNoMat(), MsNoMat()
    pt_bg, ms_bg = PtEnv(), MsEnv()
    for pt_m, ms_m in ((pt_geo, ms_geo), (pt_mat, ms_mat), (pt_bg, ms_bg)):
        copy_params(pt_m, ms_m)
    return (PtRenderer(renderer_cfg, pt_geo, pt_mat, pt_bg), MsRenderer(renderer_cfg, ms_geo, ms_mat, ms_bg))


def make_rays(b, h, w, seed=1):
    """Cameras at distance 2.2 looking roughly at the origin; the wide spread makes some rays miss the box."""
    rng = np.random.default_rng(seed)
    eye = rng.normal(size=(b, 1, 1, 3)).astype(np.float32)
    eye = 2.2 * eye / np.linalg.norm(eye, axis=-1, keepdims=True)
    target = rng.uniform(-0.9, 0.9, size=(b, h, w, 3)).astype(np.float32)
    d = target - eye
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    d[0, 0, 0] = eye[0, 0, 0] / np.linalg.norm(eye[0, 0, 0])  # one ray pointing away from the box: a miss
    o = np.broadcast_to(eye, (b, h, w, 3)).astype(np.float32)
    light = rng.uniform(-2, 2, size=(b, 3)).astype(np.float32)
    return o, d.astype(np.float32), light


def run_both(pt_r, ms_r, inputs, shading="diffuse", bg_aug=None):
    o, d, light, jitter = inputs
    rng = np.random.default_rng(7)
    g_rgb = rng.normal(size=o.shape).astype(np.float32)
    g_op = rng.normal(size=o.shape[:-1] + (1,)).astype(np.float32)

    pt_out = pt_r(torch.from_numpy(o), torch.from_numpy(d), torch.from_numpy(light),
                  None if jitter is None else torch.from_numpy(jitter),
                  None if bg_aug is None else torch.from_numpy(bg_aug), shading=shading)
    pt_loss = (pt_out["comp_rgb"] * torch.from_numpy(g_rgb)).sum() + (pt_out["opacity"] * torch.from_numpy(g_op)).sum()
    pt_params = [p for m in (pt_r.geometry, pt_r.background) for p in m.parameters()]
    pt_grads = torch.autograd.grad(pt_loss, pt_params, allow_unused=True)

    ms_params = list(ms_r.geometry.trainable_params()) + list(ms_r.background.trainable_params())
    ms_args = (Tensor(o), Tensor(d), Tensor(light), None if jitter is None else Tensor(jitter),
               None if bg_aug is None else Tensor(bg_aug))

    def loss_fn(*args):
        out = ms_r(*args, shading=shading)
        return (out["comp_rgb"] * Tensor(g_rgb)).sum() + (out["opacity"] * Tensor(g_op)).sum()

    ms_out = ms_r(*ms_args, shading=shading)
    ms_grads = ms.grad(loss_fn, grad_position=None, weights=ms_params)(*ms_args)
    return pt_out, ms_out, list(zip([p.name for p in ms_params], pt_grads, ms_grads))


def check_outputs(pt_out, ms_out, expect_normal):
    assert set(pt_out) == set(ms_out), (sorted(pt_out), sorted(ms_out))
    assert ("comp_normal" in ms_out) == expect_normal
    for key in IMAGE_KEYS + SAMPLE_KEYS:
        if key in pt_out:
            assert_parity(ms_out[key], pt_out[key], key)


def check_grads(grads):
    for name, g_pt, g_ms in grads:
        ref = np.zeros(g_ms.shape, np.float32) if g_pt is None else g_pt
        assert_parity(g_ms, ref, f"grad {name}")


def test_uniform_sampler_with_grid_prune_matches():
    cfg = {"num_samples_per_ray": 24, "num_importance_samples": 0, "occ_update_interval": 1}
    pt_r, ms_r = build(cfg)
    for step in (0, 1):  # two EMA updates so some cells are empty and pruning is active
        assert pt_r.update_step(step, np.random.default_rng(100 + step)) and ms_r.update_step(step, np.random.default_rng(100 + step))
    empty = int((~pt_r.estimator.binaries).sum())
    print(f"[renderer] empty cells {empty} / {pt_r.estimator.binaries.numel()}")
    assert 0 < empty < pt_r.estimator.binaries.numel()
    b, h, w = 2, 3, 4
    o, d, light = make_rays(b, h, w)
    jitter = np.random.default_rng(3).random((b, h, w, pt_r.jitter_samples), dtype=np.float32)
    pt_out, ms_out, grads = run_both(pt_r, ms_r, (o, d, light, jitter))
    check_outputs(pt_out, ms_out, expect_normal=False)
    assert tuple(ms_out["comp_rgb"].shape) == (b, h, w, 3) and tuple(ms_out["depth"].shape) == (b, h, w, 1)
    assert tuple(ms_out["weights"].shape) == (b * h * w * 24, 1) and tuple(ms_out["t_dirs"].shape) == (b * h * w * 24, 3)
    assert float(ms_out["opacity"].asnumpy()[0, 0, 0, 0]) == 0.0  # the ray pointing away from the box
    assert float(ms_out["opacity"].asnumpy().max()) > 0.5
    check_grads(grads)


def test_importance_sampler_with_normals_and_shading_matches():
    cfg = {"num_samples_per_ray": 12, "num_importance_samples": 12, "return_comp_normal": True}
    pt_r, ms_r = build(cfg, normal_type="analytic", material="diffuse", seed=1)
    b, h, w = 2, 3, 3
    o, d, light = make_rays(b, h, w, seed=2)
    jitter = np.random.default_rng(4).random((b, h, w, pt_r.jitter_samples), dtype=np.float32)
    bg_aug = np.array([0.2, 0.5, 0.9], np.float32)
    pt_out, ms_out, grads = run_both(pt_r, ms_r, (o, d, light, jitter), shading="diffuse", bg_aug=bg_aug)
    check_outputs(pt_out, ms_out, expect_normal=True)
    assert tuple(ms_out["normal"].shape) == (b * h * w * 24, 3)
    t = ms_out["t_points"].asnumpy().reshape(b * h * w, 24)
    assert np.all(np.diff(t, axis=-1) >= 0), "merged samples must be sorted along each ray"
    assert np.allclose(ms_out["comp_rgb_bg"].asnumpy(), bg_aug)
    check_grads(grads)


def test_occupancy_update_matches_and_respects_interval():
    cfg = {"num_samples_per_ray": 8, "occ_update_interval": 4}
    pt_r, ms_r = build(cfg, seed=2)
    assert not pt_r.update_step(3, np.random.default_rng(1)) and not ms_r.update_step(3, np.random.default_rng(1))
    for step, seed in ((4, 11), (8, 12), (12, 13)):
        assert pt_r.update_step(step, np.random.default_rng(seed)) and ms_r.update_step(step, np.random.default_rng(seed))
        assert_parity(ms_r.estimator.occs, pt_r.estimator.occs, f"occs after step {step}")
        pt_bin = pt_r.estimator.binaries.numpy()
        ms_bin = ms_r.estimator.binaries.asnumpy()
        mismatch = int((pt_bin != ms_bin).sum())
        print(f"[renderer] step {step}: occupied {int(ms_bin.sum())}, binaries mismatch {mismatch}")
        assert mismatch == 0
    names = sorted(p.name for p in ms_r.get_parameters())
    assert names == ["estimator.aabbs", "estimator.binaries", "estimator.occs"], names
    assert sorted(pt_r.state_dict()) == names


def test_chunked_render_equals_unchunked():
    cfg = {"num_samples_per_ray": 8, "num_importance_samples": 8, "randomized": False, "return_comp_normal": True}
    pt_r, ms_r = build(cfg, normal_type="finite_difference", seed=3)
    o, d, light = make_rays(2, 4, 5, seed=5)
    ms_full = ms_r(Tensor(o), Tensor(d), Tensor(light))
    ms_chunk = ms_r.render_chunked(Tensor(o), Tensor(d), Tensor(light), chunk_size=7)  # 40 rays -> 6 chunks, padded
    with torch.no_grad():
        pt_full = pt_r(torch.from_numpy(o), torch.from_numpy(d), torch.from_numpy(light))
    pt_chunk = pt_r.render_chunked(torch.from_numpy(o), torch.from_numpy(d), torch.from_numpy(light), chunk_size=7)
    assert set(ms_chunk) == set(IMAGE_KEYS) and set(pt_chunk) == set(IMAGE_KEYS)
    for key in IMAGE_KEYS:
        assert_parity(ms_chunk[key], ms_full[key], f"ms chunked {key}", rel=1e-5)
        assert_parity(pt_chunk[key], pt_full[key], f"torch chunked {key}", rel=1e-5)
        assert_parity(ms_chunk[key], pt_chunk[key], f"chunked ms vs torch {key}")


def test_bad_config_fails_loudly():
    import pytest
    from neutral.config import ConfigError
    from neutral.registry import find
    assert find("nerf-volume-renderer") is MsRenderer
    geo, bg = MsVolume(GEOMETRY), MsEnv()
    with pytest.raises(ConfigError, match="num_sample_per_ray"):
        MsRenderer({"num_sample_per_ray": 64}, geo, MsNoMat(), bg)
    with pytest.raises(ValueError, match="needs normals"):
        MsRenderer({}, geo, MsDiffuse(), bg)
    with pytest.raises(ValueError, match="radius"):
        MsRenderer({"radius": 2.0}, geo, MsNoMat(), bg)
    with pytest.raises(ValueError, match="needs normals"):
        PtRenderer({}, PtVolume(GEOMETRY), PtDiffuse(), PtEnv())
