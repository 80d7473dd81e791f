"""Procedural primitives dataset: cameras agree with the renderer and with the project's conventions,
colours, IoU helpers, determinism, file round trip and bad files."""
import math
import os

import numpy as np
import pytest

from neutral.lift3d.multiview_cameras import RandomMultiviewCameraDataModule
from mindspore_impl.mvdream.cameras import get_camera, normalize_camera
from mindspore_impl.mvdream.data import primitives as P
from scripts import make_primitives_dataset as cli


@pytest.fixture(scope="module")
def small_dataset():
    return P.make_dataset(6, size=16, seed=3)


def _mask_centroid(alpha):
    rows, cols = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
    w = alpha / alpha.sum()
    return np.array([(w * (cols + 0.5)).sum(), (w * (rows + 0.5)).sum()])  # (column, row), centres at +0.5


@pytest.mark.parametrize("elev,azim", [(0.0, 0.0), (25.0, 130.0), (10.0, -70.0)])
def test_off_centre_point_renders_where_mvp_projects_it(elev, azim):
    size, centre, radius = 64, np.array([0.25, -0.15, 0.12]), 0.04
    cams = P.make_cameras([elev], [azim], [0.9 / math.tan(math.radians(20.0))], [40.0], size)
    alpha = P.render(lambda p: np.linalg.norm(p - centre, axis=-1) - radius, cams["c2w"], [40.0], size,
                     supersample=4)["alpha"][0]
    assert alpha.sum() > 5.0, "the small sphere should cover several pixels"
    expected = P.project_points(centre[None], cams["mvp_mtx"][0], size)[0]
    err = np.abs(_mask_centroid(alpha) - expected).max()
    print(f"elev {elev} azim {azim}: centroid vs projection err {err:.3f} px")
    assert err < 0.25


def test_cameras_match_lift3d_sampler_rays_and_mvp():
    dm = RandomMultiviewCameraDataModule({"eval_height": 24, "eval_width": 24, "n_test_views": 8,
                                          "eval_elevation_deg": 17.0, "eval_camera_distance": 2.3,
                                          "eval_fovy_deg": 40.0})
    for i in range(3):
        ref = dm.test_batch(i)
        cams = P.make_cameras(ref["elevation"], ref["azimuth"], ref["camera_distances"], ref["fovy"], 24)
        rays_o, rays_d = P.camera_rays(cams["c2w"], ref["fovy"], 24)
        for key, ours in (("c2w", cams["c2w"]), ("mvp_mtx", cams["mvp_mtx"]), ("rays_o", rays_o),
                          ("rays_d", rays_d)):
            err = np.abs(ours - ref[key]).max()
            assert err < 1e-5, f"view {i} {key} differs from the lift3d sampler by {err:.2e}"


def test_image_centre_ray_hits_origin_and_c2w_frame():
    cams = P.make_cameras([20.0, 5.0], [40.0, 200.0], [2.5, 2.0], [40.0, 40.0], 33)
    rays_o, rays_d = P.camera_rays(cams["c2w"], [40.0, 40.0], 33)
    o, d = rays_o[:, 16, 16], rays_d[:, 16, 16]
    miss = np.linalg.norm(o - np.sum(o * d, -1, keepdims=True) * d, axis=-1)  # distance origin <-> ray
    assert miss.max() < 1e-9, miss
    c2w = cams["c2w"]
    back = c2w[:, :3, 2]
    np.testing.assert_allclose(back, c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=-1, keepdims=True),
                               atol=1e-12)  # camera looks along -z at the origin
    assert np.all(c2w[:, 2, 1] > 0)  # camera up leans to world +z (z-up world)
    np.testing.assert_allclose(c2w[:, :3, :3] @ np.transpose(c2w[:, :3, :3], (0, 2, 1)),
                               np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-12)


