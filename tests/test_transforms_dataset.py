"""The transforms.json reader, writer and data module (neutral/lift3d/transforms_dataset.py): a round trip, rays
that agree with the renderer's camera convention, the held-out split, resumable sampling, and one clear error per
problem with a folder, also through launch.py (one `error:` line, exit 2, no trial folder)."""
import json
import math
import os

import imageio.v3 as iio
import numpy as np
import pytest

from neutral.config import ConfigError
from neutral.lift3d.multiview_cameras import get_ray_directions, get_rays, look_at_c2w, spherical_to_cartesian
from neutral.lift3d.transforms_dataset import (DatasetError, TransformsDataModule, read_transforms,
                                               write_transforms)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RECON = os.path.join(ROOT, "configs", "tiny-recon.yaml")


def cameras(n, distance=2.5):
    elevation = np.tile([0.0, 25.0, -10.0], n)[:n]
    azimuth = np.arange(n) * 360.0 / n
    pos = spherical_to_cartesian(np.radians(elevation), np.radians(azimuth), np.full(n, distance))
    return look_at_c2w(pos, np.zeros_like(pos), np.array([[0.0, 0.0, 1.0]]))


def rgba_images(n, h, w, seed=0):
    rgba = np.random.default_rng(seed).integers(0, 256, (n, h, w, 4)).astype(np.uint8)
    rgba[:, 0, 0, 3] = 0  # fully transparent and fully opaque pixels too
    rgba[:, 0, 1, 3] = 255
    return rgba


def folder(tmp_path, n=4, h=6, w=8, fovy=40.0, rgb_only=False, name="scene"):
    root = str(tmp_path / name)
    rgba = rgba_images(n, h, w)
    write_transforms(root, rgba[..., :3] if rgb_only else rgba, cameras(n), fovy)
    return root, rgba


def edit_json(root, fn):
    path = os.path.join(root, "transforms.json")
    with open(path) as f:
        meta = json.load(f)
    fn(meta)
    with open(path, "w") as f:
        json.dump(meta, f)


# ----------------------------------------------------------------------------- round trip


def test_round_trip_rgba_non_square(tmp_path):
    root, rgba = folder(tmp_path, n=3, h=6, w=8, fovy=40.0)
    with open(os.path.join(root, "transforms.json")) as f:
        meta = json.load(f)
    # camera_angle_x is the horizontal fov of the 8x6 image with vertical fov 40 degrees
    assert meta["camera_angle_x"] == pytest.approx(2 * math.atan(math.tan(math.radians(20)) * 8 / 6))
    d = read_transforms(root)
    assert d["images"].shape == (3, 6, 8, 3) and d["alpha"].shape == (3, 6, 8) and (d["height"], d["width"]) == (6, 8)
    np.testing.assert_array_equal(d["alpha"], rgba[..., 3] / np.float32(255))
    a = rgba[..., 3] > 0
    np.testing.assert_allclose(d["images"][a], rgba[..., :3][a] / 255.0, atol=1e-6)
    np.testing.assert_allclose(d["c2w"], cameras(3), atol=1e-6)
    np.testing.assert_allclose(d["fovy_deg"], 40.0, rtol=1e-5)
    focal = 3.0 / math.tan(math.radians(20))
    np.testing.assert_allclose(d["intrinsics"], np.tile([focal, focal, 4.0, 3.0], (3, 1)), rtol=1e-5)


def test_round_trip_rgb_per_frame_fov_and_blender_paths(tmp_path):
    root = str(tmp_path / "rgb")
    rgb = rgba_images(2, 5, 5)[..., :3]
    write_transforms(root, rgb, cameras(2), [30.0, 50.0], names=["a", "b"])
    d = read_transforms(root)
    assert d["alpha"] is None
    np.testing.assert_allclose(d["fovy_deg"], [30.0, 50.0], rtol=1e-5)
    np.testing.assert_array_equal(np.round(d["images"] * 255), rgb)
    # Blender writes "./train/r_0" without the extension
    edit_json(root, lambda m: [f.update(file_path=f["file_path"][:-4]) for f in m["frames"]])
    assert read_transforms(root)["file_paths"] == ["./images/a", "./images/b"]


def test_instant_ngp_intrinsics_are_rescaled_to_the_image(tmp_path):
    root, _ = folder(tmp_path, n=2, h=6, w=8)

    def ngp(m):  # intrinsics given for a 16x12 original
        m.pop("camera_angle_x")
        m.update(fl_x=20.0, fl_y=22.0, cx=7.0, cy=6.5, w=16, h=12)
    edit_json(root, ngp)
    d = read_transforms(root)
    np.testing.assert_allclose(d["intrinsics"][0], [10.0, 11.0, 3.5, 3.25])


