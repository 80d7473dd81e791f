"""GeNVS data: the SRN reader / writer and data module (neutral/genvs/srn_dataset.py), the procedural scenes
(mindspore_impl/genvs/data/procedural_scenes.py) and scripts/make_genvs_dataset.py. A round trip, the camera
convention checked by projection against the renderer, per-step determinism of the batches, and one clear error
per broken file."""
import math
import os
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from mindspore_impl.genvs.data import procedural_scenes as S
from neutral.config import ConfigError
from neutral.errors import USER_ERROR_EXIT, report
from neutral.genvs.srn_dataset import (SRNDataModule, SRNDatasetError, project_to_srn_c2w, read_srn_object,
                                       srn_to_project_c2w, write_srn_object)
from neutral.lift3d.multiview_cameras import look_at_c2w, spherical_to_cartesian

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "make_genvs_dataset.py")
TINY = dict(size=16, n_views=(3, 4), supersample=1)


def cameras(n, distance=2.2):
    elevation = np.tile([10.0, 30.0, -5.0], n)[:n]
    azimuth = 17.0 + np.arange(n) * 360.0 / n
    pos = spherical_to_cartesian(np.radians(elevation), np.radians(azimuth), np.full(n, distance))
    return look_at_c2w(pos, np.zeros_like(pos), np.array([[0.0, 0.0, 1.0]]))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """4 tiny procedural scenes (16x16, 3-4 views)."""
    root = str(tmp_path_factory.mktemp("genvs") / "scenes")
    S.write_scenes(root, 4, seed=0, **TINY)
    return root


# ----------------------------------------------------------------------------- round trip and cameras


def test_round_trip_of_a_procedural_scene(tmp_path):
    s = S.make_scene(3, 5, **TINY)
    folder = write_srn_object(str(tmp_path), "obj", s["rgb"], s["c2w"], s["focal"], alpha=s["alpha"])
    d = read_srn_object(folder)
    assert d["rgb"].shape == s["rgb"].shape and d["height"] == d["width"] == 16
    assert np.abs(d["rgb"] - s["rgb"]).max() <= 1.0 / 255 + 1e-6
    assert np.abs(d["alpha"] - s["alpha"]).max() <= 0.5 / 255 + 1e-6
    assert np.abs(d["c2w"] - s["c2w"]).max() <= 1e-5
    assert d["focal"] == pytest.approx(8.0 / math.tan(math.radians(20.0)), rel=1e-6)
    assert (d["cx"], d["cy"]) == (8.0, 8.0)
    # scene i depends on (seed, i) only, and scenes differ
    again = S.make_scene(3, 5, **TINY)
    assert np.array_equal(again["rgb"], s["rgb"]) and np.array_equal(again["c2w"], s["c2w"])
    assert not np.array_equal(S.make_scene(3, 6, **TINY)["rgb"][:1], s["rgb"][:1])


def test_the_convention_flip_is_its_own_inverse_and_opencv_on_disk(tmp_path):
    c2w = cameras(5)
    assert np.allclose(srn_to_project_c2w(project_to_srn_c2w(c2w)), c2w, atol=1e-12)
    assert np.allclose(srn_to_project_c2w(srn_to_project_c2w(c2w)), c2w, atol=1e-12)
    cv = project_to_srn_c2w(c2w)
    # OpenCV camera: z (third column) looks at the origin, y (second column) points down the world z axis
    assert np.allclose(cv[:, :3, 2], -c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=1, keepdims=True))
    assert np.all(cv[:, 2, 1] < 0)
    folder = write_srn_object(str(tmp_path), "obj", np.ones((5, 4, 4, 3)), c2w, 5.0)
    on_disk = np.loadtxt(os.path.join(folder, "pose", "000000.txt"))
    assert np.allclose(on_disk, cv[0], atol=1e-9)