def test_views_are_90_degrees_apart(small_dataset):
    d = small_dataset
    pos = d["c2w"][..., :3, 3].astype(np.float64)
    az = np.degrees(np.arctan2(pos[..., 1], pos[..., 0]))
    step = (np.diff(az, axis=1) + 360.0) % 360.0
    assert np.abs(step - 90.0).max() < 1e-3, step
    np.testing.assert_allclose((np.diff(d["azimuth"], axis=1)), 90.0, atol=1e-4)
    el = np.degrees(np.arcsin(pos[..., 2] / np.linalg.norm(pos, axis=-1)))
    np.testing.assert_allclose(el, d["elevation"], atol=1e-3)
    assert np.all((d["elevation"] >= 0) & (d["elevation"] <= 30))
    assert np.all(np.ptp(d["elevation"], axis=1) == 0) and np.all(np.ptp(d["distance"], axis=1) == 0)
    np.testing.assert_allclose(np.linalg.norm(pos, axis=-1), d["distance"], rtol=1e-5)
    np.testing.assert_allclose(d["fovy"], 40.0)


def test_camera_condition_is_normalize_camera_of_c2w(small_dataset):
    d = small_dataset
    ref = normalize_camera(d["c2w"].reshape(-1, 4, 4)).reshape(d["cameras"].shape)
    assert d["cameras"].dtype == np.float32
    assert np.abs(d["cameras"] - ref).max() == 0.0
    # same numbers as MVDream's own get_camera with MVDream azimuth = threestudio azimuth + 90
    for n in range(2):
        for v in range(4):
            mv = get_camera(1, elevation=float(d["elevation"][n, v]), azimuth_start=float(d["azimuth"][n, v]) + 90)
            err = np.abs(mv[0] - d["cameras"][n, v]).max()
            assert err < 1e-5, f"object {n} view {v}: {err:.2e}"


def test_deterministic_under_seed():
    a = P.make_dataset(5, size=12, seed=11, chunk=2)
    b = P.make_dataset(5, size=12, seed=11, chunk=32)
    c = P.make_dataset(5, size=12, seed=12)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["images"], c["images"])


@pytest.mark.parametrize("color", ["red", "green", "blue", "yellow", "orange", "purple", "gray", "black"])
def test_pixel_colours_match_named_colour(color):
    albedo = np.array(P.COLORS[color])
    cams = P.canonical_cameras(24)
    out = P.render(P.SHAPES["sphere"], cams["c2w"], cams["fovy"], 24, albedo=albedo)
    pix = out["rgb"][out["alpha"] == 1.0]
    assert pix.shape[0] > 200
    shade = pix @ albedo / (albedo @ albedo)  # pixel = shade * albedo for Lambertian + ambient
    residual = np.abs(pix - shade[:, None] * albedo).max()
    print(f"{color}: shade range [{shade.min():.3f}, {shade.max():.3f}], residual {residual:.2e}")
    assert residual < 1e-9 and shade.min() >= 0.3 - 1e-9 and shade.max() <= 1.0 + 1e-9
    assert shade.max() > 0.9  # the light sits near the camera: facing surfaces are fully lit
    # the named colour explains the pixels better than any other chromatic palette colour
    chroma = {k: np.array(v) / np.linalg.norm(v) for k, v in P.COLORS.items()}
    mean_dir = pix.mean(0) / np.linalg.norm(pix.mean(0))
    best = max(chroma, key=lambda k: chroma[k] @ mean_dir)
    assert np.allclose(chroma[best], chroma[color]), f"{color} looks like {best}"


def test_white_background_outside_mask(small_dataset):
    d = small_dataset
    outside = d["masks"] == 0
    assert outside.mean() > 0.3 and (d["masks"] == 255).mean() > 0.1
    assert np.all(d["images"][outside] == 255)
    # stored uint8 pixels fully inside the mask are the caption's colour times a shade
    for n in range(d["images"].shape[0]):
        albedo = d["palette"][d["color_ids"][n]].astype(np.float64)
        pix = d["images"][n][d["masks"][n] == 255] / 255.0
        shade = pix @ albedo / (albedo @ albedo)
        residual = np.abs(pix - shade[:, None] * albedo).max()
        assert residual < 3.0 / 255.0, f"object {n} ({d['captions'][n]}): colour residual {residual:.4f}"
        assert P.parse_prompt(str(d["captions"][n])) == (str(d["color_names"][d["color_ids"][n]]),
                                                         str(d["shape_names"][d["shape_ids"][n]]))