def test_downscale_is_an_area_average(tmp_path):
    root, rgba = folder(tmp_path, n=2, h=8, w=8)
    d = read_transforms(root, downscale=2)
    a = rgba[..., 3] / 255.0
    alpha = a.reshape(2, 4, 2, 4, 2).mean((2, 4))
    premul = (rgba[..., :3] / 255.0 * a[..., None]).reshape(2, 4, 2, 4, 2, 3).mean((2, 4))
    np.testing.assert_allclose(d["alpha"], alpha, atol=1e-6)
    np.testing.assert_allclose(d["images"] * d["alpha"][..., None], premul, atol=1e-5)
    np.testing.assert_allclose(d["fovy_deg"], 40.0, rtol=1e-5)  # the field of view is kept
    assert (d["height"], d["width"]) == (4, 4)


# ----------------------------------------------------------------------------- the data module


def test_rays_match_the_camera_sampler_and_the_pixels(tmp_path):
    """Pixel-centre rays of a training frame equal get_rays of the sampler's convention, and each sampled ray
    carries its pixel's colour (every pixel of the image has its own colour)."""
    h, w, fovy = 4, 6, 35.0
    rgb = np.zeros((1, h, w, 3), np.uint8)
    rgb[0, ..., 0] = np.arange(h)[:, None] * 40
    rgb[0, ..., 1] = np.arange(w)[None, :] * 40
    c2w = cameras(1)
    root = str(tmp_path / "one")
    write_transforms(root, rgb, c2w, fovy)
    dm = TransformsDataModule({"root": root, "holdout_every": 0, "rays_per_step": 64, "pixel_jitter": False}, seed=3)
    dirs = get_ray_directions(h, w)
    dirs[..., :2] *= math.tan(math.radians(fovy) / 2) / (h / 2)
    ref_o, ref_d = get_rays(dirs[None], c2w)
    b = dm.sample(0)
    assert b["rays_o"].shape == (64, 1, 1, 3) and b["rgb"].shape == (64, 1, 1, 3) and "mask" not in b
    rows = np.round(b["rgb"][:, 0, 0, 0] * 255 / 40).astype(int)
    cols = np.round(b["rgb"][:, 0, 0, 1] * 255 / 40).astype(int)
    np.testing.assert_allclose(b["rays_d"][:, 0, 0], ref_d[0, rows, cols], atol=1e-6)
    np.testing.assert_allclose(b["rays_o"][:, 0, 0], ref_o[0, rows, cols], atol=1e-6)
    np.testing.assert_allclose(b["light_positions"], ref_o[0, rows, cols], atol=1e-6)


def test_holdout_val_test_and_resume(tmp_path):
    root, rgba = folder(tmp_path, n=10, h=6, w=8)
    cfg = {"root": root, "holdout_every": 4, "n_val_views": -1, "rays_per_step": 32, "n_test_views": 3,
           "scene_scale": 0.5}
    dm = TransformsDataModule(cfg, seed=7)
    assert dm.n_val == 3 and dm.held_out["file_paths"] == ["./images/0000.png", "./images/0004.png",
                                                           "./images/0008.png"]
    assert len(dm.train["file_paths"]) == 7 and dm.has_mask
    v = dm.val_batch(1)
    assert v["rays_o"].shape == (1, 6, 8, 3) and v["rgb"].shape == (1, 6, 8, 3) and v["mask"].shape == (1, 6, 8, 1)
    np.testing.assert_allclose(v["mask"][0, ..., 0], rgba[4, ..., 3] / 255.0, atol=1e-6)
    np.testing.assert_allclose(v["light_positions"][0], cameras(10)[4, :3, 3] * 0.5, atol=1e-6)  # scene_scale
    t = dm.test_batch(2)
    assert t["rays_o"].shape == (1, 6, 8, 3) and dm.n_test == 3
    assert np.linalg.norm(t["rays_o"][0, 0, 0]) == pytest.approx(1.25, rel=1e-5)  # median distance, scaled
    # the ray stream resumes exactly from get_state
    dm.sample(0)
    state = json.loads(json.dumps(dm.get_state()))
    expect = dm.sample(1)
    other = TransformsDataModule(cfg, seed=7)
    other.set_state(state)
    got = other.sample(1)
    assert all(np.array_equal(expect[k], got[k]) for k in expect)
    assert not np.array_equal(dm.sample(2)["rays_d"], got["rays_d"])


