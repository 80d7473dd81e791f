"""Video and mesh export: files are written, read back, and hold the expected content."""
import math

import imageio.v2 as imageio2
import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from mindspore_impl.core.media import contact_sheet, save_image, save_video, strip
from mindspore_impl.lift3d.export.mesh import (MeshExportConfig, bake_texture, export_mesh, marching_cubes,
                                               sample_density_grid, smooth_vertex_colors)

SIGMA = 0.5
R_EXPECTED = SIGMA * math.sqrt(math.log(2.0))  # 50 exp(-(r/sigma)^2) = 25


def sphere_density(points):
    """A Gaussian blob at the origin plus a small floater at (0.8, 0.8, 0.8) that cleanup must remove."""
    r = np.linalg.norm(points, axis=-1)
    floater = np.linalg.norm(points - 0.8, axis=-1)
    return 50.0 * np.exp(-(r / SIGMA) ** 2) + 50.0 * np.exp(-(floater / 0.08) ** 2)


def position_color(points):
    return np.clip(points * 0.5 + 0.5, 0.0, 1.0)


def test_video_mp4_and_gif_frame_counts(tmp_path):
    rng = np.random.default_rng(0)
    h, w, n = 24, 17, 6
    frames = [strip({"rgb": rng.random((h, w, 3)), "normal": rng.random((h, w, 3)),
                     "opacity": rng.random((h, w, 1))}) for _ in range(n)]
    assert frames[0].shape == (h, 3 * w, 3) and frames[0].dtype == np.uint8
    paths = save_video(frames, str(tmp_path / "orbit"), fps=30)
    assert [p.rsplit(".", 1)[1] for p in paths] == ["mp4", "gif"]
    reader = imageio2.get_reader(paths[0])
    n_mp4 = reader.count_frames()
    fps = reader.get_meta_data()["fps"]
    reader.close()
    gif = iio.imread(paths[1])
    mp4 = iio.imread(paths[0])
    print(f"mp4 frames {n_mp4} fps {fps} shape {mp4.shape}; gif {gif.shape}")
    assert n_mp4 == n and fps == 30
    assert mp4.shape[1:] == (h, 3 * w + 1, 3)  # width padded to even for yuv420p
    assert gif.shape == (n, h, 3 * w, 3)


def test_image_and_strip_errors(tmp_path):
    img = np.zeros((8, 8, 1), np.float32)
    img[:4] = 1.0
    path = save_image(str(tmp_path / "it0-0.png"), img)
    back = iio.imread(path)
    assert back.shape == (8, 8, 3) and back[0, 0, 0] == 255 and back[7, 0, 0] == 0
    with pytest.raises(ValueError, match="differ in height"):
        strip({"rgb": np.zeros((8, 8, 3)), "normal": np.zeros((9, 8, 3))})
    with pytest.raises(ValueError, match="no frames"):
        save_video([], str(tmp_path / "empty"))


def test_sphere_mesh_obj_ply_glb(tmp_path):
    cfg = MeshExportConfig(threshold=25.0, resolution=48, color_smoothing=0)  # colours exactly the field's
    paths = export_mesh(sphere_density, (-1, -1, -1), (1, 1, 1), str(tmp_path), color_fn=position_color, cfg=cfg)
    assert [p.rsplit(".", 1)[1] for p in paths] == ["obj", "ply", "glb", "png"]
    preview = iio.imread(paths[-1])
    assert paths[-1].endswith("model-preview.png") and preview.shape[:2] == (240, 960)  # 4 views of 2.4 in at 100 dpi
    assert preview[..., :3].std() > 10  # not a blank canvas
    for path in paths[:3]:
        mesh = trimesh.load(path, force="mesh")
        radii = np.linalg.norm(mesh.vertices, axis=1)
        colors = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float64)
        expected = np.round(position_color(np.asarray(mesh.vertices)) * 255)
        color_err = np.abs(colors - expected).max()
        vol = 4.0 / 3.0 * math.pi * R_EXPECTED ** 3
        print(f"{path.rsplit('.', 1)[1]}: {len(mesh.vertices)} verts, radius {radii.mean():.4f} "
              f"(expected {R_EXPECTED:.4f}), max radius {radii.max():.4f}, volume {mesh.volume:.4f} "
              f"(sphere {vol:.4f}), colour err {color_err}")
        assert len(mesh.vertices) > 100 and len(mesh.faces) > 100
        assert abs(radii.mean() - R_EXPECTED) < 0.01 * R_EXPECTED
        assert radii.max() < 0.6  # the floater at |p| = 1.39 was removed
        assert abs(mesh.volume - vol) < 0.03 * vol  # positive volume: faces wind outward
        assert mesh.visual.kind == "vertex" and color_err <= 1.0


def test_no_surface_message():
    grid = sample_density_grid(lambda p: np.zeros(len(p)), 8, (-1, -1, -1), (1, 1, 1))
    with pytest.raises(ValueError, match=r"no surface at threshold 25.0: density ranges over \[0, 0\]"):
        marching_cubes(grid, 25.0, (-1, -1, -1), (1, 1, 1))


def test_bake_texture_square():
    # a unit square in the z=0 plane, uv = (x, y); the colour is (x, y, 0)
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uvs = verts[:, :2].copy()
    size = 16
    tex = bake_texture(verts, faces, uvs, lambda p: np.stack([p[:, 0], p[:, 1], 0 * p[:, 0]], -1), size)
    centers = (np.arange(size) + 0.5) / size
    expect_r = np.round(np.tile(centers[None, :], (size, 1)) * 255)
    expect_g = np.round(np.tile(centers[::-1, None], (1, size)) * 255)  # row 0 is v = 1
    err = max(np.abs(tex[..., 0] - expect_r).max(), np.abs(tex[..., 1] - expect_g).max())
    print(f"baked texture max err {err}")
    assert err <= 1.0


def test_vertex_colour_smoothing_removes_speckle_and_keeps_flat_colour():
    mesh = trimesh.creation.icosphere(subdivisions=3)
    faces = np.asarray(mesh.faces)
    rng = np.random.default_rng(0)
    flat = np.tile(np.array([[200, 30, 30, 255]], np.uint8), (len(mesh.vertices), 1))
    assert np.array_equal(smooth_vertex_colors(flat, faces, 2), flat)
    noisy = flat.copy()
    noisy[:, :3] = np.clip(flat[:, :3] + rng.normal(0, 40, (len(flat), 3)), 0, 255).astype(np.uint8)
    smoothed = smooth_vertex_colors(noisy, faces, 2)
    before, after = noisy[:, 0].astype(float).std(), smoothed[:, 0].astype(float).std()
    print(f"red channel std {before:.1f} -> {after:.1f}")
    assert after < 0.4 * before and np.array_equal(smoothed[:, 3], noisy[:, 3])
    assert np.array_equal(smooth_vertex_colors(noisy, faces, 0), noisy)


def test_contact_sheet_grid():
    a, b = np.zeros((8, 6, 3)), np.ones((8, 4, 1))
    sheet = contact_sheet([[a, b], [a]], gap=2)
    assert sheet.shape == (8 + 2 + 8, 6 + 2 + 4, 3) and sheet.dtype == np.uint8
    assert (sheet[:8, 6:8] == 255).all() and (sheet[8:10] == 255).all()  # white gaps
    assert (sheet[10:, 6:] == 255).all() and (sheet[:8, 8:] == 255).all() and (sheet[:8, :6] == 0).all()
    with pytest.raises(ValueError, match="differ in height"):
        contact_sheet([[a, np.zeros((9, 6, 3))]])
