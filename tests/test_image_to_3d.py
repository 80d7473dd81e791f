"""Image to 3D (zero123-system on single-image-datamodule): the data module's cameras and image handling, one-line
errors for bad input before any work, the new losses against their torch twins, configs/zero123.yaml parsing, and
an end-to-end tiny run through launch.py (train with validation and checkpoints, test video, mesh export) with a tiny
random Zero-1-to-3 checkpoint written in the original layout and converted, then a run resumed from the middle
checkpoint that ends in exactly the same state, and no frozen-model key in any checkpoint."""
import json
import os

import imageio.v2 as imageio2
import imageio.v3 as iio
import mindspore as ms
import numpy as np
import pytest

import launch
from mindspore_impl.core.train_state import load_training_state
from mindspore_impl.lift3d import losses as ml
from neutral import registry
from neutral.config import ConfigError, parse_structured
from neutral.errors import UserError
from neutral.lift3d.single_image_datamodule import (RandomCameraConfig, SingleImageDataModule, SingleImageError,
                                                    near_view_rays, random_unit_offsets, read_reference_image)
from neutral.zero123.camera import relative_camera_T
from tests.parity import assert_parity, to_torch
from tests.test_zero123_guidance import tiny_zero123_checkpoint, write_disc_rgba
from torch_ref.lift3d import losses as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny-image-to-3d.yaml")
ZERO123 = os.path.join(ROOT, "configs", "zero123.yaml")
N_TEST = 3


def _dm(image, **kw):
    cfg = dict(image_path=image, height=16, width=16, default_elevation_deg=5.0, default_azimuth_deg=0.0,
               default_camera_distance=3.8, default_fovy_deg=20.0,
               random_camera=dict(height=8, width=8, batch_size=3, eval_height=12, eval_width=12,
                                  camera_distance_range=[3.8, 3.8], fovy_range=[20.0, 20.0], elevation_range=[-10, 80],
                                  eval_elevation_deg=5.0, eval_camera_distance=3.8, eval_fovy_deg=20.0,
                                  n_val_views=2, n_test_views=4))
    cfg.update(kw)
    return SingleImageDataModule(cfg, seed=0)


# ----------------------------------------------------------------------------- data


def test_reference_view_and_random_views(tmp_path):
    image = write_disc_rgba(str(tmp_path / "disc_rgba.png"))
    dm = _dm(image, rays_noise_scale=0.0)
    b = dm.sample(1)
    el = np.radians(5.0)
    position = 3.8 * np.array([np.cos(el), 0.0, np.sin(el)])
    np.testing.assert_allclose(b["camera_positions"][0], position, atol=1e-5)
    np.testing.assert_allclose(b["rays_o"][0, 0, 0], position, atol=1e-5)
    np.testing.assert_allclose(b["light_positions"][0], position, atol=1e-5)
    centre = b["rays_d"][0, 7:9, 7:9].reshape(-1, 3).mean(0)  # the 4 rays around the image centre
    np.testing.assert_allclose(centre / np.linalg.norm(centre), -position / 3.8, atol=1e-4)
    assert b["rgb"].shape == (1, 16, 16, 3) and b["mask"].shape == (1, 16, 16, 1)
    assert set(np.unique(b["mask"])) == {0.0, 1.0}
    assert abs(b["mask"].mean() - np.pi * 0.3 ** 2) < 0.05  # the disc covers ~28% of the image
    np.testing.assert_allclose(b["rgb"][0, 8, 8], np.array([200, 60, 40]) / 255, atol=1e-6)
    assert b["ref_depth"] is None and b["ref_normal"] is None
    r = b["random_camera"]
    assert r["rays_o"].shape == (3, 8, 8, 3) and r["elevation"].shape == (3,)
    assert np.all(r["elevation"] >= -10 - 1e-4) and np.all(r["elevation"] <= 80 + 1e-4)
    np.testing.assert_allclose(r["camera_distances"], 3.8, atol=1e-5)
    # T of the reference camera relative to itself is the identity condition
    T = relative_camera_T(b["elevation"], b["azimuth"], b["camera_distances"], 5.0, 0.0, 3.8)
    np.testing.assert_allclose(T, [[0.0, 0.0, 1.0, 0.0]], atol=1e-6)
    # progressive_until 0 (threestudio zero123.yaml): step 0 draws at the eval elevation and azimuth 0
    r0 = _dm(image).sample(0)["random_camera"]
    np.testing.assert_allclose(r0["elevation"], 5.0, atol=1e-4)
    np.testing.assert_allclose(r0["azimuth"], 0.0, atol=1e-4)
    # eval: view 0 is the reference with its image, then the orbit
    v0, v1 = dm.val_batch(0), dm.val_batch(1)
    assert v0["rgb"].shape == (1, 12, 12, 3) and v1.get("rgb") is None and v1["rays_o"].shape == (1, 12, 12, 3)
    assert (dm.n_val, dm.n_test) == (3, 4)


