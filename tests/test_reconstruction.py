"""The reconstruction system ("multiview-reconstruction-system") end to end: 20 views of a procedural torus with exact
cameras (mindspore_impl/mvdream/data/primitives.py), written as a transforms.json folder, fitted through launch.py with
configs/tiny-recon.yaml: held-out PSNR >= 25 dB, validation images, orbit video and mesh written, and a run resumed
from a late checkpoint that equals the uninterrupted one exactly. Also the parity of its losses with the torch twin."""
import json
import os

import imageio.v2 as imageio2
import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from mindspore_impl.mvdream.data import primitives as P
from neutral.lift3d.transforms_dataset import write_transforms
from tests.parity import assert_parity, in_fresh_interpreter, to_numpy, to_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RECON = os.path.join(ROOT, "configs", "tiny-recon.yaml")
N_VIEWS, SIZE, FOVY = 20, 32, 40.0
LIGHT = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])


# ----------------------------------------------------------------------------- the losses and their twins


def test_losses_match_torch():
    import mindspore as ms
    import torch

    import mindspore_impl.lift3d.losses as ms_losses
    import torch_ref.lift3d.losses as pt_losses

    rng = np.random.default_rng(0)
    b, h, w = 3, 4, 5
    arrays = {"comp_rgb_fg": rng.random((b, h, w, 3)), "comp_rgb_bg": rng.random((b, h, w, 3)),
              "opacity": rng.uniform(0.0, 1.0, (b, h, w, 1)), "target": rng.random((b, h, w, 3)),
              "alpha": rng.uniform(0.0, 1.0, (b, h, w, 1)), "bg_color": rng.random((b, 3))}
    arrays["opacity"][0, 0, 0] = 0.0  # clamped ends
    arrays["opacity"][0, 0, 1] = 1.0
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}

    def objective(lib, x, mask):
        out = {k: x[k] for k in ("comp_rgb_fg", "comp_rgb_bg", "opacity")}
        bg = lib.background_rgb(out, x["bg_color"], mask)
        rgb = lib.composite_background(out, x["bg_color"], mask)
        target = lib.composite_target(x["target"], x["alpha"], bg)
        return lib.photometric_loss(rgb, target), lib.mask_loss(x["opacity"], x["alpha"])

    keys = ("comp_rgb_fg", "comp_rgb_bg", "opacity", "target", "alpha")
    for mask in (0.0, 1.0):
        def ms_fn(*xs):
            mse, bce = objective(ms_losses, dict(zip(keys + ("bg_color",), xs)), ms.Tensor(np.float32(mask)))
            return mse + 0.3 * bce, (mse, bce)

        ms_inputs = [ms.Tensor(arrays[k]) for k in keys + ("bg_color",)]
        (_, (ms_mse, ms_bce)), ms_grads = ms.value_and_grad(ms_fn, tuple(range(len(keys))), has_aux=True)(*ms_inputs)
        pt_inputs = {k: to_torch(arrays[k]).requires_grad_(k in keys) for k in arrays}
        pt_mse, pt_bce = objective(pt_losses, pt_inputs, torch.tensor(mask))
        (pt_mse + 0.3 * pt_bce).backward()
        assert_parity(ms_mse.asnumpy(), to_numpy(pt_mse), f"photometric_loss (bg_mask {mask})")
        assert_parity(ms_bce.asnumpy(), to_numpy(pt_bce), "mask_loss")
        for k, g in zip(keys, ms_grads):
            assert_parity(g.asnumpy(), to_numpy(pt_inputs[k].grad), f"d loss / d {k} (bg_mask {mask})")


# ----------------------------------------------------------------------------- the known scene


