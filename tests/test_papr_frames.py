"""Multi-frame point fitting ("papr-frames-system" on "transforms-frames-datamodule", configs/tiny-papr-frames.yaml):
the animated scene and its frame-sequence batches, the input errors, and a run through launch.py in which frame k
starts from frame k-1's final points, the decoder stays bit-identical from frame 1 on while points and attention MLPs
move, the per-frame PLYs and per-camera videos are written, and a run resumed between frames 1 and 2 ends identical; the
from-scratch baseline (warm_start false) restarts every frame from the fresh build."""
import json
import os
import shutil

import imageio.v2 as imageio2
import numpy as np
import pytest

from mindspore_impl.lift3d.export.point_cloud import read_point_cloud_ply
from neutral.config import ConfigError
from neutral.lift3d.frame_sequence import FrameSequenceDataModule
from neutral.lift3d.transforms_dataset import DatasetError, read_image
from scripts.make_primitive_views import frame_folder, write_animated_views

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny-papr-frames.yaml")
FRAMES, VIEWS, SIZE = 3, 4, 16  # 4 cameras keep the test short (the demo scene has 8)
FIRST, LATER = 3, 2  # steps of frame 0 and of each later frame in these tests


@pytest.fixture(scope="module")
def scene_template(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("frames") / "torus")
    write_animated_views(root, "torus", frames=FRAMES, views=VIEWS, size=SIZE)
    return root


@pytest.fixture
def scene(scene_template, tmp_path):
    """A fresh copy of 3 frames x 4 views of the moving torus at 16x16 (camera 0 held out)."""
    root = str(tmp_path / "torus")
    shutil.copytree(scene_template, root)
    return root


def data_cfg(root, **extra):
    return {"root": root, "n_frames": FRAMES, "first_frame_steps": FIRST, "frame_steps": LATER, "holdout_every": 4,
            "patch_size": 12, **extra}


# ----------------------------------------------------------------------------- data


def test_scene_and_batches(scene):
    """The generator's frames share cameras and the object moves; the data module samples the frame of each step,
    hands every camera's view at a frame's last step only, refuses steps past the schedule and resumes its stream."""
    dm = FrameSequenceDataModule(data_cfg(scene), seed=3)
    assert dm.n_frames == FRAMES and dm.total_steps == FIRST + (FRAMES - 1) * LATER == 7
    alpha = [dm.frames[k].train["alpha"] for k in range(FRAMES)]
    for k in (1, 2):
        np.testing.assert_array_equal(dm.frames[k].train["c2w"], dm.frames[0].train["c2w"])
        moved = np.abs(alpha[k] - alpha[0]).mean()
        assert moved > 0.02, f"frame {k}: silhouettes differ by only {moved:.4f} from frame 0"
    expected = [(0, s) for s in range(FIRST)] + [(k, s) for k in (1, 2) for s in range(LATER)]
    state = dm.get_state()
    batches = [dm.sample(step) for step in range(dm.total_steps)]
    assert [(b["frame"], b["frame_step"]) for b in batches] == expected
    last = [step for step, b in enumerate(batches) if "frame_views" in b]
    assert last == [FIRST - 1, FIRST + LATER - 1, FIRST + 2 * LATER - 1]
    views = batches[FIRST + LATER - 1]["frame_views"]  # frame 1
    assert [v["camera"] for v in views] == list(range(VIEWS))
    assert [c for c, v in enumerate(views) if v["held_out"]] == [0]
    for c in (0, 3):  # camera c's ground truth is image c of frame 1's folder
        image = read_image(os.path.join(frame_folder(scene, 1), "images", f"{c:04d}.png"))
        np.testing.assert_allclose(views[c]["rgb"][0] * views[c]["mask"][0], image[..., :3] * image[..., 3:],
                                   atol=1e-6)
        assert views[c]["rgb"].shape == (1, SIZE, SIZE, 3) and views[c]["rays_o"].shape == (1, SIZE, SIZE, 3)
    assert dm.get_state()["frame"] == 2 and dm.val_batch(0)["file_path"] == "./images/0000.png"
    with pytest.raises(ConfigError, match="past the frame schedule.*set trainer.max_steps=7"):
        dm.sample(7)
    dm.set_state(state)
    assert dm.current == 0
    again = dm.sample(0)
    assert all(np.array_equal(again[k], batches[0][k]) for k in ("rays_o", "rays_d", "rgb", "mask"))


