"""GeNVS sampling (neutral/genvs/sampling.py, mindspore_impl/genvs/sampling.py, scripts/nvs.py,
scripts/genvs_quality.py) on a tiny randomly initialised model exported the way GeNVSSystem exports (its own
export(), configs/tiny-genvs.yaml):

- the conditioning-set rule against hand-written sets and against upstream's expression (sample_ar.py);
- cameras: the default camera is the procedural scenes' convention, the orbit turns it about z, an SRN image
  brings its own pose and intrinsics;
- the export loads strictly, and the sampler's render and denoiser sample equal the training system's;
- autoregressive sampling conditions later views on earlier samples (and view 1 on the input alone);
- nvs.py writes N frames, mp4, gif and the sheet; its user errors are one line with exit code 2;
- the quality script prints the three-row table with finite numbers; SSIM is 1 for identical images.
"""
import json
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest

from neutral.errors import USER_ERROR_EXIT, report
from neutral.genvs.sampling import (DEFAULT_CAMERA, SamplingInputError, conditioning_set, conditioning_sets,
                                    orbit_c2w, parse_camera, read_input_image)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "tiny-genvs.yaml")
NVS = os.path.join(ROOT, "scripts", "nvs.py")


# ----------------------------------------------------------------------------- the conditioning set


def test_conditioning_set_hand_written():
    rng = random.Random(0)
    assert conditioning_set(1, rng) == [0]              # view 1: the input
    assert conditioning_set(2, rng) == [0, 1]           # view 2: the input and view 1
    assert conditioning_set(3, rng) == [0, 1, 2]        # view 3: one random earlier view (1) and the last (2)
    s = conditioning_set(4, rng)
    assert s[0] == 0 and s[-1] == 3 and sorted(s[1:-1]) == [1, 2]
    s = conditioning_set(6, rng)                        # 4 earlier views: all of them
    assert s[0] == 0 and s[-1] == 5 and sorted(s[1:-1]) == [1, 2, 3, 4]
    for n in (7, 8, 20):                                # more: 4 random ones among 1 .. n - 2
        s = conditioning_set(n, rng)
        assert len(s) == 6 and s[0] == 0 and s[-1] == n - 1
        assert len(set(s[1:-1])) == 4 and set(s[1:-1]) <= set(range(1, n - 1))
    assert conditioning_set(9, rng, max_sources=2) == [0, 8]
    assert conditioning_set(9, rng, max_sources=1) == [0]
    s = conditioning_set(9, rng, max_sources=3)
    assert len(s) == 3 and s[0] == 0 and s[-1] == 8
    with pytest.raises(ValueError):
        conditioning_set(0, rng)


def test_conditioning_sets_equal_upstreams_draws():
    """sample_ar.py: random.seed(123), then for q in 1 .. n: [0] + random.sample(range(1, q - 1), min(4, q - 2)) +
    [len(generated_views) - 1] for q > 2, [0, 1] for q == 2, [0] for q == 1 (len(generated_views) == q)."""
    r = random.Random(123)
    upstream = []
    for q in range(1, 31):
        if q > 2:
            upstream.append([0] + r.sample(range(1, q - 1), min(4, q - 2)) + [q - 1])
        elif q == 2:
            upstream.append([0, 1])
        else:
            upstream.append([0])
    assert conditioning_sets(30) == upstream


# ----------------------------------------------------------------------------- cameras and the input image