def test_nerf_synthetic_split(tmp_path):
    """No transforms.json: train on transforms_train.json, validate on transforms_val.json (Blender paths)."""
    root = tmp_path / "lego"
    root.mkdir()
    for split, n in (("train", 3), ("val", 2)):
        staging = str(tmp_path / split)
        write_transforms(staging, rgba_images(n, 4, 4), cameras(n, 4.0), 40.0)
        os.replace(os.path.join(staging, "images"), root / split)
        with open(os.path.join(staging, "transforms.json")) as f:
            meta = json.load(f)
        for frame in meta["frames"]:  # ./train/r_0 style: no extension
            frame["file_path"] = f"./{split}/" + os.path.basename(frame["file_path"])[:-4]
        with open(root / f"transforms_{split}.json", "w") as f:
            json.dump(meta, f)
    dm = TransformsDataModule({"root": str(root), "n_val_views": 1}, seed=0)
    assert len(dm.train["file_paths"]) == 3 and dm.n_val == 1 and dm.val_batch(0)["file_path"] == "./val/0000"


# ----------------------------------------------------------------------------- errors


def _break_image(root):
    os.remove(os.path.join(root, "images", "0001.png"))


def _resize_image(root):
    iio.imwrite(os.path.join(root, "images", "0002.png"), np.zeros((5, 8, 4), np.uint8))


def _rgb_image(root):
    iio.imwrite(os.path.join(root, "images", "0002.png"), np.zeros((6, 8, 3), np.uint8))


def _matrix(fn):
    def edit(root):
        def change(m):
            m["frames"][1]["transform_matrix"] = fn(np.asarray(m["frames"][1]["transform_matrix"])).tolist()
        edit_json(root, change)
    return edit


def _scaled(m):
    m[:3, :3] *= 2.0
    return m


def _reflected(m):
    m[:3, 0] *= -1.0
    return m


def _nan(m):
    m[0, 3] = np.nan
    return m


def _write(root, name, text):
    with open(os.path.join(root, name), "w") as f:
        f.write(text)


def _last_row(m):
    m[3] = [0.0, 0.0, 1.0, 1.0]
    return m


@pytest.mark.parametrize("breaker, needles", [
    (lambda r: os.remove(os.path.join(r, "transforms.json")), ["has no transforms.json", "camera_angle_x"]),
    (lambda r: _write(r, "transforms.json", "{oops"), ["is not valid JSON"]),
    (lambda r: edit_json(r, lambda m: m.update(frames=[])), ["'frames' is empty", "transforms.json"]),
    (lambda r: edit_json(r, lambda m: m.pop("frames")), ["has no 'frames' list"]),
    (lambda r: edit_json(r, lambda m: m.pop("camera_angle_x")), ["frame 0", "no camera_angle_x", "fl_x"]),
    (lambda r: edit_json(r, lambda m: m["frames"][2].pop("file_path")), ["frame 2 has no file_path"]),
    (lambda r: edit_json(r, lambda m: m["frames"][2].pop("transform_matrix")), ["frame 2", "has no transform_matrix"]),
    (_break_image, ["frame 1 (./images/0001.png)", "image './images/0001.png' not found"]),
    (_matrix(lambda m: m[:3]), ["frame 1 (./images/0001.png)", "must be 4x4, got shape (3, 4)"]),
    (_matrix(_nan), ["frame 1", "NaN or inf"]),
    (_matrix(_scaled), ["frame 1", "not orthonormal", "rigid camera-to-world"]),
    (_matrix(_reflected), ["frame 1", "reflection"]),
    (_matrix(_last_row), ["frame 1", "last row", "expected [0, 0, 0, 1]"]),
    (_resize_image, ["0002.png is 8x5 but", "0000.png is 8x6", "same size"]),
    (_rgb_image, ["has an alpha channel but", "0002.png has not", "all as RGB"]),
])
def test_each_problem_has_its_message(tmp_path, breaker, needles):
    root, _ = folder(tmp_path)
    breaker(root)
    with pytest.raises(DatasetError) as info:
        read_transforms(root)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_folder_and_config_problems(tmp_path):
    with pytest.raises(DatasetError, match="does not exist; give the folder that holds transforms.json"):
        read_transforms(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="data.root is not set"):
        TransformsDataModule({}, seed=0)
    root, _ = folder(tmp_path, n=1)
    with pytest.raises(ConfigError, match="holds out all 1 frames"):
        TransformsDataModule({"root": root, "holdout_every": 8}, seed=0)
    assert TransformsDataModule({"root": root, "holdout_every": 0}, seed=0).n_val == 0


def test_launch_with_a_bad_folder_prints_one_line(tmp_path, capsys):
    import launch
    out = tmp_path / "out"
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        launch._cli(["--config", TINY_RECON, "--train", f"data.root={tmp_path / 'missing'}", f"exp_root_dir={out}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert info.value.code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: dataset folder ") and "does not exist" in lines[0]
    assert not out.exists() or not any(out.rglob("*.yaml")), "a trial folder was written"
