"""The static-shape renderer's forward + backward compiles in GRAPH mode and matches PyNative."""
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

from tests.parity import assert_parity
from mindspore_impl.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground
from mindspore_impl.lift3d.geometry.implicit_volume import ImplicitVolume
from mindspore_impl.lift3d.materials.no_material import NoMaterial
from mindspore_impl.lift3d.renderers import NeRFVolumeRenderer
from neutral.lift3d.nerf_volume_renderer import make_jitter

GEOMETRY = {"radius": 1.0, "normal_type": "analytic",
            "pos_encoding_config": {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2,
                                    "log2_hashmap_size": 10, "base_resolution": 4, "per_level_scale": 2.0},
            "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                                   "n_neurons": 16, "n_hidden_layers": 1}}
RENDERER = {"num_samples_per_ray": 8, "num_importance_samples": 8, "return_comp_normal": True,
            "occ_update_interval": 1}


def build():
    ms.set_seed(0)
    geo = ImplicitVolume(GEOMETRY)
    table = geo.encoding.encoding.encoding.params
    table.set_data(Tensor(np.random.default_rng(0).uniform(-1, 1, table.shape).astype(np.float32)))
    renderer = NeRFVolumeRenderer(RENDERER, geo, NoMaterial(), NeuralEnvironmentMapBackground())
    renderer.update_step(0, np.random.default_rng(5))  # pruning active in both runs
    return renderer


def inputs(b=2, h=4, w=4, jitter_samples=16):
    rng = np.random.default_rng(1)
    o = np.broadcast_to(np.array([0.0, -0.3, 2.4], np.float32), (b, h, w, 3)).copy()
    d = np.concatenate([rng.uniform(-0.4, 0.4, (b, h, w, 2)), -np.ones((b, h, w, 1))], -1).astype(np.float32)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    light = rng.uniform(-2, 2, (b, 3)).astype(np.float32)
    jitter = make_jitter((b, h, w, jitter_samples), seed=2)
    return Tensor(o), Tensor(d), Tensor(light), Tensor(jitter)


def test_render_forward_backward_graph_matches_pynative():
    renderer = build()
    assert 0 < int(renderer.estimator.binaries.asnumpy().sum()) < 32 ** 3
    params = renderer.geometry.trainable_params() + renderer.background.trainable_params()
    g_rgb = Tensor(np.random.default_rng(3).normal(size=(2, 4, 4, 3)).astype(np.float32))

    def loss_fn(o, d, light, jitter):
        out = renderer(o, d, light, jitter)
        orient = (ops.stop_gradient(out["weights"])
                  * ops.clamp((out["normal"] * out["t_dirs"]).sum(axis=-1, keepdims=True), min=0.0) ** 2).sum()
        loss = (out["comp_rgb"] * g_rgb).sum() + orient + out["z_variance"].mean() + out["comp_normal"].mean()
        return loss, out["comp_rgb"], out["depth"], out["opacity"]

    args = inputs(jitter_samples=renderer.jitter_samples)
    step = ms.value_and_grad(loss_fn, grad_position=None, weights=params, has_aux=True)
    (py_loss, py_rgb, py_depth, py_op), py_grads = step(*args)

    ms.set_context(mode=ms.GRAPH_MODE)
    step = ms.value_and_grad(loss_fn, grad_position=None, weights=params, has_aux=True)
    (gr_loss, gr_rgb, gr_depth, gr_op), gr_grads = step(*args)
    ms.set_context(mode=ms.PYNATIVE_MODE)

    assert float(py_op.asnumpy().max()) > 0.1, "the test scene must be visible"
    assert_parity(gr_loss, py_loss, "loss", rel=1e-5)
    assert_parity(gr_rgb, py_rgb, "comp_rgb", rel=1e-5)
    assert_parity(gr_depth, py_depth, "depth", rel=1e-5)
    assert_parity(gr_op, py_op, "opacity", rel=1e-5)
    for p, g_py, g_gr in zip(params, py_grads, gr_grads):
        assert_parity(g_gr, g_py, f"grad {p.name}", rel=1e-5)
    assert float(np.abs(py_grads[0].asnumpy()).max()) > 0.0


def test_compiled_graph_sees_occupancy_and_checkpoint_writes():
    """Host-side writes reach graphs compiled before them (core/parameters.write_parameter): with MindSpore
    2.7.2's Parameter.set_data, this ms.jit closure kept reading the grid it was compiled with."""
    from mindspore_impl.core.checkpoint import load_state_dict
    from mindspore_impl.lift3d.renderers.occupancy_grid import OccupancyGrid

    grid = OccupancyGrid(1.0, 8)
    points = ms.Tensor(np.random.default_rng(0).uniform(-0.9, 0.9, (64, 3)).astype(np.float32))

    @ms.jit
    def occupied_count(x):
        return grid.occupied(x).sum()

    full = float(occupied_count(points).asnumpy())
    grid.update(lambda x: ops.zeros((x.shape[0], 1), ms.float32), 0.01, 0, 0.0, 0.01)  # nothing is occupied
    assert full == 64 and float(occupied_count(points).asnumpy()) == 0
    load_state_dict(grid, {"binaries": np.ones(grid.binaries.shape, np.bool_)}, strict=False)
    assert float(occupied_count(points).asnumpy()) == 64
