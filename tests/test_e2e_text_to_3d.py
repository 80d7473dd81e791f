"""Text-to-3D end to end on CPU with tiny random models: scripts/make_tiny_checkpoint.py, then
launch.py --train on configs/tiny-sds.yaml (training steps, validation images, checkpoints, test video,
mesh export), then a run resumed from the middle checkpoint whose next step and final state equal the
uninterrupted run's exactly."""
import json
import os

import imageio.v2 as imageio2
import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

import launch
from mindspore_impl.core.train_state import load_training_state
from scripts.make_tiny_checkpoint import make_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SDS = os.path.join(ROOT, "configs", "tiny-sds.yaml")
N_TEST = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    paths = make_tiny_checkpoint(str(root / "tiny-mvdream"), seed=0, log=lambda *_: None)
    return paths, root


def _args(paths, root, *extra):
    """tiny-sds.yaml at 16x16 with 8 samples per ray: 2 steps, validation + checkpoint after each."""
    return ["--config", TINY_SDS, "--train", f"exp_root_dir={root / 'out'}",
            f"system.guidance.ckpt_path={paths['ckpt']}", f"system.guidance.config_path={paths['config']}",
            f"system.prompt_processor.tokenizer_path={paths['tokenizer']}",
            f"system.prompt_processor.cache_dir={root / 'cache'}",
            "data.width=16", "data.height=16", "data.eval_width=24", "data.eval_height=24",
            f"data.n_test_views={N_TEST}", "system.renderer.num_samples_per_ray=8",
            "trainer.max_steps=2", "trainer.val_check_interval=1", "checkpoint.every_n_train_steps=1", *extra]


def _metrics(trial_root):
    with open(os.path.join(trial_root, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def test_train_test_export_resume(tiny, capsys):
    paths, root = tiny
    full = launch.main(_args(paths, root, "name=full"))
    out = capsys.readouterr().out
    print(out)
    trial = full.trial.root
    m = _metrics(trial)
    print("losses", {s: r["loss"] for s, r in m.items()}, "t", {s: (r["t"], r["min_step"], r["max_step"])
                                                                  for s, r in m.items()})
    assert sorted(m) == [1, 2] and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in m.values())
    # timestep annealing [0, 0.98, 0.02, 8] / [0, 0.98, 0.50, 8]: t = 980 at step 0, [860, 919] at step 1
    assert (m[1]["t"], m[1]["min_step"], m[1]["max_step"]) == (980, 980, 980)
    assert (m[2]["min_step"], m[2]["max_step"]) == (860, 919) and 860 <= m[2]["t"] <= 919

    save = os.path.join(trial, "save")
    # validation: rgb | opacity side by side (the plain config has no normals)
    for name in ("it1-0.png", "it1-1.png", "it2-0.png", "it2-1.png"):
        assert iio.imread(os.path.join(save, name)).shape == (24, 48, 3)
    # contact sheets: the 2 validation views (columns) as rgb / opacity rows, and 3 orbit frames; 2-pixel gaps
    assert iio.imread(os.path.join(save, "it2-preview.png")).shape == (2 * 24 + 2, 2 * 24 + 2, 3)
    assert iio.imread(os.path.join(save, "it2-test-preview.png")).shape == (2 * 24 + 2, 3 * 24 + 2 * 2, 3)
    # one line per phase, then the summary naming what a person opens first
    for line in ("building the system", "training 2 steps (the first step compiles the graph",
                 f"rendering the test orbit ({N_TEST} views)", "exporting ...", "done in "):
        assert line in out, line
    summary = out[out.index("done in "):]
    for kind, path in (("video:", "it2-test.mp4"), ("mesh:", "model.obj"), ("preview:", "it2-test-preview.png")):
        line = next((ln for ln in summary.splitlines() if ln.strip().startswith(kind)), "")
        assert line.endswith(path), (kind, path, summary)
    reader = imageio2.get_reader(os.path.join(save, "it2-test.mp4"))
    n_mp4 = reader.count_frames()
    frame = reader.get_data(0)
    reader.close()
    gif = iio.imread(os.path.join(save, "it2-test.gif"), index=None)
    print(f"test video: {n_mp4} mp4 frames {frame.shape}, gif {gif.shape}")
    assert n_mp4 == N_TEST and gif.shape[0] == N_TEST and frame.shape[:2] == (24, 48)
    assert np.ptp(frame) > 0, "the test frame is blank"
    mesh = trimesh.load(os.path.join(save, "it2-export", "model.glb"), force="mesh")
    obj = trimesh.load(os.path.join(save, "it2-export", "model.obj"), force="mesh")
    print(f"mesh: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, extent {mesh.extents}")
    assert len(mesh.vertices) > 0 and len(obj.vertices) == len(mesh.vertices)
    # the blob bias puts the level-5 surface at |x| = 0.25: a closed shape about 0.5 across
    assert 0.3 < float(mesh.extents.max()) < 0.8

    # checkpoints hold the 3D model, its occupancy grid and the optimizer, never the frozen models
    arrays, meta = load_training_state(os.path.join(trial, "ckpts", "step000001.ckpt"))
    assert {"model.renderer.estimator.binaries", "model.geometry.encoding.encoding.encoding.params",
            "optimizer.exp_avg.geometry.encoding.encoding.encoding.params"} <= set(arrays)
    assert not [k for k in arrays if "unet" in k or "vae" in k or "text_encoder" in k or k.startswith("model.guidance")]
    assert meta["global_step"] == 1

    resumed = launch.main(_args(paths, root, "name=resumed",
                                f"resume={os.path.join(trial, 'ckpts', 'step000001.ckpt')}"))
    r = _metrics(resumed.trial.root)
    print(f"step 2 loss: uninterrupted {m[2]['loss']!r}, resumed {r[2]['loss']!r}")
    assert sorted(r) == [2] and r[2]["loss"] == m[2]["loss"] and r[2]["t"] == m[2]["t"]
    a_full, meta_full = full.state()
    a_res, meta_res = resumed.state()
    assert sorted(a_full) == sorted(a_res)
    diff = max(float(np.abs(a_full[k].astype(np.float64) - a_res[k]).max()) for k in a_full)
    print(f"max |parameter/moment/grid difference| resumed vs uninterrupted: {diff}")
    assert diff == 0.0 and meta_full["system"]["rng"] == meta_res["system"]["rng"]
    # the second run found the text embeddings in the disk cache
    assert resumed.system.prompt_processor.encoder_calls == 0