def test_iou_helpers_and_silhouettes():
    assert P.volume_iou("cube", "cube", resolution=24) == 1.0
    cs = P.volume_iou("cube", "sphere", resolution=24)
    print(f"volume IoU cube vs sphere {cs:.3f}")
    assert 0.3 < cs < 0.9
    assert P.inside("torus", np.array([[0.0, 0.0, 0.0]]))[0] == False  # noqa: E712  (the hole)
    assert P.inside("torus", np.array([[0.33, 0.0, 0.0]]))[0]
    pts = P.grid_points(20, 0.6)
    for name in P.SHAPES:
        assert P.inside(name, np.zeros((1, 3)))[0] == (name != "torus")
        assert np.all(P.shape_sdf(name, pts[np.linalg.norm(pts, axis=-1) > 0.56]) > 0), name
    sil_cube, sil_sphere = P.render_silhouettes("cube", 32), P.render_silhouettes("sphere", 32)
    assert sil_cube.shape == (4, 32, 32)
    assert P.iou(sil_cube, sil_cube) == 1.0 and P.iou(sil_cube, sil_sphere) < 0.95
    with pytest.raises(KeyError, match="unknown shape 'dodecahedron'"):
        P.inside("dodecahedron", pts)


def test_sphere_silhouette_has_analytic_size():
    size = 64
    cams = P.canonical_cameras(size)
    alpha = P.render_silhouettes("sphere", size, supersample=4)
    focal = 0.5 * size / math.tan(math.radians(20.0))
    rho = focal * math.tan(math.asin(0.42 / cams["distance"][0]))
    rel = np.abs(alpha.sum(axis=(1, 2)) / (math.pi * rho * rho) - 1.0).max()
    print(f"sphere silhouette area vs analytic: rel err {rel:.4f}")
    assert rel < 0.02


def test_round_trip_and_bad_files(tmp_path, small_dataset):
    path = str(tmp_path / "sub" / "prims.npz")
    P.save_dataset(small_dataset, path)
    assert sorted(os.listdir(tmp_path / "sub")) == ["prims.npz"]  # no temp file left behind
    back = P.load_dataset(path)
    assert set(back) == set(small_dataset)
    for key in small_dataset:
        np.testing.assert_array_equal(back[key], small_dataset[key], err_msg=key)
        assert back[key].dtype == small_dataset[key].dtype, key
    assert back["images"].shape == (6, 4, 16, 16, 3) and back["captions"][0].startswith("a")

    with pytest.raises(P.DatasetError, match="not found"):
        P.load_dataset(str(tmp_path / "nope.npz"))
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(P.DatasetError, match="not a readable .npz"):
        P.load_dataset(str(text))
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(P.DatasetError, match="not a primitives dataset"):
        P.load_dataset(str(other))
    broken = dict(small_dataset, cameras=small_dataset["cameras"][:, :3])
    with pytest.raises(P.DatasetError, match="'cameras' has shape"):
        P.save_dataset(broken, str(tmp_path / "broken.npz"))


def test_cli_writes_loadable_file(tmp_path, capsys):
    out = str(tmp_path / "cli.npz")
    assert cli.main(["--out", out, "--num_objects", "3", "--size", "8", "--seed", "5",
                     "--shapes", "cube", "pyramid", "--colors", "red", "white"]) == 0
    d = P.load_dataset(out)
    assert d["images"].shape == (3, 4, 8, 8, 3) and int(d["seed"]) == 5
    assert set(d["captions"]) <= {"a red cube", "a white cube", "a red pyramid", "a white pyramid"}
    with pytest.raises(P.DatasetError, match="unknown colour 'teal'"):
        cli.main(["--out", out, "--colors", "teal"])