def render_torus(c2w: np.ndarray, supersample: int = 2) -> np.ndarray:
    """RGBA float (N, SIZE, SIZE, 4), straight alpha, anti-aliased: albedo from the position, Lambertian shading
    under a fixed world light (view-independent, so a field without view dependence can fit it exactly)."""
    sdf = P.SHAPES["torus"]
    n, s = c2w.shape[0], SIZE * supersample
    rays_o, rays_d = P.camera_rays(c2w, np.full(n, FOVY), s)
    hit, points = P.sphere_trace(sdf, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
    p = points[hit]
    rgb = np.zeros((hit.size, 3))
    rgb[hit] = np.clip(0.5 + 0.9 * p, 0.05, 1.0) * (0.4 + 0.6 * np.clip(P.sdf_normals(sdf, p) @ LIGHT, 0, 1))[:, None]
    rgb = rgb.reshape(n, SIZE, supersample, SIZE, supersample, 3).mean((2, 4))
    alpha = hit.astype(np.float64).reshape(n, SIZE, supersample, SIZE, supersample).mean((2, 4))
    rgb = np.where(alpha[..., None] > 0, rgb / np.maximum(alpha[..., None], 1e-9), 0.0)
    return np.concatenate([rgb, alpha[..., None]], -1)


def scene_folder(root: str) -> str:
    """20 views on an orbit at elevations 0, 20, 40, -15 (in turn), 18 degrees apart in azimuth."""
    elevation = np.tile([0.0, 20.0, 40.0, -15.0], N_VIEWS // 4)
    azimuth = np.arange(N_VIEWS) * (360.0 / N_VIEWS) + 7.0
    distance = np.full(N_VIEWS, 0.9 / np.tan(np.radians(FOVY / 2)))
    cams = P.make_cameras(elevation, azimuth, distance, np.full(N_VIEWS, FOVY), SIZE)
    write_transforms(root, render_torus(cams["c2w"]), cams["c2w"], FOVY)
    return root


def _args(data_root, out, *extra):
    """tiny-recon.yaml: 200 steps, validation at 100 and 200 (frames 0, 5, 10, 15 held out), a checkpoint at
    190, the final one at 200."""
    return ["--config", TINY_RECON, "--train", f"data.root={data_root}", f"exp_root_dir={out}",
            "checkpoint.every_n_train_steps=190", *extra]


def _metrics(trial_root, skip: int = 0):
    """{step: every metric logged at that step} (rows of one step merged), after the first `skip` rows."""
    out = {}
    with open(os.path.join(trial_root, "metrics.jsonl")) as f:
        for row in map(json.loads, f.readlines()[skip:]):
            out.setdefault(row["step"], {}).update(row)
    return out


def test_reconstruct_a_known_scene_and_resume(tmp_path):
    if not in_fresh_interpreter(__file__, "test_reconstruct_a_known_scene_and_resume", "RECON_E2E_IN_CHILD"):
        return  # GRAPH mode (the config's): in its own interpreter, as the other compaction graph tests
    import launch
    from mindspore_impl.core.train_state import load_training_state

    data = scene_folder(str(tmp_path / "torus"))
    full = launch.main(_args(data, tmp_path / "out", "name=full"))
    trial, system = full.trial.root, full.system
    m = _metrics(trial)
    print("held-out PSNR per view", np.round(system.val_psnrs, 2), "mean", system.val_psnr,
          "train PSNR", m[200]["train_psnr"], "evaluated fraction", m[200]["evaluated_fraction"])
    assert full.dm.n_val == 4 and len(system.val_psnrs) == 4
    assert system.val_psnr >= 25.0
    assert m[200]["val_psnr"] == pytest.approx(system.val_psnr) and m[100]["val_psnr"] < m[200]["val_psnr"]
    assert m[200]["train_psnr"] > 25.0 and m[200]["evaluated_fraction"] < 0.3  # empty space was skipped

    save = os.path.join(trial, "save")
    for name in ("it100-0.png", "it200-3.png"):  # render | ground truth | opacity
        assert iio.imread(os.path.join(save, name)).shape == (SIZE, 3 * SIZE, 3)
    reader = imageio2.get_reader(os.path.join(save, "it200-test.mp4"))
    assert reader.count_frames() == 4
    reader.close()
    mesh = trimesh.load(os.path.join(save, "it200-export", "model.obj"), force="mesh")
    print("mesh extents", mesh.extents, "vertices", len(mesh.vertices))
    # the torus: major radius 0.33 + minor 0.14 -> 0.94 across, 0.28 high
    assert np.all(np.abs(mesh.extents - [0.94, 0.94, 0.28]) < 0.15)

    arrays, meta = load_training_state(os.path.join(trial, "ckpts", "step000190.ckpt"))
    assert meta["global_step"] == 190 and "model.renderer.estimator.binaries" in arrays
    # the resume replays steps 191-200 in this trainer (its compiled step reused): every array of the checkpoint
    # is loaded over the trained state, so a value left out of it would keep step 200's and the run would diverge;
    # a fresh launch.py resume= of a 3D system is tests/test_e2e_text_to_3d.py's and tests/test_papr_reconstruction.py's
    a_full, meta_full = full.state()
    val_psnrs = list(system.val_psnrs)
    with open(os.path.join(trial, "metrics.jsonl")) as f:
        rows_before = len(f.readlines())
    assert full.restore(os.path.join(trial, "ckpts", "step000190.ckpt")) == 190
    full.fit()
    r = _metrics(trial, skip=rows_before)
    print(f"step 200 loss: uninterrupted {m[200]['loss']!r}, resumed {r[200]['loss']!r}")
    assert sorted(r) == [200] and r[200]["loss"] == m[200]["loss"]
    a_res, meta_res = full.state()
    assert sorted(a_full) == sorted(a_res)
    assert all(np.array_equal(a_full[k], a_res[k]) for k in a_full)
    assert meta_full["system"]["rng"] == meta_res["system"]["rng"] and meta_full["data"] == meta_res["data"]
    assert system.val_psnrs == pytest.approx(val_psnrs, abs=1e-6)
