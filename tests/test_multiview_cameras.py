"""Property tests of the random multiview camera sampler (issue 4, item 1)."""
import json
import math

import numpy as np
import pytest

from neutral.config import ConfigError
from neutral.registry import find
from neutral.lift3d.multiview_cameras import RandomMultiviewCameraDataModule, sample_elevation_deg

SMALL = {"height": [8, 16], "width": [8, 16], "eval_height": 9, "eval_width": 9}


def ks_statistic(samples: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov distance between the empirical CDF of `samples` and `cdf`."""
    x = np.sort(samples)
    f = cdf(x)
    n = len(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


def ks_critical(n: int) -> float:
    return 1.63 / math.sqrt(n)  # alpha = 0.01


def test_registered_and_upstream_defaults():
    dm = find("random-multiview-camera-datamodule")()
    cfg = dm.cfg
    assert dm.batch_sizes == [8, 4] and dm.heights == [64, 256] and list(cfg.resolution_milestones) == [5000]
    assert (cfg.n_view, cfg.n_val_views, cfg.n_test_views) == (4, 4, 120)
    assert tuple(cfg.elevation_range) == (0.0, 30.0) and tuple(cfg.fovy_range) == (15.0, 60.0)
    assert tuple(cfg.camera_distance_range) == (0.8, 1.0) and cfg.relative_radius


def test_milestones_switch_resolution_and_batch():
    dm = RandomMultiviewCameraDataModule({"height": [64, 256], "width": [64, 256]}, seed=0)
    assert dm.stage(0) == (64, 64, 8) and dm.stage(4999) == (64, 64, 8)
    assert dm.stage(5000) == (256, 256, 4) and dm.stage(9999) == (256, 256, 4)
    b = dm.sample(4999)
    assert b["rays_o"].shape == (8, 64, 64, 3) and b["rays_d"].dtype == np.float32
    assert (b["height"], b["width"]) == (64, 64)
    b = dm.sample(5000)
    assert b["rays_d"].shape == (4, 256, 256, 3) and (b["height"], b["width"]) == (256, 256)
    for key, shape in [("mvp_mtx", (4, 4, 4)), ("c2w", (4, 4, 4)), ("camera_positions", (4, 3)),
                       ("light_positions", (4, 3)), ("elevation", (4,)), ("azimuth", (4,)),
                       ("camera_distances", (4,)), ("fovy", (4,))]:
        assert b[key].shape == shape and b[key].dtype == np.float32, key


def test_views_of_one_object_are_90_degrees_apart_and_share_draws():
    dm = RandomMultiviewCameraDataModule(SMALL, seed=1)
    offsets = []
    for step in range(50):
        b = dm.sample(step)
        az = b["azimuth"].reshape(2, 4)
        np.testing.assert_allclose(np.diff(az, axis=1), 90.0, atol=1e-4)
        assert az.min() >= -180.0 and az.max() < 180.0
        offsets.append(az[:, 0])
        for key in ("elevation", "fovy", "camera_distances"):
            grouped = b[key].reshape(2, 4)
            np.testing.assert_array_equal(grouped, grouped[:, :1].repeat(4, 1), err_msg=key)
        # relative radius: distance * tan(fovy / 2) is the drawn value in camera_distance_range
        rel = b["camera_distances"] * np.tan(np.radians(b["fovy"]) / 2)
        assert rel.min() >= 0.8 - 1e-5 and rel.max() <= 1.0 + 1e-5
        assert b["fovy"].min() >= 15.0 and b["fovy"].max() <= 60.0
        np.testing.assert_allclose(np.linalg.norm(b["camera_positions"], axis=-1), b["camera_distances"], rtol=1e-5)
    # the first view's azimuth (the random offset) covers [-180, -90)
    offsets = np.concatenate(offsets)
    assert offsets.min() < -170 and offsets.max() > -100 and offsets.max() < -90


def test_sphere_branch_is_uniform_on_the_sphere_over_the_full_range():
    rng = np.random.default_rng(0)
    n = 20000
    elev = sample_elevation_deg(rng, n, 0.0, 30.0, on_sphere=True)
    s = np.sin(np.radians(elev))
    d = ks_statistic(s, lambda x: np.clip(x / 0.5, 0, 1))
    print(f"[stats] KS of sin(elevation) vs U[0, 0.5]: D={d:.4f} (critical {ks_critical(n):.4f})")
    d_deg = ks_statistic(s, lambda x: np.degrees(np.arcsin(np.clip(x, 0, 0.5))) / 30.0)
    print(f"[stats] same samples vs degree-uniform: D={d_deg:.4f}")
    assert d < ks_critical(n) < d_deg
    # the MVDream-fork bug capped this branch at asin(1/3) = 19.47 degrees
    above = float(np.mean(elev > 19.5))
    print(f"[stats] sphere branch: max {elev.max():.3f} deg, fraction above 19.5 deg {above:.3f} (expect 0.333)")
    assert elev.max() > 29.9 and abs(above - (0.5 - 1 / 3) / 0.5) < 0.02
    assert elev.min() >= 0.0 and elev.max() <= 30.0


def test_sampler_elevation_is_half_degree_uniform_half_sphere_uniform():
    # over [0, 90] the two branches differ strongly (over [0, 30] sin is nearly linear)
    cfg = dict(SMALL, batch_size=[4, 4], elevation_range=[0.0, 90.0])  # one object per batch: iid draws
    dm = RandomMultiviewCameraDataModule(cfg, seed=2)
    elev = np.array([dm.sample(0)["elevation"][0] for _ in range(3000)], np.float64)

    def mixture_cdf(e):
        return 0.5 * e / 90.0 + 0.5 * np.sin(np.radians(e))

    d_mix = ks_statistic(elev, mixture_cdf)
    d_deg = ks_statistic(elev, lambda e: e / 90.0)
    d_sph = ks_statistic(elev, lambda e: np.sin(np.radians(e)))
    crit = ks_critical(len(elev))
    print(f"[stats] elevation in [0, 90]: KS vs 50/50 mixture D={d_mix:.4f}, vs degree-uniform D={d_deg:.4f}, "
          f"vs sphere-uniform D={d_sph:.4f} (critical {crit:.4f})")
    assert d_mix < crit < min(d_deg, d_sph)
    # the MVDream config range: samples cover all of [0, 30]
    dm = RandomMultiviewCameraDataModule(dict(SMALL, batch_size=[4, 4]), seed=2)
    elev = np.array([dm.sample(0)["elevation"][0] for _ in range(1000)])
    print(f"[stats] elevation in [0, 30]: min {elev.min():.3f}, max {elev.max():.3f}")
    assert elev.min() >= 0.0 and elev.max() <= 30.0 and elev.max() > 29.5 and elev.min() < 0.5


def test_deterministic_under_seed():
    a = RandomMultiviewCameraDataModule(SMALL, seed=7)
    b = RandomMultiviewCameraDataModule(SMALL, seed=7)
    c = RandomMultiviewCameraDataModule(SMALL, seed=8)
    for step in (0, 1, 5000):
        ba, bb, bc = a.sample(step), b.sample(step), c.sample(step)
        for key in ("rays_o", "rays_d", "mvp_mtx", "light_positions", "azimuth", "elevation"):
            np.testing.assert_array_equal(ba[key], bb[key], err_msg=key)
        assert not np.array_equal(ba["azimuth"], bc["azimuth"])


def test_state_save_and_restore_continues_identically():
    a = RandomMultiviewCameraDataModule(SMALL, seed=3)
    for step in range(5):
        a.sample(step)
    state = json.loads(json.dumps(a.get_state()))  # survives a JSON checkpoint
    expected = [a.sample(step) for step in range(5, 8)]
    b = RandomMultiviewCameraDataModule(SMALL, seed=12345)
    b.set_state(state)
    for step, want in zip(range(5, 8), expected):
        got = b.sample(step)
        for key in ("rays_d", "c2w", "light_positions", "fovy"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_rays_start_at_camera_are_unit_and_centre_ray_hits_origin():
    cfg = {"height": [9, 17], "width": [9, 17], "camera_perturb": 0.0}
    dm = RandomMultiviewCameraDataModule(cfg, seed=4)
    b = dm.sample(0)
    pos = b["camera_positions"]
    np.testing.assert_allclose(b["rays_o"], np.broadcast_to(pos[:, None, None], b["rays_o"].shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(b["rays_d"], axis=-1), 1.0, atol=1e-5)
    centre = b["rays_d"][:, 4, 4]  # odd size: pixel (4, 4) is the image centre
    np.testing.assert_allclose(centre, -pos / np.linalg.norm(pos, axis=-1, keepdims=True), atol=1e-5)
    # c2w: rotation, camera up has positive world z, translation = position
    rot = b["c2w"][:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    assert np.all(rot[:, 2, 1] > 0)
    np.testing.assert_allclose(b["c2w"][:, :3, 3], pos, atol=1e-6)
    # the top-left pixel looks up and to the left in camera space
    cam_dir = np.einsum("bji,bj->bi", rot, b["rays_d"][:, 0, 0])
    assert np.all(cam_dir[:, 0] < 0) and np.all(cam_dir[:, 1] > 0) and np.all(cam_dir[:, 2] < 0)


def test_mvp_projects_pixel_rays_back_to_their_pixels():
    dm = RandomMultiviewCameraDataModule({"height": [9, 17], "width": [9, 17]}, seed=5)
    b = dm.sample(0)
    h = w = 9
    for (row, col) in [(0, 0), (4, 4), (2, 7), (8, 1)]:
        p = b["rays_o"][:, row, col] + 1.5 * b["rays_d"][:, row, col]
        clip = np.einsum("bij,bj->bi", b["mvp_mtx"].astype(np.float64), np.concatenate([p, np.ones((8, 1))], -1))
        ndc = clip[:, :2] / clip[:, 3:]
        # threestudio flips y in the projection: NDC y grows with the image row
        np.testing.assert_allclose(ndc[:, 0], (col + 0.5) / w * 2 - 1, atol=1e-4)
        np.testing.assert_allclose(ndc[:, 1], (row + 0.5) / h * 2 - 1, atol=1e-4)


def test_lights_follow_the_camera_at_the_configured_distance():
    dm = RandomMultiviewCameraDataModule(SMALL, seed=6)
    for step in range(20):
        b = dm.sample(step)
        dist = np.linalg.norm(b["light_positions"], axis=-1)
        assert dist.min() >= 0.8 - 1e-5 and dist.max() <= 1.5 + 1e-5
        np.testing.assert_allclose(dist.reshape(2, 4), dist.reshape(2, 4)[:, :1].repeat(4, 1), rtol=1e-5)
    dm = RandomMultiviewCameraDataModule(dict(SMALL, light_sample_strategy="magic3d"), seed=6)
    b = dm.sample(0)
    cos = np.sum(b["light_positions"] * b["camera_positions"], -1) / (
        np.linalg.norm(b["light_positions"], axis=-1) * np.linalg.norm(b["camera_positions"], axis=-1))
    assert np.all(cos >= math.cos(math.pi / 3) - 1e-5)  # magic3d: within 60 degrees of the camera


def test_eval_cameras():
    dm = RandomMultiviewCameraDataModule(SMALL, seed=0)
    assert dm.n_val == 4 and dm.n_test == 120
    val = [dm.val_batch(i) for i in range(dm.n_val)]
    np.testing.assert_allclose([v["azimuth"][0] for v in val], [0, 90, 180, 270], atol=1e-5)
    test_az = dm.eval_azimuths_deg("test")
    assert len(test_az) == 120 and len(np.unique(test_az)) == 120
    np.testing.assert_allclose(np.diff(test_az), 3.0, atol=1e-9)
    t = dm.test_batch(119)
    assert t["rays_o"].shape == (1, 9, 9, 3) and (t["height"], t["width"]) == (9, 9)
    np.testing.assert_allclose(t["elevation"], 15.0)
    np.testing.assert_allclose(t["camera_distances"], 3.0)
    np.testing.assert_allclose(t["fovy"], 40.0)
    np.testing.assert_allclose(np.linalg.norm(t["camera_positions"]), 3.0, rtol=1e-6)
    np.testing.assert_allclose(t["light_positions"], t["camera_positions"])
    np.testing.assert_allclose(np.degrees(np.arcsin(t["camera_positions"][0, 2] / 3.0)), 15.0, atol=1e-4)
    np.testing.assert_allclose(t["rays_d"][0, 4, 4], -t["camera_positions"][0] / 3.0, atol=1e-5)
    with pytest.raises(IndexError, match="test view index 120"):
        dm.test_batch(120)
    assert RandomMultiviewCameraDataModule(seed=0).val_batch(0)["rays_d"].shape == (1, 512, 512, 3)


def test_bad_configs_fail_loudly():
    with pytest.raises(ValueError, match="divisible by n_view 4"):
        RandomMultiviewCameraDataModule({"batch_size": [6, 4]})
    with pytest.raises(ValueError, match="resolution_milestones"):
        RandomMultiviewCameraDataModule({"resolution_milestones": [100, 200]})
    with pytest.raises(ConfigError, match="n_veiw"):
        RandomMultiviewCameraDataModule({"n_veiw": 4})
    with pytest.raises(ValueError, match="light_sample_strategy"):
        RandomMultiviewCameraDataModule({"light_sample_strategy": "sun"})
