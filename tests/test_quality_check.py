"""scripts/quality_check.py metrics on known inputs, and the missing demo checkpoint error (no trained model)."""
import os
import sys

import numpy as np
import pytest
import trimesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import quality_check as Q  # noqa: E402
from mindspore_impl.mvdream.data import primitives as P  # noqa: E402


def _sphere_mesh():
    return trimesh.creation.icosphere(subdivisions=3, radius=0.42)  # primitives.sdf_sphere's radius


def test_true_sphere_mesh_scores_high_against_sphere_only():
    m = _sphere_mesh()
    on_sphere = Q.mesh_volume_iou(m.vertices, m.faces, "sphere")
    on_cube = Q.mesh_volume_iou(m.vertices, m.faces, "cube")
    print(f"sphere mesh: IoU vs sphere {on_sphere:.4f}, vs cube {on_cube:.4f}")
    assert on_sphere > 0.95
    assert on_cube < 0.6


def test_true_cube_mesh_scores_high_against_cube():
    box = trimesh.creation.box(extents=(0.6, 0.6, 0.6))  # sdf_cube half 0.3
    on_cube = Q.mesh_volume_iou(box.vertices, box.faces, "cube")
    on_sphere = Q.mesh_volume_iou(box.vertices, box.faces, "sphere")
    print(f"cube mesh: IoU vs cube {on_cube:.4f}, vs sphere {on_sphere:.4f}")
    assert on_cube > 0.9
    assert on_sphere < 0.6


def test_scaled_shifted_mesh_is_normalised_back():
    m = _sphere_mesh()
    verts = np.asarray(m.vertices) * 1.7 + np.array([0.1, -0.05, 0.2])
    raw = Q.mesh_volume_iou(verts, m.faces, "sphere", normalise=False)
    fixed = Q.mesh_volume_iou(verts, m.faces, "sphere")
    back = Q.normalise_mesh(verts, np.zeros(3), 0.42)
    err = np.abs(np.linalg.norm(back, axis=-1) - 0.42).max()
    print(f"scaled x1.7 + shift: IoU raw {raw:.4f}, normalised {fixed:.4f}, max |r - 0.42| {err:.2e}")
    assert raw < 0.5
    assert fixed > 0.95
    assert err < 1e-9


def test_mesh_occupancy_matches_analytic_volume():
    m = _sphere_mesh()
    occ = Q.mesh_occupancy(m.vertices, m.faces)
    cell = (2 * Q.GRID_BOUND / Q.GRID_RES) ** 3
    vol, exact = occ.sum() * cell, float(m.volume)
    print(f"grid volume {vol:.5f} vs mesh volume {exact:.5f}")
    assert abs(vol - exact) / exact < 0.03


def test_primitive_frame_radius():
    centre, radius = Q.primitive_frame("sphere")
    print(f"sphere frame: centre {centre}, radius {radius:.5f}")
    assert np.abs(centre).max() < 1e-6
    assert abs(radius - 0.42) < 1e-3


def test_silhouette_iou_of_a_shape_with_itself_and_another():
    cube = P.render_silhouettes("cube", 32)
    sphere = P.render_silhouettes("sphere", 32)
    same, views = Q.silhouette_iou(cube, cube)
    other, _ = Q.silhouette_iou(cube, sphere)
    empty, _ = Q.silhouette_iou(np.zeros_like(cube), cube)
    print(f"silhouette IoU cube/cube {same}, cube/sphere {other:.4f}, empty/cube {empty}")
    assert same == 1.0 and views == [1.0] * 4
    assert 0.3 < other < 0.95
    assert empty == 0.0