def test_stages_resume_and_colour_key(tmp_path):
    image = write_disc_rgba(str(tmp_path / "disc_rgba.png"))
    dm = _dm(image, height=[8, 16], width=[8, 16], resolution_milestones=[2])
    assert dm.sample(1)["rgb"].shape == (1, 8, 8, 3) and dm.sample(2)["rgb"].shape == (1, 16, 16, 3)
    state = dm.get_state()
    a = dm.sample(5)
    other = _dm(image, height=[8, 16], width=[8, 16], resolution_milestones=[2])
    other.set_state(state)
    b = other.sample(5)  # a rebuilt module (a resumed run): same reference rays (noise from seed and stage), same views
    np.testing.assert_array_equal(a["rays_d"], b["rays_d"])
    np.testing.assert_array_equal(a["random_camera"]["rays_d"], b["random_camera"]["rays_d"])
    assert not np.allclose(a["rays_o"][0, 0, 0], _dm(image, rays_noise_scale=0.0).sample(5)["rays_o"][0, 0, 0])
    # the same object as RGB on white, keyed: the same colours and mask
    rgba = iio.imread(image).astype(np.float64) / 255
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    keyed = str(tmp_path / "disc.png")
    iio.imwrite(keyed, np.round(rgb * 255).astype(np.uint8))
    k_rgb, k_alpha = read_reference_image(keyed, [1.0, 1.0, 1.0])
    a_rgb, a_alpha = read_reference_image(image)
    np.testing.assert_array_equal(k_alpha, a_alpha)
    np.testing.assert_allclose(k_rgb * k_alpha, a_rgb * a_alpha, atol=1e-6)
    # a depth map beside the image
    iio.imwrite(str(tmp_path / "disc_depth.png"), np.full((40, 40), 128, np.uint8))
    d = _dm(image, requires_depth=True).sample(0)["ref_depth"]
    assert d.shape == (1, 16, 16, 1) and np.allclose(d, 128 / 255)


def test_near_view_rays():
    rng = np.random.default_rng(0)
    positions = np.array([[3.8, 0.0, 0.0], [0.0, 2.0, 2.0]])
    offsets = random_unit_offsets(rng, 2, 0.05)
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=-1), 0.05)
    rays_o, rays_d = near_view_rays(positions, np.array([20.0, 20.0]), 4, 4, offsets)
    np.testing.assert_allclose(rays_o[:, 0, 0], positions + offsets, atol=1e-12)
    centre = rays_d[:, 1:3, 1:3].reshape(2, -1, 3).mean(1)
    eyes = positions + offsets
    cos = (centre / np.linalg.norm(centre, axis=-1, keepdims=True) * -eyes / np.linalg.norm(eyes, axis=-1,
                                                                                               keepdims=True)).sum(-1)
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)  # still looking at the origin


