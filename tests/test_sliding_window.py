"""Sliding-window many-view evaluation on the real tiny MultiViewUNetModel (random weights)."""
import mindspore as ms
import numpy as np
import pytest
import torch

from mindspore_impl.mvdream import samplers as mss
from mindspore_impl.mvdream.cameras import get_camera
from mindspore_impl.mvdream.schedule import make_alphas_cumprod
from mindspore_impl.mvdream.sliding_window import sliding_window_eps_fn
from neutral.mvdream.sliding_window import plan_windows, window_indices
from tests.parity import assert_parity
from tests.tiny_mvdream_models import tiny_unet_pair
from torch_ref.mvdream import sliding_window as tsw


@pytest.fixture(scope="module")
def unets():
    return tiny_unet_pair(seed=3)


def ms_fn(unet):
    return lambda x, t, c, cam, f: unet(x, t, c, cam, num_frames=f)


def data(n, ctx_dim, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n, 4, 8, 8)).astype(np.float32)
    c = rng.standard_normal((1, 77, ctx_dim)).astype(np.float32)
    uc = rng.standard_normal((1, 77, ctx_dim)).astype(np.float32)
    return x, c, uc, get_camera(n, 15, 90)


def test_window_plan():
    assert [window_indices(n, 6) for n in range(6)] == [(0,), (0, 1), (1, 2, 0), (2, 3, 0), (3, 4, 0), (4, 5, 0)]
    assert window_indices(4, 6, window=None) == tuple(range(6)) == window_indices(4, 6, window=6)
    assert window_indices(5, 8, window=4) == (3, 4, 5, 0) and window_indices(2, 8, window=4) == (0, 1, 2)
    assert window_indices(3, 8, window=1) == (3,)
    assert plan_windows(5, None) == {(0, 1, 2, 3, 4): [0, 1, 2, 3, 4]}  # one joint call
    # the window, not N, bounds the views per UNet call
    assert max(len(w) for w in plan_windows(100)) == 3
    with pytest.raises(ValueError):
        window_indices(6, 6)


def test_full_window_equals_joint_attention(unets):
    m, _, cd = unets
    n, t, scale = 4, 700, 5.0
    x, c, uc, cam = data(n, cd)
    fn = ms_fn(m)
    full = mss.guided_eps_fn(fn, ms.Tensor(np.repeat(c, n, 0)), ms.Tensor(np.repeat(uc, n, 0)), scale,
                             ms.Tensor(cam), n)(ms.Tensor(x), t)
    win = sliding_window_eps_fn(fn, ms.Tensor(c), ms.Tensor(uc), ms.Tensor(cam), scale, window=n)(ms.Tensor(x), t)
    assert_parity(win, full, "window=N vs full joint attention", rel=1e-6)
    # the sliding window really differs from full attention (views see fewer views)
    slide = sliding_window_eps_fn(fn, ms.Tensor(c), ms.Tensor(uc), ms.Tensor(cam), scale, window=2)(ms.Tensor(x), t)
    assert float(np.abs(slide.asnumpy()[1:] - full.asnumpy()[1:]).max()) > 1e-5
    # view 0's window is [0] in both sliding schemes
    assert_parity(slide[:1], sliding_window_eps_fn(fn, ms.Tensor(c), ms.Tensor(uc), ms.Tensor(cam), scale)(
        ms.Tensor(x), t)[:1], "view 0 (window [0])", rel=1e-6)


def test_views_outside_window_do_not_matter(unets):
    m, _, cd = unets
    n, t = 5, 400
    x, c, _, cam = data(n, cd, seed=1)
    eps_fn = sliding_window_eps_fn(ms_fn(m), ms.Tensor(c), None, ms.Tensor(cam), 1.0)  # view 4: [3, 4, 0]
    base = eps_fn(ms.Tensor(x), t).asnumpy()
    outside = x.copy()
    outside[1:3] += np.random.RandomState(2).standard_normal(outside[1:3].shape).astype(np.float32)
    pert = eps_fn(ms.Tensor(outside), t).asnumpy()
    assert np.array_equal(pert[4], base[4]), f"view 4 moved by {np.abs(pert[4] - base[4]).max()}"
    assert np.array_equal(pert[0], base[0])
    assert np.abs(pert[3] - base[3]).max() > 1e-5  # view 3's window [2, 3, 0] includes view 2
    inside = x.copy()
    inside[3] += 1.0
    assert np.abs(eps_fn(ms.Tensor(inside), t).asnumpy()[4] - base[4]).max() > 1e-5  # neighbour 3 is attended


def test_sliding_window_twin_and_batched_windows(unets):
    m, tm, cd = unets
    n, t, scale = 5, 900, 4.0
    x, c, uc, cam = data(n, cd, seed=2)
    a = sliding_window_eps_fn(ms_fn(m), ms.Tensor(c), ms.Tensor(uc), ms.Tensor(cam), scale,
                              windows_per_call=3)(ms.Tensor(x), t)
    tfn = lambda x, t, c, cam, f: tm(x, t, context=c, camera=cam, num_frames=f)  # noqa: E731
    with torch.no_grad():
        r = tsw.sliding_window_eps_fn(tfn, torch.tensor(c), torch.tensor(uc), torch.tensor(cam), scale)(
            torch.tensor(x), t)
    assert_parity(a, r, "sliding window eps (3 windows per call) vs torch twin (1 per call)", rel=1e-4)


def test_final_latent_of_view_n_ignores_later_views(unets):
    """Over a whole sampling run view n depends on every view <= n (n - 1 was conditioned on n - 2 a step
    earlier) and on none after n: changing the start noise of view 3 leaves views 0-2 bit-identical.
    UniPC: the multistep sampler that keeps the most state across steps (DDIM keeps none; DPM-Solver++(2M)
    with the sliding window runs end to end in tests/test_t2i.py)."""
    sampler = "unipc"
    m, _, cd = unets
    n, steps = 4, 2  # 2 steps carry view 1 to view 3
    x, c, uc, cam = data(n, cd, seed=4)
    eps_fn = sliding_window_eps_fn(ms_fn(m), ms.Tensor(c), ms.Tensor(uc), ms.Tensor(cam), 3.0)
    ac = make_alphas_cumprod()

    def run(x_T):
        return mss.sample(sampler, eps_fn, ms.Tensor(x_T), ac, steps).asnumpy()

    base = run(x)
    later = x.copy()
    later[3:] = np.random.RandomState(5).standard_normal(later[3:].shape).astype(np.float32)  # view 3
    pert = run(later)
    assert np.array_equal(pert[:3], base[:3]), f"views 0-2 moved by {np.abs(pert[:3] - base[:3]).max()}"
    assert np.abs(pert[3:] - base[3:]).max() > 1e-3
    # view 1 reaches view 3 through the chain of windows [1, 2, 0], [2, 3, 0]: one more view per step
    earlier = x.copy()
    earlier[1] += 0.5
    moved = np.abs(run(earlier) - base).reshape(n, -1).max(axis=1)
    # (the tiny random UNet couples views weakly; the run is deterministic, so any change is a dependence)
    assert moved[0] == 0.0 and (moved[1:] > 0.0).all(), moved