def test_a_point_projects_where_the_renderer_drew_it(tmp_path):
    """A small sphere off the centre: the projection of its centre through the read camera lands on the centroid
    of its mask, in the project convention and with the raw OpenCV pose file."""
    size, centre = 32, np.array([0.35, -0.25, 0.15])
    scene = [S.Primitive("sphere", "red", 0.2, 0.0, centre)]
    c2w = cameras(3)
    out = S.render_scene(scene, c2w, 40.0, size, supersample=4)
    folder = write_srn_object(str(tmp_path), "ball", out["rgb"], c2w, S.focal_pixels(40.0, size), alpha=out["alpha"])
    d = read_srn_object(folder)
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    for v in range(3):
        a = d["alpha"][v]
        found = np.array([(a * cols).sum(), (a * rows).sum()]) / a.sum()
        m = d["c2w"][v].astype(np.float64)  # OpenGL: looks along -z, y up, rows go down
        x, y, z = m[:3, :3].T @ (centre - m[:3, 3])
        gl = np.array([d["cx"] + d["focal"] * x / -z, d["cy"] - d["focal"] * y / -z])
        cv = np.loadtxt(os.path.join(folder, "pose", f"{v:06d}.txt"))  # OpenCV: looks along +z, y down
        x, y, z = cv[:3, :3].T @ (centre - cv[:3, 3])
        opencv = np.array([d["cx"] + d["focal"] * x / z, d["cy"] + d["focal"] * y / z])
        assert np.abs(gl - found).max() < 0.2, (v, gl, found)  # a half-pixel slip fails
        assert np.abs(opencv - found).max() < 0.2, (v, opencv, found)
        assert np.abs(found - size / 2).max() > 2.0  # really off-centre


def test_intrinsics_forms_and_their_image_sizes(tmp_path):
    f = S.focal_pixels(40.0, 8)
    folder = write_srn_object(str(tmp_path), "obj", np.ones((2, 8, 8, 3)), cameras(2), f)
    # SRN's intrinsics.txt for 4x larger renders is rescaled to the PNGs' size
    with open(os.path.join(folder, "intrinsics.txt"), "w") as fh:
        fh.write(f"{4 * f} 16 16 0.\n0. 0. 0.\n1.\n32 32\n")
    assert read_srn_object(folder)["focal"] == pytest.approx(f)
    # without intrinsics.txt the per-view K is read; SRN's K is for 512-pixel renders (cx = 256): rescaled too
    os.remove(os.path.join(folder, "intrinsics.txt"))
    assert read_srn_object(folder)["focal"] == pytest.approx(f)
    for view in ("000000", "000001"):
        with open(os.path.join(folder, "intrinsics", view + ".txt"), "w") as fh:
            fh.write(f"{64 * f} 0 256\n0 {64 * f} 256\n0 0 1\n")
    d = read_srn_object(folder)
    assert (d["focal"], d["cx"], d["cy"]) == (pytest.approx(f), pytest.approx(4.0), pytest.approx(4.0))


def test_rgb_images_on_white_give_masks_from_the_background(tmp_path):
    rgb = np.ones((3, 8, 8, 3))
    rgb[:, 2:5, 3:6] = [0.2, 0.5, 0.9]
    root = str(tmp_path / "root")
    write_srn_object(root, "a", rgb, cameras(3), 6.0)
    write_srn_object(root, "b", rgb, cameras(3), 6.0)
    assert read_srn_object(os.path.join(root, "a"))["alpha"] is None
    dm = SRNDataModule({"root": root, "val_objects": 1}, seed=0)
    b = dm.sample(0)
    assert np.array_equal(b["tgt_mask"][0, ..., 0], (rgb[0].min(-1) < 1).astype(np.float32))
    assert "tgt_mask" not in SRNDataModule({"root": root, "mask_from_white": False}, seed=0).sample(0)


# ----------------------------------------------------------------------------- the data module