def test_bad_input(scene, tmp_path):
    """One-line errors naming the problem, raised by the data module's constructor (before any model)."""
    def fails(match, root=scene, **extra):
        with pytest.raises((DatasetError, ConfigError), match=match) as info:
            FrameSequenceDataModule(data_cfg(root, **extra))
        assert "\n" not in str(info.value)

    fails("does not exist", root=str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "empty")
    fails("has no frame folders; expected", root=str(tmp_path / "empty"))
    fails(r"frame 3 \(frame_003\) is missing \(data.n_frames=4", n_frames=4)
    fails("set data.patch_size", patch_size=0)
    fails("data.root is not set", root=None)
    path = os.path.join(frame_folder(scene, 2), "transforms.json")
    original = open(path).read()

    def edit(change):
        meta = json.loads(original)
        change(meta)
        with open(path, "w") as f:
            json.dump(meta, f)

    def shift_camera(meta):
        meta["frames"][3]["transform_matrix"][0][3] += 0.05

    def widen(meta):
        meta["camera_angle_x"] *= 1.1

    edit(shift_camera)
    fails(r"frame_002/transforms.json: view 3's camera differs from .*frame_000/transforms.json's view 3 "
          r"\(max \|delta transform_matrix\| = 0.05\)")
    edit(lambda m: m["frames"].pop())
    fails("frame_002/transforms.json has 3 views but .*frame_000/transforms.json has 4")
    edit(widen)
    fails("view 0's intrinsics .* differ from")
    os.remove(path)
    fails("frame_002 has no transforms.json")
    with open(path, "w") as f:
        f.write(original)
    shutil.copytree(frame_folder(scene, 1), os.path.join(scene, "frame_1"))
    fails("frame_001 and frame_1 are both frame 1")
    shutil.rmtree(os.path.join(scene, "frame_1"))
    shutil.rmtree(frame_folder(scene, 1))
    fails(r"frame 1 \(frame_001\) is missing")
    fails(r"frame 1 \(frame_001\) is missing", n_frames=None)


