"""Reconstruction with PAPR points ("papr-reconstruction-system", configs/tiny-papr-recon.yaml at micro sizes): patch
batches from a transforms.json folder, a fit through launch.py whose loss falls and held-out PSNR rises, pruning and
growing that rebuild the compiled step without losing anything, exact resume from a checkpoint whose point capacity
differs from a fresh build (across a prune and a grow), the point-cloud PLY export, and the config errors."""
import os

import imageio.v2 as imageio2
import numpy as np
import pytest
import trimesh

from mindspore_impl.core.checkpoint import CheckpointError
from mindspore_impl.lift3d.export.point_cloud import read_point_cloud_ply, write_point_cloud_ply
from neutral.config import ConfigError
from neutral.lift3d.transforms_dataset import TransformsDataModule, pixel_rays
from scripts.make_primitive_views import write_primitive_views
from tests.parity import in_fresh_interpreter
from tests.test_reconstruction import _metrics  # {step: every metric of that step}, shared with the NeRF fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny-papr-recon.yaml")
SIZE, PATCH = 16, 12
# micro sizes: 64 points in buckets [32, 64, 128], k = 4, two-layer MLPs of width 16, decoder width 8, 12x12 patches;
# background score 3 (upstream lego's; the opacity rises sooner than with 5, so 60 steps show learning)
MICRO = [
    f"data.patch_size={PATCH}", "data.n_test_views=2",
    "system.geometry.num_points=64", "system.geometry.feature_dim=8", "system.geometry.init_type=ball",
    "system.geometry.init_radius=0.45", "system.geometry.point_buckets=[32,64,128]", "system.geometry.max_points=128",
    "system.renderer.k=4", "system.renderer.attention_dim=16", "system.renderer.decoder_channels=8",
    "system.renderer.background_score=3.0",
    "system.renderer.key_frequencies=[4,4,4]", "system.renderer.query_frequencies=[4]",
    "system.renderer.value_frequencies=[4,4]", "system.renderer.eval_chunk_size=256",
    "system.renderer.key_mlp.d_ff=16", "system.renderer.key_mlp.d_out=16", "system.renderer.key_mlp.n_layers=2",
    "system.renderer.query_mlp.d_ff=16", "system.renderer.query_mlp.d_out=16", "system.renderer.query_mlp.n_layers=2",
    "system.renderer.value_mlp.d_ff=16", "system.renderer.value_mlp.d_out=8", "system.renderer.value_mlp.n_layers=2",
]


def scene(tmp_path) -> str:
    """20 views of the torus at 16x16 (frames 0, 5, 10, 15 held out: 16 training views)."""
    root = str(tmp_path / "torus")
    write_primitive_views(root, "torus", views=20, size=SIZE)
    return root