def test_batches_have_the_shapes_and_are_a_function_of_the_step(scenes):
    dm = SRNDataModule({"root": scenes, "batch_size": 3, "n_source_views": 2, "val_objects": 1}, seed=7)
    b = dm.sample(5)
    shapes = {k: v.shape for k, v in b.items()}
    assert shapes == {"src_rgb": (3, 2, 16, 16, 3), "src_c2w": (3, 2, 4, 4), "tgt_rgb": (3, 16, 16, 3),
                      "tgt_c2w": (3, 4, 4), "focal": (3,), "cx": (3,), "cy": (3,), "src_valid": (3, 2),
                      "src_mask": (3, 2, 16, 16, 1), "tgt_mask": (3, 16, 16, 1)}
    assert all(v.dtype == np.float32 for v in b.values())
    assert 0.0 <= b["src_rgb"].min() and b["src_rgb"].max() <= 1.0 and np.all(b["src_valid"] == 1)
    assert b["focal"] == pytest.approx(8.0 / math.tan(math.radians(20.0)))
    # the same step gives the same batch, also from a fresh module (exact resume); another step another one
    again = SRNDataModule({"root": scenes, "batch_size": 3, "n_source_views": 2, "val_objects": 1}, seed=7)
    for key in b:
        assert np.array_equal(again.sample(5)[key], b[key]), key
    assert not np.array_equal(dm.sample(6)["tgt_c2w"], b["tgt_c2w"])
    # sources and target are distinct views, and the held-out object never appears in training
    held = dm.objects[dm.val_ids[0]].c2w
    for step in range(8):
        s = dm.sample(step)
        for i in range(3):
            cams = np.concatenate([s["src_c2w"][i], s["tgt_c2w"][i][None]])
            assert len({c.tobytes() for c in cams}) == 3
            assert not np.any(np.all(np.abs(cams[:, None] - held[None]) < 1e-6, axis=(2, 3)))
    # reading on demand gives the same batch as the preloaded images
    lazy = SRNDataModule({"root": scenes, "batch_size": 3, "n_source_views": 2, "val_objects": 1,
                          "preload": False}, seed=7)
    assert np.array_equal(lazy.sample(5)["src_rgb"], b["src_rgb"])


def test_variable_sources_downscale_and_eval_batches(scenes):
    dm = SRNDataModule({"root": scenes, "batch_size": 2, "n_source_views": 2, "min_source_views": 1,
                        "image_size": 8, "val_objects": 2}, seed=0)
    counts = {int(dm.sample(step)["src_valid"][0].sum()) for step in range(12)}
    assert counts == {1, 2}
    b = dm.sample(0)
    assert b["src_rgb"].shape == (2, 2, 8, 8, 3)
    assert b["focal"] == pytest.approx(4.0 / math.tan(math.radians(20.0)))
    assert np.all(b["cx"] == 4.0)
    assert dm.n_val == 2
    v = dm.val_batch(1)
    assert v["src_rgb"].shape == (1, 2, 8, 8, 3) and v["object"] == "scene_00003"
    n = len(dm.objects[-1].names)
    assert dm.n_test == n and dm.test_batch(n - 1)["tgt_rgb"].shape == (1, 8, 8, 3)
    with pytest.raises(IndexError):
        dm.val_batch(2)


@pytest.mark.parametrize("cfg, match", [
    ({}, "data.root is not set"),
    ({"val_objects": 4}, "holds out all 4 objects"),
    ({"n_source_views": 1, "min_source_views": 2}, "exceeds data.n_source_views"),
    ({"image_size": 5}, "integer factor"),
    ({"bogus": 1}, "Allowed keys"),
])
def test_config_errors(scenes, cfg, match):
    if "root" not in cfg and cfg:
        cfg = {"root": scenes, **cfg}
    with pytest.raises(ConfigError, match=match):
        SRNDataModule(cfg, seed=0)


# ----------------------------------------------------------------------------- one error per broken file


