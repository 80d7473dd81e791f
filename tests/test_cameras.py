"""MVDream camera matrices: pinned values, orthonormality, Blender conversion, twins agree."""
import mindspore as ms
import numpy as np
import pytest
import torch

from mindspore_impl.mvdream import cameras as msc
from torch_ref.mvdream import cameras as tc


def test_front_camera_values():
    m = msc.create_camera_to_world_matrix(0, 0)
    np.testing.assert_allclose(m, np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1.0]]), atol=1e-12)
    b = msc.convert_opengl_to_blender(m)
    # z-up: the OpenGL +z camera position (0,0,1) becomes (0,-1,0); rows are (x, -z, y)
    np.testing.assert_allclose(b[:3, 3], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(b, msc.FLIP_YZ @ m, atol=0)


@pytest.mark.parametrize("elev,azim", [(15, 0), (15, 90), (30, 200), (-10, 45)])
def test_position_and_orthonormal_rotation(elev, azim):
    m = msc.create_camera_to_world_matrix(elev, azim)
    e, a = np.radians(elev), np.radians(azim)
    np.testing.assert_allclose(m[:3, 3], [np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)], atol=1e-12)
    r = m[:3, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(r) - 1) < 1e-12
    # the camera looks at the origin: -z axis (column 2 negated) points from position to origin
    np.testing.assert_allclose(-r[:, 2], -m[:3, 3] / np.linalg.norm(m[:3, 3]), atol=1e-12)
    # up has no negative world-y component for |elev| < 90
    assert r[1, 1] > 0


def test_get_camera_shapes_azimuths_and_twin():
    cams = msc.get_camera(4, elevation=15, azimuth_start=90, azimuth_span=360)
    assert cams.shape == (4, 16) and cams.dtype == np.float32
    ref = tc.get_camera(4, elevation=15, azimuth_start=90, azimuth_span=360)
    np.testing.assert_allclose(cams, ref.numpy(), atol=0)
    # view i sits at azimuth 90 + 90 i: blender position = (cos e sin a, -cos e cos a, sin e)
    e = np.radians(15)
    for i, a_deg in enumerate([90, 180, 270, 360]):
        a = np.radians(a_deg)
        pos = cams[i].reshape(4, 4)[:3, 3]
        np.testing.assert_allclose(pos, [np.cos(e) * np.sin(a), -np.cos(e) * np.cos(a), np.sin(e)], atol=1e-6)
    # spans that do not divide evenly still give exactly n views (upstream np.arange can give n+1)
    for n in (3, 7, 16, 100):
        assert msc.get_camera(n, azimuth_span=360).shape == (n, 16)
    assert msc.get_camera(4, blender_coord=False)[0].reshape(4, 4)[2, 3] == pytest.approx(np.cos(e))


def test_normalize_camera_no_in_place_and_frameworks():
    rng = np.random.default_rng(0)
    c2w = np.stack([msc.create_camera_to_world_matrix(10, a) for a in (0, 70, 140)])
    c2w[:, :3, 3] *= rng.uniform(1.5, 3.0, size=(3, 1))
    before = c2w.copy()
    out = msc.normalize_camera(c2w)
    assert out.shape == (3, 16)
    np.testing.assert_array_equal(c2w, before)  # input untouched
    np.testing.assert_allclose(np.linalg.norm(out.reshape(3, 4, 4)[:, :3, 3], axis=1), 1.0, atol=1e-7)
    np.testing.assert_allclose(out.reshape(3, 4, 4)[:, :3, :3], c2w[:, :3, :3], atol=0)
    ms_out = msc.normalize_camera(ms.Tensor(c2w.astype(np.float32)))
    np.testing.assert_allclose(ms_out.asnumpy(), out, atol=1e-6)
    t_in = torch.tensor(c2w, dtype=torch.float32)
    t_out = tc.normalize_camera(t_in)
    np.testing.assert_allclose(t_out.numpy(), out, atol=1e-6)
    np.testing.assert_array_equal(t_in.numpy(), before.astype(np.float32))