def micro_config(overrides=()):
    """The parsed tiny config with the micro sizes (and overrides) -> (data section, system section) as dicts."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.merge(OmegaConf.load(TINY), OmegaConf.from_dotlist(MICRO + list(overrides)))
    OmegaConf.resolve(cfg)
    return OmegaConf.to_container(cfg.data), OmegaConf.to_container(cfg.system)


def build_system(overrides=(), seed=0):
    from mindspore_impl.lift3d.systems.papr_reconstruction_system import PAPRReconstructionSystem
    return PAPRReconstructionSystem(micro_config(overrides)[1], seed=seed)


# ----------------------------------------------------------------------------- data: patches


def test_patch_batches(tmp_path):
    """Patches are crops of one training image with its pixel-centre rays; each epoch visits every image once, in a
    new order; the stream resumes from get_state; a patch larger than the images is a config error."""
    root = scene(tmp_path)
    dm = TransformsDataModule({"root": root, "holdout_every": 5, "patch_size": 6, "patches_per_step": 3}, seed=4)
    t = dm.train
    n = len(t["file_paths"])
    assert n == 16
    state = dm.get_state()
    batch = dm.sample(2)
    assert batch["rays_o"].shape == (3, 6, 6, 3) and batch["rgb"].shape == (3, 6, 6, 3)
    assert batch["mask"].shape == (3, 6, 6, 1) and batch["light_positions"].shape == (3, 3)
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    top, left = rng.integers(0, SIZE - 6 + 1, 3), rng.integers(0, SIZE - 6 + 1, 3)
    frames = dm.patch_frames(2)
    for i, (f, y, x) in enumerate(zip(frames, top, left)):
        np.testing.assert_array_equal(batch["rgb"][i], t["images"][f, y:y + 6, x:x + 6])
        np.testing.assert_array_equal(batch["mask"][i, ..., 0], t["alpha"][f, y:y + 6, x:x + 6])
        rows, cols = np.divmod(np.arange(36), 6)
        o, d = pixel_rays(np.repeat(t["c2w"][f:f + 1], 36, 0), np.repeat(t["intrinsics"][f:f + 1], 36, 0),
                          rows + y, cols + x)
        np.testing.assert_allclose(batch["rays_d"][i].reshape(-1, 3), d, atol=1e-6)
        np.testing.assert_allclose(batch["rays_o"][i].reshape(-1, 3), o, atol=1e-6)
    # epochs: steps 0..15 of 3 patches = 48 patches = 3 epochs, each a permutation of the 16 images
    seq = np.concatenate([dm.patch_frames(s) for s in range(16)])
    for e in range(3):
        assert sorted(seq[e * n:(e + 1) * n]) == list(range(n))
    assert not np.array_equal(seq[:n], seq[n:2 * n])
    # resume
    dm.set_state(state)
    again = dm.sample(2)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    with pytest.raises(ConfigError, match="patch_size=17 is larger than the training images"):
        TransformsDataModule({"root": root, "holdout_every": 5, "patch_size": 17})


# ----------------------------------------------------------------------------- export


def test_point_cloud_ply(tmp_path):
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(37, 3)).astype(np.float32)
    infl = rng.normal(size=(37, 1)).astype(np.float32)
    feats = rng.normal(size=(37, 5)).astype(np.float32)
    path = write_point_cloud_ply(str(tmp_path / "pc.ply"), pos, infl, feats)
    cloud = trimesh.load(path)
    assert isinstance(cloud, trimesh.PointCloud) and len(cloud.vertices) == 37
    np.testing.assert_array_equal(np.asarray(cloud.vertices, np.float32), pos)
    back = read_point_cloud_ply(path)
    np.testing.assert_array_equal(back["positions"], pos)
    np.testing.assert_array_equal(back["influence"], infl)
    np.testing.assert_array_equal(back["features"], feats)
    lowest, highest = np.argmin(infl), np.argmax(infl)  # the ramp's ends: blue-ish lowest, yellow-ish highest
    assert back["colors"][lowest, 2] > back["colors"][lowest, 0] and back["colors"][highest, 0] > 200


# ----------------------------------------------------------------------------- config and checkpoint errors


def test_config_errors(tmp_path):
    from mindspore_impl.lift3d.systems.reconstruction_system import ReconstructionSystem
    _, system_cfg = micro_config()
    nerf_cfg = {k: v for k, v in system_cfg.items() if k != "optimizer"}
    with pytest.raises(ConfigError, match="use system_type papr-reconstruction-system"):
        ReconstructionSystem(dict(nerf_cfg, loss={"lambda_rgb": 1.0}))
    from mindspore_impl.lift3d.systems.papr_reconstruction_system import PAPRReconstructionSystem
    with pytest.raises(ConfigError, match="needs system.geometry_type papr-point-cloud"):
        PAPRReconstructionSystem(dict(system_cfg, geometry_type="implicit-volume", geometry={},
                                      renderer_type="nerf-volume-renderer", renderer={}))
    with pytest.raises(ConfigError, match="unknown keys"):
        build_system(["system.loss.lambda_orient=1.0"])  # no normals in PAPR
    system = build_system(["system.use_recompute=true"])  # the base asks the renderer for its cells
    assert system.recompute_cells() == [system.renderer.proximity_attn, system.renderer.decoder]
    dm = TransformsDataModule({"root": scene(tmp_path), "holdout_every": 5, "rays_per_step": 16})
    with pytest.raises(ConfigError, match=f"gives random rays; set data.patch_size={PATCH}"):
        system.training_step(dm.sample(0), 0)


def test_checkpoint_of_another_capacity_loads():
    """A checkpoint of 11 points (capacity 32) loads into a fresh system of 64 (capacity 64): shapes, active count,
    values and optimizer moments follow the checkpoint. A mask that is not n ones then zeros, or point_buckets that
    put n points in another capacity, are checkpoint errors."""
    import mindspore as ms
    a = build_system()
    pos, infl, feats = a.geometry.active_arrays()
    keep = np.arange(64) % 6 == 0
    assert a.geometry.set_points(pos[keep], infl[keep] + 0.5, feats[keep])
    a.configure_optimizers()
    for p in a.optimizer.exp_avg:
        p.set_data(ms.Tensor(np.full(p.shape, 0.25, np.float32)))
    arrays, meta = a.state_dict()
    b = build_system()
    b.configure_optimizers()
    assert b.geometry.capacity == 64
    b.load_state_dict(arrays, meta)
    assert b.geometry.capacity == 32 and b.geometry.num_active == 11
    got, _ = b.state_dict()
    assert sorted(got) == sorted(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)
    bad = dict(arrays)
    bad["model.geometry.point_mask"] = arrays["model.geometry.point_mask"][::-1].copy()
    with pytest.raises(CheckpointError, match="n ones followed by zeros"):
        build_system().load_state_dict(bad, meta)
    with pytest.raises(CheckpointError, match="point_buckets"):
        build_system(["system.geometry.point_buckets=[16,64,128]"]).load_state_dict(arrays, meta)


# ----------------------------------------------------------------------------- GRAPH mode: point-set changes


def test_prune_and_grow_rebuild_the_compiled_step(tmp_path):
    """GRAPH mode. A prune from 64 to 24 points (capacity 64 -> 32), a grow to 72 (-> 128) and a prune of 2 within
    the bucket (in place), on the system's schedule: kept points keep their values, the networks are untouched, Adam
    restarts (zero moments, step 0), and after every change the compiled step's loss equals a PyNative forward of the
    same inputs (a stale graph would render the old points or fail on their shapes)."""
    if not in_fresh_interpreter(__file__, "test_prune_and_grow_rebuild_the_compiled_step", "PAPR_REBUILD_IN_CHILD"):
        return
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    system = build_system(["system.geometry.prune_every=3", "system.geometry.prune_start=3",
                           "system.geometry.grow_every=6", "system.geometry.grow_start=6",
                           "system.geometry.grow_count=48"])
    data_cfg, _ = micro_config()
    dm = TransformsDataModule(dict(data_cfg, root=scene(tmp_path)), seed=0)
    system.configure_optimizers()
    g = system.geometry
    forced = {3: np.arange(64) % 8 < 3, 9: np.arange(72) >= 2}  # influence > 0 exactly where True before a prune
    seen = []
    for step in range(10):
        if step in forced:
            pos, infl, feats = g.active_arrays()
            assert not g.set_points(pos, np.where(forced[step][:, None], np.abs(infl) + 0.1, -1.0), feats)
        before = [x.copy() for x in g.active_arrays()]
        nets = {p.name: p.asnumpy() for p in system.renderer.trainable_params()}
        changes = system.change_points(step)
        after = g.active_arrays()
        if changes:
            seen.append((step, changes, g.num_active, g.capacity))
            keep = before[1].reshape(-1) > 0.0  # pruned first (threshold 0), then grown: the kept points lead
            for x, y in zip(before, after):
                np.testing.assert_array_equal(y[:int(keep.sum())], x[keep])
            assert g.num_active == int(keep.sum()) + changes.get("points_added", 0)
            assert all(np.array_equal(p.asnumpy(), nets[p.name]) for p in system.renderer.trainable_params())
            assert int(system.optimizer.optimizer_step.asnumpy()) == 0
            moments = list(system.optimizer.exp_avg) + list(system.optimizer.exp_avg_sq)
            assert all(not p.asnumpy().any() for p in moments)
            assert system.optimizer.exp_avg[0].shape == system.optimizer.parameters[0].shape
        inputs = system.draw_step_inputs(dm.sample(step))
        tensors = [ms.Tensor(inputs[k]) for k in system.STEP_INPUTS]
        ms.set_context(mode=ms.PYNATIVE_MODE)
        reference = float(system.forward(inputs["use_mask"], *tensors)[0].asnumpy())
        ms.set_context(mode=ms.GRAPH_MODE)
        loss = system.run_step(inputs)["loss"]
        assert loss == pytest.approx(reference, rel=1e-5, abs=1e-7), (step, loss, reference)
    print("point-set changes (step, what, points, capacity):", seen)
    assert [(s, n, c) for s, _, n, c in seen] == [(3, 24, 32), (6, 72, 128), (9, 70, 128)]


# ----------------------------------------------------------------------------- through launch.py


def _args(data_root, out, *extra):
    """80 steps on whole 16x16 views (patch 16), validation at 25, 50, 75 and 80; prune, then grow 48 points, at 50
    and 75 (the first changes the capacity); checkpoint at 60."""
    return ["--config", TINY, "--train", f"data.root={data_root}", f"exp_root_dir={out}", *MICRO,
            f"data.patch_size={SIZE}", "trainer.max_steps=80", "trainer.val_check_interval=25",
            "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "checkpoint.every_n_train_steps=60",
            "system.geometry.prune_every=25", "system.geometry.prune_start=50", "system.geometry.prune_stop=76",
            "system.geometry.grow_every=25", "system.geometry.grow_start=50", "system.geometry.grow_stop=76",
            "system.geometry.grow_count=48", *extra]


def test_fit_resume_and_export_through_launch(tmp_path):
    """GRAPH mode (the config's). Before the point set changes the loss falls and the held-out PSNR rises; the points
    are pruned and grown at 50 (capacity 64 -> 128: the step is rebuilt) and 75 (in place); a run resumed from the
    step-60 checkpoint (capacity 128, unlike a fresh build) passes the prune and grow at 75 and ends bit-identical to
    the uninterrupted one; the orbit video and the PLY of the final points are written."""
    if not in_fresh_interpreter(__file__, "test_fit_resume_and_export_through_launch", "PAPR_LAUNCH_IN_CHILD"):
        return
    import launch
    from mindspore_impl.core.train_state import load_training_state

    data = scene(tmp_path)
    full = launch.main(_args(data, tmp_path / "out", "name=full"))
    system, trial = full.system, full.trial.root
    m = _metrics(trial)
    first = np.mean([m[s]["loss_rgb"] for s in range(1, 11)])
    later = np.mean([m[s]["loss_rgb"] for s in range(41, 51)])
    psnr = [m[s]["val_psnr"] for s in (25, 50, 75, 80)]
    events = system.point_events
    print(f"rgb loss mean steps 1-10 {first:.5f}, 41-50 {later:.5f}; val PSNR at 25/50/75/80 {np.round(psnr, 2)}; "
          f"point events {events}")
    assert later < 0.7 * first
    assert psnr[1] > psnr[0] + 1.0
    assert [(e["step"], e["kind"]) for e in events] == [(s, k) for s in (50, 75) for k in ("prune", "grow")]
    assert [e["capacity"] for e in events[1:]] == [128, 128, 128]  # 64 -> 128 at 50, then in place
    assert events[1]["count"] == 48 and m[80]["num_points"] == events[-1]["points"] == system.geometry.num_active

    save = os.path.join(trial, "save")
    reader = imageio2.get_reader(os.path.join(save, "it80-test.mp4"))
    assert reader.count_frames() == 2
    reader.close()
    cloud = trimesh.load(os.path.join(save, "it80-export", "points.ply"))
    assert len(cloud.vertices) == system.geometry.num_active
    np.testing.assert_array_equal(np.asarray(cloud.vertices, np.float32), system.geometry.active_arrays()[0])

    ckpt = os.path.join(trial, "ckpts", "step000060.ckpt")
    arrays, _ = load_training_state(ckpt)
    assert arrays["model.geometry.points"].shape[0] == 128  # a fresh build holds 64
    resumed = launch.main(_args(data, tmp_path / "out", "name=resumed", f"resume={ckpt}"))
    r = _metrics(resumed.trial.root)
    print(f"step 80 loss: uninterrupted {m[80]['loss']!r}, resumed {r[80]['loss']!r}")
    assert min(r) == 61 and all(r[s]["loss"] == m[s]["loss"] for s in range(61, 81))
    a_full, meta_full = full.state()
    a_res, meta_res = resumed.state()
    assert sorted(a_full) == sorted(a_res)
    assert all(np.array_equal(a_full[k], a_res[k]) for k in a_full)
    assert meta_full["system"]["rng"] == meta_res["system"]["rng"] and meta_full["data"] == meta_res["data"]
    assert resumed.system.val_psnrs == pytest.approx(system.val_psnrs, abs=1e-6)
    assert resumed.system.point_events == system.point_events  # kept in the checkpoint's meta