def test_bad_input_through_launch(scene, tmp_path, capsys):
    """launch.py reports a mismatched frame in one line, exit code 2, and writes no trial folder."""
    import launch
    path = os.path.join(frame_folder(scene, 1), "transforms.json")
    meta = json.load(open(path))
    meta["frames"][2]["transform_matrix"][2][3] += 0.5
    json.dump(meta, open(path, "w"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        launch._cli(["--config", TINY, "--train", f"data.root={scene}", f"exp_root_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and "frame_001/transforms.json: view 2's camera differs" in err[0]
    assert not os.path.exists(out / "tiny-papr-frames")


# ----------------------------------------------------------------------------- fitting through launch.py


def _args(root, out, *extra):
    """3 frames: 3 steps, then 2 and 2; a checkpoint every 5 steps (step 5: frame 1 done, frame 2 next); no test
    orbit."""
    return ["--config", TINY, "--train", f"data.root={root}", f"exp_root_dir={out}",
            "data.patch_size=12", f"data.first_frame_steps={FIRST}", f"data.frame_steps={LATER}",
            "data.n_test_views=0", "checkpoint.every_n_train_steps=5", *extra]


def _params(cell):
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


def test_frames_through_launch(scene, tmp_path, monkeypatch):
    """PyNative (the tiny config's). Frame k's first step starts from exactly frame k-1's final points (its PLY); the
    decoder is bit-identical in every step of frames 1 and 2 and at the end, after changing in frame 0, while the
    points and the attention MLPs keep moving; 4 camera videos of 3 frames; a run resumed from the step-5 checkpoint
    (after frame 1: an optimizer without the decoder) ends with the same state and records."""
    import launch
    from mindspore_impl.lift3d.systems.papr_frames_system import PAPRFramesSystem

    seen = []  # per step, before the update: (frame, points arrays, decoder, attention)
    original = PAPRFramesSystem.run_step

    def recording_run_step(self, inputs):
        seen.append((self.frame, [x.copy() for x in self.geometry.active_arrays()],
                     _params(self.renderer.decoder), _params(self.renderer.proximity_attn)))
        return original(self, inputs)

    monkeypatch.setattr(PAPRFramesSystem, "run_step", recording_run_step)
    full = launch.main(_args(scene, tmp_path / "out", "name=full"))
    system = full.system
    assert [s[0] for s in seen] == [0] * FIRST + [1] * LATER + [2] * LATER
    export = os.path.join(full.trial.root, "save", f"it{FIRST + 2 * LATER}-export")

    # PLY per frame = the points the next frame starts from
    clouds = [read_point_cloud_ply(os.path.join(export, f"frame_{k:03d}.ply")) for k in range(FRAMES)]
    for k in (1, 2):
        start = seen[FIRST + (k - 1) * LATER][1]
        for got, want in zip((clouds[k - 1]["positions"], clouds[k - 1]["influence"], clouds[k - 1]["features"]),
                             start):
            np.testing.assert_array_equal(got, want)
        moved = np.abs(clouds[k]["positions"] - clouds[k - 1]["positions"]).max()
        assert moved > 1e-4, f"frame {k}: the points did not move ({moved})"
    final = system.geometry.active_arrays()
    np.testing.assert_array_equal(clouds[2]["positions"], final[0])
    assert len(clouds[0]["positions"]) == system.geometry.num_active == 64

    # the decoder: trained in frame 0, frozen after; the attention MLPs train in every frame
    decoder_at_1 = seen[FIRST][2]
    assert any(not np.array_equal(decoder_at_1[n], seen[0][2][n]) for n in decoder_at_1)
    for _, _, decoder, _ in seen[FIRST:] + [(None, None, _params(system.renderer.decoder), None)]:
        assert all(np.array_equal(decoder[n], decoder_at_1[n]) for n in decoder_at_1)
    attention = [seen[FIRST][3], seen[FIRST + LATER][3], _params(system.renderer.proximity_attn)]
    for a, b in zip(attention, attention[1:]):
        assert max(np.abs(a[n] - b[n]).max() for n in a) > 1e-5
    assert not any("decoder" in p.name for p in system.optimizer.parameters)

    # records and videos
    records = json.load(open(os.path.join(export, "frames.json")))["frames"]
    assert [(r["frame"], r["steps"]) for r in records] == [(0, FIRST), (1, LATER), (2, LATER)]
    assert all(np.isfinite(r["val_psnr"]) and r["val_psnr"] > 8.0 and r["seconds"] > 0 for r in records)
    print("per-frame held-out PSNR", [round(r["val_psnr"], 2) for r in records])
    for c in range(VIEWS):
        reader = imageio2.get_reader(os.path.join(export, f"camera_{c:02d}.mp4"))
        assert reader.count_frames() == FRAMES
        reader.close()

    # resume after frame 1
    ckpt = os.path.join(full.trial.root, "ckpts", "step000005.ckpt")
    resumed = launch.main(_args(scene, tmp_path / "out", "name=resumed", f"resume={ckpt}"))
    a_full, meta_full = full.state()
    a_res, meta_res = resumed.state()
    assert sorted(a_full) == sorted(a_res) and all(np.array_equal(a_full[k], a_res[k]) for k in a_full)
    strip = ("seconds", "seconds_after_first_step")
    same = [{k: v for k, v in r.items() if k not in strip} for r in meta_full["system"]["extra"]["records"]]
    assert same == [{k: v for k, v in r.items() if k not in strip} for r in meta_res["system"]["extra"]["records"]]


def test_from_scratch_baseline(scene):
    """warm_start false: every later frame starts from the fresh build's points and networks and trains the decoder."""
    from omegaconf import OmegaConf
    from mindspore_impl.lift3d.systems.papr_frames_system import PAPRFramesSystem
    cfg = OmegaConf.load(TINY)
    cfg.system.warm_start = False
    system_cfg = OmegaConf.to_container(OmegaConf.merge(cfg, {"data": {"patch_size": 12}}).system, resolve=True)
    system = PAPRFramesSystem(system_cfg, seed=0)
    system.configure_optimizers()
    dm = FrameSequenceDataModule(data_cfg(scene, first_frame_steps=1, frame_steps=1), seed=0)
    fresh = [x.copy() for x in system.geometry.active_arrays()], _params(system.renderer)
    starts = []
    original = system.run_step

    def recording(inputs):
        starts.append(([x.copy() for x in system.geometry.active_arrays()], _params(system.renderer)))
        return original(inputs)

    system.run_step = recording
    for step in range(dm.total_steps):
        system.training_step(dm.sample(step), step)
    assert len(system.records) == FRAMES and all(not r["warm_start"] for r in system.records[1:])
    for k in (1, 2):
        points, nets = starts[k]
        assert all(np.array_equal(a, b) for a, b in zip(points, fresh[0])), f"frame {k} did not restart"
        assert all(np.array_equal(nets[n], fresh[1][n]) for n in nets)
    assert any("decoder" in p.name for p in system.optimizer.parameters)
    assert not np.array_equal(system.frame_arrays[0]["points"], fresh[0][0])  # frame 0 moved them