def test_colour_metric_picks_the_right_colour():
    shading = Q.mean_shading("cube", 32)
    assert np.all((shading > 0.3) & (shading <= 1.0))
    red = np.broadcast_to(np.asarray(P.COLORS["red"]) * shading, (4, 8, 8, 3))
    mask = np.ones((4, 8, 8))
    ok = Q.colour_metrics(red, mask, "red", shading)
    wrong = Q.colour_metrics(red, mask, "blue", shading)
    print(f"shading {shading}, red image: {ok}; named blue: err {wrong['colour_err']:.4f}")
    assert ok["nearest"] == "red" and ok["right_colour"] and ok["colour_err"] < 1e-9
    assert wrong["nearest"] == "red" and not wrong["right_colour"]
    expect = np.linalg.norm((np.asarray(P.COLORS["red"]) - np.asarray(P.COLORS["blue"])) * shading)
    assert abs(wrong["colour_err"] - expect) < 1e-9
    # the mask matters: a blue square on the red image is what gets scored
    img = np.array(red)
    img[:, 2:6, 2:6] = np.asarray(P.COLORS["blue"]) * shading
    inner = np.zeros((4, 8, 8))
    inner[:, 2:6, 2:6] = 1.0
    assert Q.colour_metrics(img, inner, "blue", shading)["right_colour"]
    none = Q.colour_metrics(img, np.zeros((4, 8, 8)), "blue", shading)
    assert none["nearest"] is None and not none["right_colour"] and np.isnan(none["colour_err"])


def test_missing_checkpoint_says_how_to_train(tmp_path):
    missing = str(tmp_path / "model.ckpt")
    with pytest.raises(Q.QualityCheckError) as err:
        Q.main(["--ckpt", missing, "--out", str(tmp_path / "q")])
    msg = str(err.value)
    print(msg)
    assert missing in msg
    assert "python launch.py --config configs/demo-mvdiffusion.yaml --train" in msg
    assert not (tmp_path / "q").exists()


def test_demo_config_missing_checkpoint_error(tmp_path):
    """launch.py with configs/demo.yaml and no checkpoint fails before any folder is written, with the hint."""
    import launch
    from mindspore_impl.core.checkpoint import CheckpointError
    missing = str(tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError) as err:
        launch.main(["--config", "configs/demo.yaml", "--train", "system.prompt_processor.prompt=a red cube",
                     f"system.guidance.ckpt_path={missing}", f"exp_root_dir={tmp_path / 'out'}"])
    msg = str(err.value)
    print(msg)
    assert "demo-mvdiffusion.yaml --train" in msg and missing in msg
    assert not (tmp_path / "out").exists()


def test_bad_prompt_is_rejected():
    with pytest.raises(Q.QualityCheckError, match="must name a colour"):
        Q.check_prompt("an astronaut riding a horse")
    assert Q.check_prompt("a purple torus") == ("purple", "torus")


def test_image_prompt_reads_the_object_from_the_file_name(tmp_path):
    assert Q.image_prompt("examples/images/purple_torus_rgba.png") == "a purple torus"
    assert Q.image_prompt("examples/images/red_cube_rgba.png") == "a red cube"
    odd = tmp_path / "my_object.png"
    odd.write_bytes(b"")
    with pytest.raises(Q.QualityCheckError, match="must name a colour"):
        Q.image_prompt(str(odd))
    with pytest.raises(Q.QualityCheckError, match="does not exist"):
        Q.image_prompt(str(tmp_path / "red_cube.png"))
    assert Q.prompt_keys("configs/demo-image-to-3d.yaml") == (
        "data.image_path", "system.guidance.pretrained_model_name_or_path")


def test_missing_image_model_says_how_to_restore_it(tmp_path):
    missing = str(tmp_path / "pretrained" / "demo-zero123" / "model.ckpt")
    with pytest.raises(Q.QualityCheckError) as err:
        Q.main(["--images", "examples/images/red_cube_rgba.png", "--ckpt", missing, "--out", str(tmp_path / "q")])
    msg = str(err.value)
    print(msg)
    assert missing in msg and "git checkout -- pretrained/demo-zero123/model.ckpt" in msg
    assert "configs/demo-zero123-training.yaml --train" in msg
    assert not (tmp_path / "q").exists()