def test_default_camera_and_orbit():
    from mindspore_impl.mvdream.data.primitives import make_cameras
    from scripts import make_genvs_dataset
    gen = make_genvs_dataset.parse_args([])
    assert DEFAULT_CAMERA.distance == gen.distance and DEFAULT_CAMERA.fovy == gen.fovy
    assert DEFAULT_CAMERA.elevation == sum(gen.elevation_range) / 2
    c2w = parse_camera("20,30,2.5").c2w()
    np.testing.assert_allclose(c2w, make_cameras([20.0], [30.0], [2.5], [40.0], 32)["c2w"][0], atol=1e-12)
    orbit = orbit_c2w(c2w, 4)
    np.testing.assert_allclose(orbit[0], c2w, atol=1e-12)
    for k in range(4):  # the same camera at azimuth 30 + 90 k
        np.testing.assert_allclose(orbit[k], parse_camera(f"20,{30 + 90 * k},2.5").c2w(), atol=1e-9)
    assert parse_camera("1,2,3,50").fovy == 50.0
    for bad in ("1,2", "a,b,c", "95,0,2", "10,0,-1", "10,0,2,0"):
        with pytest.raises(SamplingInputError):
            parse_camera(bad)


def test_read_input_image(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    path = str(tmp_path / "a.png")
    iio.imwrite(path, rgba)
    x = read_input_image(path, 4)  # box-averaged 2 x 2
    np.testing.assert_allclose(x[:2], np.tile([1.0, 0.0, 0.0], (2, 4, 1)), atol=1e-6)
    np.testing.assert_allclose(x[2:], 1.0, atol=1e-6)
    iio.imwrite(str(tmp_path / "g.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(SamplingInputError, match="1 channel"):
        read_input_image(str(tmp_path / "g.png"), 8)
    with pytest.raises(SamplingInputError, match="6x6"):
        read_input_image(path, 6)


def test_shipped_example_is_reproducible():
    from scripts.nvs import EXAMPLE_IMAGE, example_image
    shipped = iio.imread(EXAMPLE_IMAGE).astype(np.float64) / 255.0
    assert shipped.shape == (32, 32, 3)
    assert np.abs(shipped - example_image()).max() <= 0.5 / 255 + 1e-9


# ----------------------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from mindspore_impl.genvs.data import procedural_scenes as S
    root = str(tmp_path_factory.mktemp("genvs_sampling") / "scenes")
    S.write_scenes(root, 3, size=16, seed=0, n_views=(5, 5), supersample=1)
    return root


@pytest.fixture(scope="module")
def system_and_export(tmp_path_factory):
    """GeNVSSystem of configs/tiny-genvs.yaml (random weights, seed 0) and its export folder."""
    from omegaconf import OmegaConf

    from mindspore_impl.genvs.system import GeNVSSystem
    cfg = OmegaConf.to_container(OmegaConf.load(TINY_CONFIG), resolve=False)
    system = GeNVSSystem(cfg["system"], seed=0)
    out = str(tmp_path_factory.mktemp("genvs_export") / "it0-export")
    system.export(out)
    return system, out


def test_export_loads_strictly_and_sampling_equals_the_system(system_and_export, scenes, tmp_path):
    from mindspore_impl.core.checkpoint import CheckpointError, read_params, save_params
    from mindspore_impl.genvs.sampling import NovelViewSampler, load_genvs
    from neutral.genvs.srn_dataset import SRNDataModule
    system, export = system_and_export
    model = load_genvs(export)
    ref = {k: p.asnumpy() for k, p in system.model_parameters().items()}
    got = {p.name: p.asnumpy() for p in model.get_parameters()}
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)

    data = SRNDataModule({"root": scenes, "image_size": 16, "n_source_views": 1, "val_objects": 1})
    batch = data.val_batch(0)
    features, rgb, _ = system.render_view(batch)
    sampler = NovelViewSampler(model, jit=False)
    k = np.array([batch["focal"][0], batch["focal"][0], batch["cx"][0], batch["cy"][0]])
    feat2, rgb2, _ = sampler.render([sampler.encode(batch["src_rgb"][0, 0])], batch["src_c2w"][0], k,
                                    batch["tgt_c2w"][0])
    np.testing.assert_allclose(rgb2, rgb, atol=1e-5)
    sample = system.sample_view(features, 3)  # eval sampler, Generator([eval_seed 0, 3])
    sample2 = sampler.denoise_view(feat2, system.sampler_cfg, np.random.default_rng([0, 3]))
    np.testing.assert_allclose(sample2, sample, atol=1e-5)

    state = read_params(os.path.join(export, "model.ckpt"))
    state.pop("renderer.field.layers.0.weight")
    broken = tmp_path / "broken"
    broken.mkdir()
    save_params(state, str(broken / "model.ckpt"))
    (broken / "config.yaml").write_text(open(os.path.join(export, "config.yaml")).read())
    with pytest.raises(CheckpointError, match="missing keys.*renderer.field.layers.0.weight"):
        load_genvs(str(broken / "model.ckpt"))


def test_autoregressive_views_depend_on_earlier_samples(system_and_export):
    """With a denoiser that reads its conditioning (random output weights), view 1 is the same in both modes (the
    input alone, the same noise) and later views differ (they also see earlier samples)."""
    from mindspore_impl.core.parameters import write_parameter
    from mindspore_impl.genvs.sampling import NovelViewSampler, load_genvs
    from neutral.genvs.edm import EDMSamplerConfig
    model = load_genvs(system_and_export[1])
    proj = model.denoiser.net.proj_out.weight
    write_parameter(proj, np.random.default_rng(0).normal(0, 0.3, proj.shape).astype(np.float32))
    sampler = NovelViewSampler(model)  # compiled: one compile each, then fast (PyNative takes ~3x as long here)
    image = read_input_image(os.path.join(ROOT, "examples", "images", "genvs_scene.png"), 16)
    c2w0 = DEFAULT_CAMERA.c2w()
    k = np.array([20.0, 20.0, 8.0, 8.0])
    targets = orbit_c2w(c2w0, 5)[1:]
    cfg = EDMSamplerConfig(steps=2, solver="euler", sigma_min=0.03, sigma_max=50.0, s_churn=0.8)
    ar = sampler.run(image, c2w0, k, targets, cfg, seed=1, autoregressive=True)
    single = sampler.run(image, c2w0, k, targets, cfg, seed=1, autoregressive=False)
    assert ar.sources == [[0], [0, 1], [0, 1, 2], ar.sources[3]] and sorted(ar.sources[3]) == [0, 1, 2, 3]
    assert single.sources == [[0]] * 4
    np.testing.assert_array_equal(ar.samples[0], single.samples[0])
    assert all(np.abs(ar.samples[t] - single.samples[t]).max() > 1e-3 for t in (1, 2, 3))
    assert np.all(np.isfinite(ar.samples)) and ar.samples.min() >= 0.0 and ar.samples.max() <= 1.0


# ----------------------------------------------------------------------------- scripts/nvs.py


def test_nvs_writes_an_orbit(system_and_export, tmp_path, capsys):
    from scripts import nvs
    out = tmp_path / "o" / "orbit.mp4"
    assert nvs.main(["--ckpt", system_and_export[1], "--out", str(out), "--views", "5", "--steps", "2",
                     "--sampler", "euler"]) == 0
    frames = sorted(os.listdir(tmp_path / "o" / "orbit_frames"))
    assert frames == [f"view_{i:03d}.png" for i in range(5)]
    for name in ("orbit.mp4", "orbit.gif", "orbit_sheet.png", "orbit.json"):
        assert (tmp_path / "o" / name).stat().st_size > 0
    record = json.loads((tmp_path / "o" / "orbit.json").read_text())
    assert record["sources"][:4] == [[0], [0], [0, 1], [0, 1, 2]] and record["sampler"]["s_churn"] == 0.8
    # the example (32 px) is box-averaged to the tiny model's 16 px; frame 0 is the input
    np.testing.assert_array_equal(iio.imread(tmp_path / "o" / "orbit_frames" / "view_000.png"),
                                  np.round(read_input_image(nvs.EXAMPLE_IMAGE, 16) * 255).astype(np.uint8))
    assert iio.imread(tmp_path / "o" / "orbit_sheet.png").shape[0] == 2 * 128 + 2  # 2 rows of 8x upscaled views
    text = capsys.readouterr().out
    assert "sampled 4 views" in text and "orbit.mp4" in text


def test_nvs_missing_checkpoint_is_one_line_exit_2(tmp_path):
    run = subprocess.run([sys.executable, NVS, "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o.mp4")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == USER_ERROR_EXIT, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: GeNVS model not found"), run.stderr
    assert "launch.py --config configs/demo-genvs.yaml --train" in lines[0]


@pytest.mark.parametrize("pixels, match", [
    (np.zeros((16, 16), np.uint8), "1 channel"),
    (np.zeros((16, 16, 2), np.uint8), "2 channel"),
    (np.zeros((12, 12, 3), np.uint8), "12x12"),
    (np.zeros((16, 32, 3), np.uint8), "32x16"),
])
def test_nvs_bad_image_is_one_line_exit_2(system_and_export, tmp_path, capsys, pixels, match):
    from scripts import nvs
    path = str(tmp_path / "bad.png")
    iio.imwrite(path, pixels)
    args = ["--ckpt", system_and_export[1], "--image", path, "--out", str(tmp_path / "o.mp4")]
    assert report(nvs.main, args) == USER_ERROR_EXIT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err
    assert not (tmp_path / "o.mp4").exists()


def test_nvs_takes_the_pose_of_an_srn_image(scenes):
    from neutral.genvs.srn_dataset import read_srn_object
    from scripts.nvs import input_camera
    folder = os.path.join(scenes, sorted(os.listdir(scenes))[0])
    obj = read_srn_object(folder)
    image = os.path.join(folder, "rgb", obj["names"][2] + ".png")
    c2w, k, text = input_camera(SimpleNamespace(camera=None), image, 8)  # an 8 px model: intrinsics halved
    np.testing.assert_allclose(c2w, obj["c2w"][2], atol=1e-6)
    np.testing.assert_allclose(k, np.array([obj["focal"], obj["focal"], obj["cx"], obj["cy"]]) / 2, rtol=1e-6)
    assert "pose" in text


# ----------------------------------------------------------------------------- scripts/genvs_quality.py


def test_ssim_psnr_iou():
    from scripts.genvs_quality import psnr, silhouette_iou, ssim
    rng = np.random.default_rng(0)
    x = np.ones((24, 24, 3))
    x[6:18, 4:14] = rng.uniform(0.0, 0.8, (12, 10, 3))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12) and psnr(x, x) == 100.0
    noisy = np.clip(x + rng.normal(0.0, 0.1, x.shape), 0.0, 1.0)
    assert ssim(noisy, x) < 0.9 and ssim(np.clip(x + rng.normal(0.0, 0.3, x.shape), 0, 1), x) < ssim(noisy, x)
    assert silhouette_iou(x, x) == 1.0
    y = np.ones_like(x)
    y[6:18, 9:14] = 0.2  # half of x's box
    assert silhouette_iou(y, x) == pytest.approx(0.5)


def test_quality_script_prints_the_table(system_and_export, scenes, tmp_path, capsys):
    from scripts import genvs_quality
    out = tmp_path / "q" / "quality.json"
    assert genvs_quality.main(["--ckpt", system_and_export[1], "--data", scenes, "--objects", "2", "--steps", "2",
                               "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == [label for _, label in genvs_quality.METHODS]
    for r in rows:
        values = [float(v) for v in r.strip("|").split("|")[1:]]
        assert all(np.isfinite(values)), r
    record = json.loads(out.read_text())
    assert record["objects"] == sorted(os.listdir(scenes))[-2:] and len(record["sheets"]) == 2
    for key, _ in genvs_quality.METHODS:
        s = record["summary"][key]
        assert s["views"] == 8 and np.isfinite([s["psnr"], s["ssim"], s["iou"]]).all()
        assert 0.0 <= s["iou"] <= 1.0 and -1.0 <= s["ssim"] <= 1.0
