"""Parity of the static-shape `nerf-volume-renderer`: torch_ref vs mindspore_impl.

Same geometry / background / material parameters, same rays and jitter -> every render output and the parameter
gradients of a loss on the render agree; the occupancy-grid update agrees; chunked == unchunked rendering.
"""
import numpy as np
import torch
from mindspore import Tensor

from tests.parity import assert_parity, to_numpy, to_torch
from tests.parity_cases import IMAGE_KEYS, SAMPLE_KEYS, make_rays
from tests.parity_cases import RENDER_GEOMETRY as GEOMETRY
from tests.parity_cases import render_both as run_both
from tests.parity_cases import renderer_pair as build
from mindspore_impl.lift3d.renderers import NeRFVolumeRenderer as MsRenderer
from torch_ref.lift3d.renderers import NeRFVolumeRenderer as PtRenderer
from mindspore_impl.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground as MsEnv
from torch_ref.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground as PtEnv
from mindspore_impl.lift3d.materials.no_material import NoMaterial as MsNoMat
from mindspore_impl.lift3d.materials.diffuse_with_point_light import DiffuseWithPointLightMaterial as MsDiffuse
from torch_ref.lift3d.materials.diffuse_with_point_light import DiffuseWithPointLightMaterial as PtDiffuse
from mindspore_impl.lift3d.geometry.implicit_volume import ImplicitVolume as MsVolume
from torch_ref.lift3d.geometry.implicit_volume import ImplicitVolume as PtVolume


def check_outputs(pt_out, ms_out, expect_normal):
    """Every output agrees. Importance samples in a near-empty bin of the coarse pdf sit where its inverse cdf
    turns a 1-ulp cdf difference into a shift of ~1e-4 (the frameworks' sums round differently, and differently
    on CPUs with other vector units); the attributes of such samples (normals) are evaluated at other points, so
    they are compared at the samples whose positions agree to 1e-6, which must be nearly all."""
    assert set(pt_out) == set(ms_out), (sorted(pt_out), sorted(ms_out))
    assert ("comp_normal" in ms_out) == expect_normal
    t_ms, t_pt = to_numpy(ms_out["t_points"]), to_numpy(pt_out["t_points"])
    same_t = (np.abs(t_ms - t_pt) <= 1e-6 * max(1.0, float(np.abs(t_pt).max()))).reshape(-1)
    print(f"[renderer] samples at the same position: {int(same_t.sum())} / {same_t.size}")
    assert same_t.mean() >= 0.9
    for key in IMAGE_KEYS + SAMPLE_KEYS:
        if key not in pt_out:
            continue
        if key == "normal":
            assert_parity(to_numpy(ms_out[key])[same_t], to_numpy(pt_out[key])[same_t], f"{key} (same positions)")
        else:
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
        pt_bin = pt_r.estimator.binaries.cpu().numpy()
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
        pt_full = pt_r(to_torch(o), to_torch(d), to_torch(light))
    pt_chunk = pt_r.render_chunked(to_torch(o), to_torch(d), to_torch(light), chunk_size=7)
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