def _bad_inputs(tmp_path):
    """(name, image path, data overrides, text the error must contain besides the path)."""
    def write(name, array):
        path = str(tmp_path / name)
        iio.imwrite(path, array)
        return path
    disc = iio.imread(write_disc_rgba(str(tmp_path / "ok_rgba.png")))
    empty = disc.copy()
    empty[..., 3] = 0
    white = np.full((20, 20, 3), 255, np.uint8)
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 255
    os.makedirs(tmp_path / "folder_rgba.png", exist_ok=True)
    return [
        ("missing", str(tmp_path / "missing_rgba.png"), {}, "does not exist"),
        ("folder", str(tmp_path / "folder_rgba.png"), {}, "is a folder"),
        ("gray", write("gray.png", disc[..., 0]), {}, "1 channel"),
        ("gray+alpha", write("ga.png", disc[..., [0, 3]]), {}, "2 channel"),
        ("rgb without key", write("rgb.png", disc[..., :3]), {}, "background_color"),
        ("empty alpha", write("empty_rgba.png", empty), {}, "mask is empty"),
        ("key matches every pixel", write("white.png", white), {"background_color": [1.0, 1.0, 1.0]},
         "mask is empty"),
        ("key matches no pixel", write("red.png", red), {"background_color": [0.0, 0.0, 1.0]},
         "no pixel matches"),
        ("missing depth", write("d_rgba.png", disc), {"requires_depth": True}, "d_depth.png"),
    ]


def test_bad_input_one_line_errors(tmp_path):
    for name, path, extra, text in _bad_inputs(tmp_path):
        with pytest.raises(SingleImageError) as exc:
            _dm(path, **extra)
        msg = str(exc.value)
        print(f"{name}: {msg}")
        assert "\n" not in msg and text in msg and (path in msg or name == "missing depth"), name
    with pytest.raises(SingleImageError, match="data.image_path is empty"):
        _dm("")
    with pytest.raises(ConfigError, match="background_color"):
        _dm(str(tmp_path / "ok_rgba.png"), background_color=[1.0, 2.0, 0.0])


def test_launch_reports_bad_image_before_any_work(tmp_path):
    missing = str(tmp_path / "missing_rgba.png")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=missing):
        launch.main(["--config", TINY, "--train", f"exp_root_dir={out}", f"data.image_path={missing}",
                     f"system.guidance.pretrained_model_name_or_path={tmp_path / 'none.ckpt'}"])
    assert not os.path.exists(out / "tiny-image-to-3d")  # no trial folder


# ----------------------------------------------------------------------------- losses


def test_losses_match_torch():
    """The image-conditioned losses of lift3d/losses.py against their twins (upstream's boolean indexing, lstsq and
    Pearson there; static masked means here): values and input gradients."""
    rng = np.random.default_rng(0)
    b, h, w = 2, 8, 8
    depth = rng.uniform(2.5, 4.0, (b, h, w, 1)).astype(np.float32)
    ref_depth = (0.3 * depth + rng.normal(0, 0.05, depth.shape)).astype(np.float32)
    opacity = rng.uniform(0.01, 0.99, (b, h, w, 1)).astype(np.float32)
    mask = (rng.random((1, h, w, 1)) > 0.4).astype(np.float32)
    normal = rng.uniform(0, 1, (b, h, w, 3)).astype(np.float32)
    ref_normal = rng.uniform(0, 1, (1, h, w, 3)).astype(np.float32)
    rgb, rgb2 = rng.uniform(0, 1, (2, b, h, w, 3)).astype(np.float32)
    cases = [
        ("mask_mse", lambda x: ml.mask_mse_loss(x, ms.Tensor(mask)), lambda x: tl.mask_mse_loss(x, to_torch(mask)),
         opacity[:1]),
        ("depth_smooth", ml.depth_smooth_loss, tl.depth_smooth_loss, depth),
        ("composite_depth + depth_smooth", lambda x: ml.depth_smooth_loss(ml.composite_depth(x, ms.Tensor(opacity))),
         lambda x: tl.depth_smooth_loss(tl.composite_depth(x, to_torch(opacity))), depth),
        ("near_view", lambda x: ml.near_view_loss(x, ms.Tensor(rgb2), ms.Tensor(depth), ms.Tensor(depth[::-1].copy())),
         lambda x: tl.near_view_loss(x, to_torch(rgb2), to_torch(depth), to_torch(depth[::-1].copy())), rgb),
        ("normal_smooth", ml.normal_smooth_loss, tl.normal_smooth_loss, normal),
        ("depth_alignment", lambda x: ml.depth_alignment_loss(x, ms.Tensor(ref_depth[:1]), ms.Tensor(mask)),
         lambda x: tl.depth_alignment_loss(x, to_torch(ref_depth[:1]), to_torch(mask)), depth[:1]),
        ("depth_correlation", lambda x: ml.depth_correlation_loss(x, ms.Tensor(ref_depth[:1]), ms.Tensor(mask)),
         lambda x: tl.depth_correlation_loss(x, to_torch(ref_depth[:1]), to_torch(mask)), depth[:1]),
        ("normal_consistency", lambda x: ml.normal_consistency_loss(x, ms.Tensor(ref_normal), ms.Tensor(mask)),
         lambda x: tl.normal_consistency_loss(x, to_torch(ref_normal), to_torch(mask)), normal[:1]),
    ]
    for name, ms_fn, torch_fn, x in cases:
        value, grad = ms.value_and_grad(ms_fn)(ms.Tensor(x))
        xt = to_torch(x, requires_grad=True)
        ref = torch_fn(xt)
        ref.backward()
        assert float(ref.detach()) > 0, name
        assert_parity(value, ref.detach(), f"{name} loss", rel=1e-5)
        assert_parity(grad, xt.grad, f"{name} d/dx", rel=1e-5)


