"""The shipped demo Zero-1-to-3 model (pretrained/demo-zero123, trained by configs/demo-zero123-training.yaml; README
"Image to 3D"): a few MB, loads strictly, and on views it never trained on (a new azimuth of each demo primitive,
conditioned on the example image's camera) it predicts the noise far better than the same network untrained: what
the image-to-3D guidance distils."""
import os

import numpy as np
import pytest

from mindspore_impl.mvdream.data import primitives as P
from neutral.lift3d.zero123_guidance import DEMO_CHECKPOINT
from neutral.zero123.camera import relative_camera_T
from neutral.zero123.training import images_to_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, DEMO_CHECKPOINT)
MODEL_CONFIG = os.path.join(ROOT, "configs", "demo-zero123-model.yaml")
REF = (15.0, 0.0, 0.9 / np.tan(np.radians(20.0)), 40.0)  # elevation, azimuth, distance, fovy of examples/images
OBJECTS = (("red", "cube"), ("blue", "sphere"), ("green", "cylinder"), ("yellow", "cone"), ("purple", "torus"))
TIMESTEPS = (100, 300, 500)
N_PARAMETERS = 1_132_076  # configs/demo-zero123-model.yaml: UNet, toy image tower, cc_projection
# measured at shipping (azimuth 100 / -150): eps MSE 0.030 / 0.031 at t=100, 0.010 at 300, 0.008 at 500; untrained ~1.0
EPS_MSE_MAX = 0.06


def _params():
    from neutral.mvdream.model_config import load_model_config
    return load_model_config(MODEL_CONFIG)


def test_shipped_model_is_small_and_loads_strictly():
    from mindspore_impl.zero123.loading import load_zero123
    size_mb = os.path.getsize(SHIPPED) / 2 ** 20
    model = load_zero123(SHIPPED, _params())  # strict: every name and shape
    n = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    print(f"{SHIPPED}: {size_mb:.2f} MB, {n:,} parameters")
    assert size_mb < 8.0
    assert n == N_PARAMETERS


def _views(size=32, target_azimuth=100.0, target_elevation=30.0):
    """(cond, target) float (5, 3, size, size) in [-1, 1] over white, and T (5, 4): each demo object from the
    examples' camera and from a view the training set never held exactly."""
    elev, azim, dist, fovy = REF
    cams = P.make_cameras([elev, target_elevation], [azim, target_azimuth], [dist, dist], [fovy, fovy], size)
    cond, target = [], []
    for colour, shape in OBJECTS:
        out = P.render(P.SHAPES[shape], cams["c2w"], [fovy, fovy], size, albedo=P.COLORS[colour])
        u8 = np.round(np.clip(out["rgb"], 0.0, 1.0) * 255.0).astype(np.uint8)
        cond.append(u8[0])
        target.append(u8[1])
    T = relative_camera_T([target_elevation] * 5, [target_azimuth] * 5, [dist] * 5, elev, azim, dist)
    return images_to_model(np.stack(cond)), images_to_model(np.stack(target)), T


def _eps_mse(model, params, cond, target, T, seed=0):
    """Mean eps-prediction MSE over TIMESTEPS with fixed noise (the conditional branch)."""
    import mindspore as ms
    from mindspore_impl.mvdream.schedule import schedule_from_config
    ac = np.asarray(schedule_from_config(params), np.float64)
    model.set_train(False)
    emb, c_concat = model.encode_reference(ms.Tensor(cond))
    c_cross = model.camera_conditioning(emb, ms.Tensor(T))
    z0 = model.first_stage_model.encode_mode(ms.Tensor(target)).asnumpy()
    rng = np.random.default_rng(seed)
    errors = []
    for t in TIMESTEPS:
        noise = rng.standard_normal(z0.shape).astype(np.float32)
        x_t = (np.sqrt(ac[t]) * z0 + np.sqrt(1.0 - ac[t]) * noise).astype(np.float32)
        eps = model.apply_model(ms.Tensor(x_t), ms.Tensor(np.full((len(z0),), t, np.int32)), c_concat, c_cross)
        errors.append(float(np.mean((eps.asnumpy() - noise) ** 2)))
    return errors


@pytest.mark.parametrize("azimuth", [100.0, -150.0])
def test_shipped_model_predicts_the_noise_of_new_views(azimuth):
    from mindspore_impl.zero123.loading import load_zero123
    from mindspore_impl.zero123.model import Zero123
    from mindspore_impl.zero123.training import init_weights
    params = _params()
    cond, target, T = _views(target_azimuth=azimuth)
    trained = _eps_mse(load_zero123(SHIPPED, params), params, cond, target, T)
    untrained = Zero123(params)
    init_weights(untrained, 0)
    fresh = _eps_mse(untrained, params, cond, target, T)
    print(f"azimuth {azimuth}: eps MSE at t={TIMESTEPS}: shipped {np.round(trained, 4)}, untrained "
          f"{np.round(fresh, 4)}")
    assert max(trained) < EPS_MSE_MAX
    assert np.mean(trained) < 0.05 * np.mean(fresh)
