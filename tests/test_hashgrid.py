"""Hash-grid encoding vs an independent numpy evaluation of tinycudann's HashGrid (grid.h)."""
import math

import numpy as np
import pytest

import mindspore as ms

from mindspore_impl.lift3d.geometry.hashgrid import HashGrid
from neutral.lift3d.hashgrid import level_layouts, parse_hashgrid_config
from tests.parity import assert_parity, to_numpy, to_torch
from tests.parity_cases import HASHGRID_SMALL as SMALL
from tests.parity_cases import HASHGRID_UPSTREAM as UPSTREAM
from tests.parity_cases import hashgrid_params as big_params
from tests.parity_cases import hashgrid_points as random_points
from tests.parity_cases import ms_hashgrid as make_ms
from tests.parity_cases import np_encode, np_layout, torch_hashgrid


def test_small_layout_has_dense_and_hashed_levels():
    lay = level_layouts(parse_hashgrid_config(SMALL))
    ref = np_layout(SMALL)
    assert [(l.resolution, l.offset, l.size, l.dense) for l in lay] == [r[1:] for r in ref]
    assert [l.dense for l in lay] == [True, True] + [False] * 6
    assert lay[0].size == 512 and lay[1].size == 1728 and lay[2].size == 4096


@pytest.mark.parametrize("cfg", [SMALL, UPSTREAM], ids=["small", "upstream"])
def test_encoding_matches_numpy_tcnn_formula(cfg):
    n_rows = sum(r[3] for r in np_layout(cfg))
    params = big_params(n_rows * cfg["n_features_per_level"])
    x = random_points(300 if cfg is SMALL else 64)
    ref, _, _ = np_encode(x, params, cfg)
    out = make_ms(cfg, params)(ms.Tensor(x))
    assert out.shape == (len(x), cfg["n_levels"] * cfg["n_features_per_level"])
    assert_parity(out, ref, f"hashgrid[{len(x)} pts] vs numpy grid.h", rel=1e-5)
    tgrid = torch_hashgrid(cfg, params)
    assert_parity(tgrid(to_torch(x)), ref, "torch_ref hashgrid vs numpy grid.h", rel=1e-5)


def test_upstream_config_resolutions():
    lay = level_layouts(parse_hashgrid_config(UPSTREAM))
    assert len(lay) == 16
    assert lay[0].resolution == 16 and lay[-1].resolution == 4096  # max resolution of mvdream-sd21.yaml
    assert math.isclose(16 * 1.447269237440378 ** 15, 4096.0, rel_tol=1e-9)
    assert [l.dense for l in lay] == [True] * 5 + [False] * 11
    assert [l.size for l in lay[:5]] == [4096, 13824, 39304, 117656, 357912]
    assert all(l.size == 2 ** 19 for l in lay[5:])
    grid = HashGrid(3, UPSTREAM)
    assert grid.params.shape == (2 * (532792 + 11 * 2 ** 19),)
    assert grid.n_output_dims == 32


def test_init_range_and_seed():
    a = HashGrid(3, SMALL).params.asnumpy()
    b = HashGrid(3, SMALL).params.asnumpy()
    c = HashGrid(3, dict(SMALL, seed=8)).params.asnumpy()
    assert np.abs(a).max() <= 1e-4 and np.abs(a).max() > 0.99e-4
    assert abs(float(a.mean())) < 5e-6 and a.std() > 5e-5  # uniform: std = 1e-4 / sqrt(3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    from torch_ref.lift3d.geometry.hashgrid import HashGrid as TorchHashGrid
    np.testing.assert_array_equal(to_numpy(TorchHashGrid(3, SMALL).params), a)


def test_table_gradient_only_at_touched_entries():
    cfg = SMALL
    n_rows = sum(r[3] for r in np_layout(cfg))
    params = big_params(n_rows * 2)
    x = random_points(40, seed=5)[3:]  # interior points: all 8 trilinear weights nonzero
    _, rows, weights = np_encode(x, params, cfg)
    dout = np.random.RandomState(1).randn(len(x), cfg["n_levels"] * 2).astype(np.float32)
    grid = make_ms(cfg, params)
    grad_fn = ms.grad(lambda p: (grid(p) * ms.Tensor(dout)).sum(), None, grid.trainable_params())
    g = grad_fn(ms.Tensor(x))[0].asnumpy().reshape(-1, 2)
    # expected: scatter-add of weight * upstream gradient into the touched rows
    expect = np.zeros((n_rows, 2), np.float64)
    d = dout.reshape(len(x), cfg["n_levels"], 1, 2)
    np.add.at(expect, rows.reshape(-1), (weights[..., None] * d).reshape(-1, 2))
    touched = np.zeros(n_rows, bool)
    touched[rows.reshape(-1)] = True
    assert touched.sum() < n_rows // 4
    assert np.all(g[~touched] == 0.0), "gradient leaked into untouched table rows"
    assert np.all(np.abs(g[touched]).sum(-1) > 0)
    assert_parity(g, expect.astype(np.float32), "table gradient vs numpy scatter-add", rel=1e-5)


def test_graph_mode_matches_pynative():
    n_rows = sum(r[3] for r in np_layout(SMALL))
    params = big_params(n_rows * 2)
    x = ms.Tensor(random_points(100))
    grid = make_ms(SMALL, params)
    eager = grid(x).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    compiled = make_ms(SMALL, params)(x).asnumpy()
    assert_parity(compiled, eager, "hashgrid GRAPH vs PyNative", rel=1e-6)


class _WeightedSum(ms.nn.Cell):
    def __init__(self, grid, dout):
        super().__init__()
        self.grid, self.dout = grid, dout

    def construct(self, x):
        return (self.grid(x) * self.dout).sum()


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("cfg", [SMALL, UPSTREAM], ids=["small", "upstream"])
def test_lean_backward_equals_autodiff(cfg, mode):
    """The recomputing bprop gives autodiff's gradients w.r.t. the table and the points."""
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
    n_rows = sum(r[3] for r in np_layout(cfg))
    params = big_params(n_rows * cfg["n_features_per_level"])
    x = random_points(200, seed=11)[3:]
    dout = ms.Tensor(np.random.RandomState(2).randn(len(x), cfg["n_levels"] * cfg["n_features_per_level"])
                     .astype(np.float32))
    grads = {}
    for second_order in (False, True):
        grid = HashGrid(3, cfg, params=params, second_order=second_order)
        fn = ms.grad(_WeightedSum(grid, dout), 0, grid.trainable_params())
        if mode == "graph":
            fn = ms.jit(fn)
        gx, (gt,) = fn(ms.Tensor(x))
        grads[second_order] = (gx.asnumpy(), gt.asnumpy())
    assert type(HashGrid(3, cfg).lookup).__name__ == "HashGridLookup"
    assert_parity(grads[False][1], grads[True][1], f"lean table gradient vs autodiff ({mode})", rel=1e-5)
    assert_parity(grads[False][0], grads[True][0], f"lean point gradient vs autodiff ({mode})", rel=1e-5)
    assert np.abs(grads[True][0]).max() > 0