def test_substeps():
    """threestudio zero123.py: "accumulate" runs both substeps every step; "alternate" only the reference before
    ref_only_steps, then the reference at steps divisible by n_ref and the guidance otherwise."""
    from mindspore_impl.lift3d.systems.zero123_system import FreqConfig, substeps
    assert all(substeps(FreqConfig(), s) == (True, True) for s in range(5))
    alt = FreqConfig(ref_or_zero123="alternate", ref_only_steps=3, n_ref=2)
    assert [substeps(alt, s)[0] for s in range(8)] == [True, True, True, False, True, False, True, False]
    assert all(substeps(alt, s)[1] != substeps(alt, s)[0] for s in range(8))


# ----------------------------------------------------------------------------- configs


def test_zero123_config_parses():
    """configs/zero123.yaml (threestudio's values): every section parses with its module's typed config, every loss
    key is a term of the system, and launching it without the image stops at the image with one line."""
    from mindspore_impl.lift3d.systems.zero123_system import LOSS_TERMS, FreqConfig, Zero123System
    cfg = launch.load_config(ZERO123, [])
    system_cls, data_cls = launch.check_config(cfg, "train")
    assert system_cls is Zero123System and data_cls is SingleImageDataModule
    data = launch._section(cfg, "data")
    rc = parse_structured(RandomCameraConfig, data["random_camera"])
    assert rc.batch_size == [12, 4, 2] and rc.eval_elevation_deg == 5.0
    system = launch._section(cfg, "system")
    for key in ("geometry", "material", "background", "renderer", "guidance"):
        parse_structured(registry.find(system[f"{key}_type"]).Config, system.get(key, {}), f"system.{key}")
    assert set(system["loss"]) <= {f"lambda_{t}" for t in LOSS_TERMS}
    parse_structured(FreqConfig, system["freq"])
    g = system["guidance"]
    assert (g["cond_image_path"], g["cond_camera_distance"], g["min_step_percent"]) == \
        ("./load/images/hamburger_rgba.png", 3.8, [0, 0.4, 0.2, 200])
    assert system["loss"]["lambda_rgb"] == 500.0 and system["mask_loss_type"] == "mse"
    with pytest.raises(SingleImageError, match="hamburger_rgba.png does not exist"):
        launch.main(["--config", ZERO123, "--train"])


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-to-3d")
    _, _, dst = tiny_zero123_checkpoint(str(root))
    image = write_disc_rgba(str(root / "disc_rgba.png"))
    return dst, image, root


def _args(tiny, *extra):
    dst, image, root = tiny
    return ["--config", TINY, "--train", f"exp_root_dir={root / 'out'}", f"data.image_path={image}",
            f"system.guidance.pretrained_model_name_or_path={dst}", f"data.random_camera.n_test_views={N_TEST}",
            "data.random_camera.batch_size=1", "system.renderer.num_samples_per_ray=8", "trainer.max_steps=2",
            "trainer.val_check_interval=1", "checkpoint.every_n_train_steps=1", *extra]


