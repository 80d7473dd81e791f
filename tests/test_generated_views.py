"""Generate, then reconstruct (configs/demo-views2nerf.yaml): the camera spiral, the matte, and the whole
command on the shipped demo model at a small size: views sampled with the sliding window into a
transforms.json folder (cached, copied into the trial), then the field fitted to them."""
import json
import os

import numpy as np
import pytest

import launch
from mindspore_impl.mvdream.cameras import normalize_camera
from mindspore_impl.mvdream.data.primitives import make_cameras
from neutral.lift3d.generated_views import background_matte, spiral_angles
from neutral.lift3d.transforms_dataset import read_transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo-views2nerf.yaml")


def test_spiral_angles():
    elevation, azimuth = spiral_angles(8, [0, 30], turns=2)
    assert np.allclose(azimuth, [0, 90, 180, 270, 0, 90, 180, 270])  # neighbours 360 * turns / N apart
    assert np.allclose(elevation, np.linspace(0, 30, 8)) and elevation[0] == 0 and elevation[-1] == 30
    assert spiral_angles(1, [10, 30], 3)[0].tolist() == [10.0]
    with pytest.raises(ValueError):
        spiral_angles(0, [0, 30], 1)


def test_background_matte():
    """A red square on a noisy grey-cyan background (what the demo model samples): alpha 1 on the square,
    0 on the background, whatever the background colour."""
    rng = np.random.default_rng(0)
    bg = np.array([0.5, 0.67, 0.6])
    img = np.clip(bg + 0.08 * rng.standard_normal((2, 32, 32, 3)), 0, 1)
    img[:, 10:22, 8:20] = [0.9, 0.05, 0.05]
    img[1] = np.clip(img[1] - bg + [0.95, 0.95, 0.95], 0, 1)  # the second view on white
    img[1, 10:22, 8:20] = [0.1, 0.1, 0.1]
    alpha = background_matte(img, 0.25, 0.45)
    assert alpha.shape == (2, 32, 32) and alpha.dtype == np.float32
    assert (alpha[:, 11:21, 9:19] == 1.0).all()
    outside = np.ones((32, 32), bool)
    outside[9:23, 7:21] = False
    assert alpha[:, outside].max() == 0.0, alpha[:, outside].max()
    with pytest.raises(ValueError):
        background_matte(img, 0.5, 0.2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("views2nerf")
    args = ["--config", CONFIG, "--train", f"exp_root_dir={root / 'out'}", f"data.cache_dir={root / 'cache'}",
            "data.prompt=a blue sphere", "data.n_views=6", "data.turns=1", "data.steps=4", "data.holdout_every=3",
            "data.n_test_views=2", "data.eval_height=16", "data.eval_width=16", "data.rays_per_step=256",
            "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            "system.exporter.resolution=32", "system.geometry.isosurface_threshold=1"]
    return root, args, launch.main(args)


def test_generated_folder(run):
    root, _, trainer = run
    (key,) = os.listdir(root / "cache")
    folder = root / "cache" / key
    data = read_transforms(str(folder))
    assert data["images"].shape == (6, 32, 32, 3) and data["alpha"].shape == (6, 32, 32)
    assert 0.0 < data["alpha"].mean() < 0.9  # an object on a background, matted
    # the cameras are the spiral's, and the model saw each view's normalize_camera(c2w)
    elevation, azimuth = spiral_angles(6, [0, 30], 1)
    cams = make_cameras(elevation, azimuth, np.full(6, 2.5), np.full(6, 40.0), 32)
    assert np.allclose(data["c2w"], cams["c2w"], atol=1e-6)
    assert np.allclose(normalize_camera(data["c2w"]), cams["camera"], atol=1e-6)
    assert np.allclose(data["fovy_deg"], 40.0, atol=1e-4)
    with open(folder / "generation.json") as f:
        settings = json.load(f)
    assert settings["prompt"] == "a blue sphere" and settings["sampler"] == "dpmpp2m" and settings["seed"] == 0
    # the trial keeps a copy of what it was fitted to
    copy = read_transforms(os.path.join(trainer.trial.root, "views"))
    assert np.array_equal(copy["images"], data["images"])


def test_fit_outputs_and_cache_reuse(run, capsys):
    root, args, trainer = run
    trial = trainer.trial.root
    with open(os.path.join(trial, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    val = [r for r in rows if "val_psnr" in r]
    assert val and all(np.isfinite(r["val_psnr"]) for r in val), rows
    assert os.path.isfile(os.path.join(trial, "save", "it4-export", "model.obj"))
    # a second run with the same settings reuses the generated folder
    launch.main(args[:-1] + ["trainer.max_steps=1", "name=again", "system.exporter.resolution=32"])
    assert "generated views: reusing" in capsys.readouterr().out
    assert len(os.listdir(root / "cache")) == 1


@pytest.mark.parametrize("name", ["demo-views2nerf", "mvdream-sd21-views2nerf", "recon", "tiny-recon", "demo",
                                  "mvdream-sd21", "mvdream-sd21-shading", "tiny-sds", "tiny-mvdiffusion"])
def test_launch_configs_parse(name, tmp_path):
    """Every key of each launch config (system, data, trainer, checkpoint) is one its classes accept, including
    the real-model configs that cannot run here (no weights)."""
    cfg = launch.load_config(os.path.join(ROOT, "configs", f"{name}.yaml"), [f"exp_root_dir={tmp_path}"])
    system_cls, data_cls = launch.check_config(cfg, "train")
    assert system_cls.__name__.endswith("System") and data_cls.__name__.endswith("DataModule")