def _obj(tmp_path):
    root = str(tmp_path / "root")
    rgb = np.random.default_rng(0).random((3, 8, 8, 3))
    return root, write_srn_object(root, "car", rgb, cameras(3), 6.0, alpha=np.full((3, 8, 8), 0.5))


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _break_pose(scale):
    def fn(o):
        m = np.loadtxt(os.path.join(o, "pose", "000001.txt"))
        m[:3, :3] *= scale
        np.savetxt(os.path.join(o, "pose", "000001.txt"), m)
        return "pose/000001.txt"
    return fn


BROKEN = {
    "missing root": lambda o: (shutil.rmtree(os.path.dirname(o)), f"{os.path.dirname(o)} does not exist")[1],
    "no objects": lambda o: ([shutil.rmtree(os.path.join(os.path.dirname(o), n)) for n in ("bus", "car")],
                             f"{os.path.dirname(o)} has no object folders")[1],
    "no rgb folder": lambda o: (shutil.rmtree(os.path.join(o, "rgb")), "car has no rgb/")[1],
    "no pose folder": lambda o: (shutil.rmtree(os.path.join(o, "pose")), "car has no pose/")[1],
    "no png": lambda o: ([os.remove(os.path.join(o, "rgb", f)) for f in os.listdir(os.path.join(o, "rgb"))],
                         "car/rgb has no .png")[1],
    "view without pose": lambda o: (os.remove(os.path.join(o, "pose", "000002.txt")), "pose/000002.txt")[1],
    "unreadable png": lambda o: (_write(os.path.join(o, "rgb", "000001.png"), "not a png"), "rgb/000001.png")[1],
    "gray png": lambda o: (iio.imwrite(os.path.join(o, "rgb", "000001.png"), np.zeros((8, 8), np.uint8)),
                           "rgb/000001.png")[1],
    "other size": lambda o: (iio.imwrite(os.path.join(o, "rgb", "000002.png"), np.zeros((6, 8, 4), np.uint8)),
                             "rgb/000002.png")[1],
    "rgb among rgba": lambda o: (iio.imwrite(os.path.join(o, "rgb", "000002.png"), np.zeros((8, 8, 3), np.uint8)),
                                 "rgb/000002.png")[1],
    "pose of 15 numbers": lambda o: (_write(os.path.join(o, "pose", "000001.txt"), " ".join(["1"] * 15)),
                                     "pose/000001.txt")[1],
    "pose with text": lambda o: (_write(os.path.join(o, "pose", "000001.txt"), "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 x"),
                                 "pose/000001.txt")[1],
    "pose with nan": lambda o: (_write(os.path.join(o, "pose", "000001.txt"), "nan " + " ".join(["0"] * 15)),
                                "pose/000001.txt")[1],
    "pose not rigid": _break_pose(1.5),
    "pose reflected": _break_pose(-1.0),
    "no intrinsics": lambda o: (os.remove(os.path.join(o, "intrinsics.txt")),
                                shutil.rmtree(os.path.join(o, "intrinsics")), "car has neither")[2],
    "intrinsics first line": lambda o: (_write(os.path.join(o, "intrinsics.txt"), "6 4\n"), "intrinsics.txt")[1],
    "intrinsics size line": lambda o: (_write(os.path.join(o, "intrinsics.txt"), "6 4 4 0\n0 0 0\n1\n8\n"),
                                       "intrinsics.txt")[1],
    "intrinsics empty": lambda o: (_write(os.path.join(o, "intrinsics.txt"), ""), "intrinsics.txt")[1],
    "K of 8 numbers": lambda o: (os.remove(os.path.join(o, "intrinsics.txt")),
                                 _write(os.path.join(o, "intrinsics", "000001.txt"), "6 0 4 0 6 4 0 0"),
                                 "intrinsics/000001.txt")[2],
    "K missing": lambda o: (os.remove(os.path.join(o, "intrinsics.txt")),
                            os.remove(os.path.join(o, "intrinsics", "000002.txt")), "intrinsics/000002.txt")[2],
    "K of another view": lambda o: (os.remove(os.path.join(o, "intrinsics.txt")),
                                    _write(os.path.join(o, "intrinsics", "000001.txt"), "7 0 4\n0 7 4\n0 0 1"),
                                    "intrinsics/000001.txt")[2],
    "non-square pixels": lambda o: (os.remove(os.path.join(o, "intrinsics.txt")),
                                    [_write(os.path.join(o, "intrinsics", f"{v:06d}.txt"), "6 0 4\n0 7 4\n0 0 1")
                                     for v in range(3)], "car: fx = 6 but fy = 7")[2],
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_file_gives_one_clear_error(tmp_path, case):
    root, folder = _obj(tmp_path)
    write_srn_object(root, "bus", np.ones((3, 8, 8, 3)), cameras(3), 6.0)  # a good second object
    where = BROKEN[case](folder)
    with pytest.raises(SRNDatasetError) as info:
        SRNDataModule({"root": root, "val_objects": 0}, seed=0)
    msg = str(info.value)
    assert where in msg and "\n" not in msg, msg


def test_data_module_errors_between_objects(tmp_path):
    root = str(tmp_path / "root")
    write_srn_object(root, "a", np.ones((3, 8, 8, 3)), cameras(3), 6.0)
    write_srn_object(root, "b", np.ones((3, 6, 6, 3)), cameras(3), 6.0)
    with pytest.raises(SRNDatasetError, match=r"b/rgb/000000.png is 6x6 .*one image size"):
        SRNDataModule({"root": root}, seed=0)
    shutil.rmtree(os.path.join(root, "b"))
    with pytest.raises(SRNDatasetError, match=r"a has 3 views; data.n_source_views = 3 needs at least 4"):
        SRNDataModule({"root": root, "val_objects": 0, "n_source_views": 3}, seed=0)


def test_writing_replaces_an_object_whole(tmp_path):
    root = str(tmp_path / "root")
    write_srn_object(root, "a", np.zeros((4, 8, 8, 3)), cameras(4), 6.0)
    write_srn_object(root, "a", np.ones((2, 8, 8, 3)), cameras(2), 5.0)
    d = read_srn_object(os.path.join(root, "a"))
    assert len(d["names"]) == 2 and d["focal"] == 5.0 and np.all(d["rgb"] == 1.0)
    assert sorted(os.listdir(root)) == ["a"]  # no temporary folders left behind
    bad = cameras(1)
    bad[:, :3, :3] *= 2.0
    with pytest.raises(ValueError, match="not orthonormal"):
        write_srn_object(root, "b", np.ones((1, 8, 8, 3)), bad, 5.0)
    assert sorted(os.listdir(root)) == ["a"]


# ----------------------------------------------------------------------------- the script


def test_script_writes_a_folder_the_data_module_loads(tmp_path):
    out = str(tmp_path / "made")
    run = subprocess.run([sys.executable, SCRIPT, "--out", out, "--num_scenes", "3", "--size", "8", "--views", "3",
                          "4", "--elevation_range", "0", "20", "--supersample", "1", "--seed", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith(f"wrote {out}: 3 scenes x 3-4 views at 8x8")
    dm = SRNDataModule({"root": out, "val_objects": 1}, seed=0)
    assert [os.path.basename(o.folder) for o in dm.objects] == ["scene_00000", "scene_00001", "scene_00002"]
    assert dm.sample(0)["src_rgb"].shape == (4, 1, 8, 8, 3)
    # a second run into the same folder is refused; a bad range names the setting
    from scripts.make_genvs_dataset import main
    assert report(main, ["--out", out, "--num_scenes", "1"]) == USER_ERROR_EXIT
    assert report(main, ["--out", str(tmp_path / "new"), "--views", "5", "4"]) == USER_ERROR_EXIT
    assert not os.path.exists(tmp_path / "new")


def test_launch_finds_the_data_module():
    import launch
    from neutral import registry
    launch.import_modules()
    assert registry.find("srn-datamodule") is SRNDataModule