def _metrics(trial_root):
    with open(os.path.join(trial_root, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r for r in rows if "loss" in r}, {r["step"]: r for r in rows if "ref_psnr" in r}


def test_train_test_export_resume(tiny):
    full = launch.main(_args(tiny, "name=full"))
    trial = full.trial.root
    m, val = _metrics(trial)
    print({s: (r["loss"], r["loss_sds"], r["t"]) for s, r in m.items()}, val)
    assert sorted(m) == [1, 2] and sorted(val) == [1, 2]
    for r in m.values():
        assert np.isfinite(r["loss"]) and r["loss"] > 0
        assert {"loss_sds", "loss_rgb", "loss_mask", "loss_near_view", "loss_input_depth_smooth",
                "loss_target_depth_smooth", "train_ref_psnr"} <= set(r)
    # annealed timestep range [0, 0.4, 0.2, 4] / [0, 0.85, 0.5, 4]: [400, 850] at step 0, [350, 762] at step 1
    assert (m[1]["min_step"], m[1]["max_step"]) == (400, 850) and 400 <= m[1]["t"] <= 850
    assert (m[2]["min_step"], m[2]["max_step"]) == (350, 762)
    assert m[1]["lambda_target_depth_smooth"] == 0.0  # 3drec: from half the steps on

    save = os.path.join(trial, "save")
    assert iio.imread(os.path.join(save, "it2-0.png")).shape == (16, 3 * 16, 3)  # render | input | opacity
    reader = imageio2.get_reader(os.path.join(save, "it2-test.mp4"))
    n_frames, frame = reader.count_frames(), reader.get_data(0)
    reader.close()
    assert n_frames == N_TEST and np.ptp(frame) > 0
    assert os.path.getsize(os.path.join(save, "it2-export", "model.obj")) > 0

    # checkpoints: the 3D model and optimizer, never the frozen Zero123 or the cached reference embeddings
    arrays, meta = load_training_state(os.path.join(trial, "ckpts", "step000001.ckpt"))
    assert "model.geometry.encoding.encoding.encoding.params" in arrays and meta["global_step"] == 1
    frozen = ("guidance", "diffusion_model", "first_stage", "cond_stage", "cc_projection", "clip_embedding",
              "ref_latent")
    assert not [k for k in arrays if any(f in k for f in frozen)]

    resumed = launch.main(_args(tiny, "name=resumed", f"resume={os.path.join(trial, 'ckpts', 'step000001.ckpt')}"))
    r, _ = _metrics(resumed.trial.root)
    print(f"step 2 loss: uninterrupted {m[2]['loss']!r}, resumed {r[2]['loss']!r}")
    assert sorted(r) == [2] and r[2]["loss"] == m[2]["loss"] and r[2]["t"] == m[2]["t"]
    a_full, meta_full = full.state()
    a_res, meta_res = resumed.state()
    assert sorted(a_full) == sorted(a_res)
    diff = max(float(np.abs(a_full[k].astype(np.float64) - a_res[k]).max()) for k in a_full)
    assert diff == 0.0 and meta_full["system"]["rng"] == meta_res["system"]["rng"]
    assert meta_full["data"] == meta_res["data"]


def test_quality_check_scores_an_image_run(tiny, tmp_path):
    """scripts/quality_check.py --images trains on each image with the image-to-3D config and scores the object its
    file name names (here 1 step of the tiny config: the row is complete, not good)."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import quality_check as Q
    dst = tiny[0]
    image = os.path.join(ROOT, "examples", "images", "red_cube_rgba.png")
    out = tmp_path / "q"
    rows = Q.main(["--images", image, "--config", TINY, "--ckpt", dst, "--steps", "1", "--out", str(out), "--mode",
                   "pynative", "--set",
                   "data.random_camera.batch_size=1", "system.renderer.num_samples_per_ray=8",
                   "data.random_camera.n_test_views=1", "checkpoint.every_n_train_steps=0"])
    print(rows)
    (row,) = rows
    assert row["prompt"] == "a red cube" and row["image"] == image and "error" not in row
    assert 0.0 <= row["vol_iou"] <= 1.0 and 0.0 <= row["sil_iou"] <= 1.0 and len(row["sil_iou_views"]) == 4
    assert np.isfinite(row["colour_err"]) and row["nearest"] is not None
    with open(out / "quality.csv") as f:
        assert f.readline().startswith("prompt,vol_iou,sil_iou") and "a red cube" in f.readline()
