"""Samplers: a full tiny sampling run gives the same latents in MindSpore and PyTorch.

Both runs use the same fixed x_T and per-step noise (numpy RNG), classifier-free guidance with a
negative-prompt context, cameras, and the tiny MultiViewUNetModel with random weights moved from
torch to MindSpore through the project's converter.
"""
import mindspore as ms
import numpy as np
import pytest

from mindspore_impl.mvdream import samplers as mss
from mindspore_impl.mvdream.schedule import NoiseSchedule, make_alphas_cumprod
from tests.parity import assert_parity, to_numpy, to_torch, torch_module
from tests.parity_cases import ms_unet_fn as _ms_model_fn
from tests.parity_cases import run_samplers as _run_both
from tests.parity_cases import sampler_inputs as _inputs
from tests.parity_cases import stand_in_ms as _stand_in_ms
from tests.parity_cases import stand_in_torch as _stand_in_torch
from tests.parity_cases import torch_unet_fn as _torch_model_fn
from tests.tiny_mvdream_models import tiny_unet_pair
from torch_ref.mvdream import samplers as ts
from torch_ref.mvdream.schedule import NoiseSchedule as TNoiseSchedule


@pytest.fixture(scope="module")
def unets():
    ms_unet, t_unet, ctx_dim = tiny_unet_pair(seed=0)
    return ms_unet, torch_module(t_unet), ctx_dim


def test_schedule_values_and_q_sample():
    ac = make_alphas_cumprod()
    # pinned: scaled-linear SD schedule
    assert ac[0] == pytest.approx(1 - 0.00085, abs=1e-7)
    assert ac[-1] == pytest.approx(0.0046600, rel=1e-3)
    rng = np.random.RandomState(0)
    x0, noise = rng.standard_normal((2, 4, 8, 8)).astype(np.float32), rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([10, 900])
    a = NoiseSchedule().q_sample(ms.Tensor(x0), ms.Tensor(t.astype(np.int32)), ms.Tensor(noise))
    r = torch_module(TNoiseSchedule()).q_sample(to_torch(x0), to_torch(t), to_torch(noise))
    expect = np.sqrt(ac[t])[:, None, None, None] * x0 + np.sqrt(1 - ac[t])[:, None, None, None] * noise
    assert_parity(a, r, "q_sample", rel=1e-6)
    assert_parity(a, expect, "q_sample vs formula", rel=1e-6)


def test_ddim_timesteps_match_ldm():
    np.testing.assert_array_equal(mss.ddim_timesteps(50)[:4], [1, 21, 41, 61])
    assert mss.ddim_timesteps(50)[-1] == 981 and len(mss.ddim_timesteps(50)) == 50
    sig, a, ap = mss.ddim_parameters(make_alphas_cumprod(), mss.ddim_timesteps(10), eta=1.0)
    ac = make_alphas_cumprod()
    assert ap[0] == ac[0] and a[0] == ac[1]
    np.testing.assert_allclose(sig, np.sqrt((1 - ap) / (1 - a) * (1 - a / ap)), rtol=1e-5)


def test_dpmpp_schedule_twin():
    ac = make_alphas_cumprod()
    for karras in (False, True):
        t1, s1 = mss.dpmpp_schedule(ac, 20, karras)
        t2, s2 = ts.dpmpp_schedule(ac, 20, karras)
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_allclose(s1, to_numpy(s2), rtol=1e-6)  # host math in both trees
        assert s1[-1] == 0 and t1[0] == 999 and len(t1) == 20


@pytest.mark.parametrize("sampler,eta,karras", [("ddim", 0.0, False), ("ddim", 1.0, False),
                                                ("dpmpp2m", 0.0, False), ("dpmpp2m", 0.0, True)])
def test_sampler_parity_stand_in_50_steps(sampler, eta, karras):
    """Long schedules (50 / 20 steps) on a cheap stand-in model: every step's coefficients."""
    x_T, c, uc, cam = _inputs(8)
    steps = 50 if sampler == "ddim" else 20
    out_ms, out_t = _run_both(_stand_in_ms, _stand_in_torch, x_T, c, uc, cam, sampler, steps, eta, karras, 7.5)
    assert_parity(out_ms, out_t, f"stand-in {sampler} eta={eta} karras={karras} {steps} steps", rel=1e-4)
    assert float(np.abs(out_ms.asnumpy() - x_T).max()) > 0.1


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpmpp2m", 0.0)])
def test_clip_x0_parity_and_bounds(sampler, eta):
    """Pixel-space sampling clips x0 to [-1, 1] (DDPM's clip_denoised): same in both trees, the result stays in
    [-1, 1] on the demo model's near-zero-terminal-SNR schedule where the unclipped stand-in leaves it."""
    x_T, c, uc, cam = _inputs(8)
    ac = make_alphas_cumprod(1000, 1e-4, 0.02, "sqrt_linear")
    steps = 20
    out_ms, out_t = _run_both(_stand_in_ms, _stand_in_torch, x_T, c, uc, cam, sampler, steps, eta, False, 7.5,
                              clip_x0=1.0, ac=ac)
    free, _ = _run_both(_stand_in_ms, _stand_in_torch, x_T, c, uc, cam, sampler, steps, eta, False, 7.5, ac=ac)
    got = out_ms.asnumpy()
    print(f"{sampler} eta={eta}: clipped max |x0| {np.abs(got).max():.3f}, unclipped {np.abs(free.asnumpy()).max():.1f}")
    assert_parity(out_ms, out_t, f"clip_x0 {sampler} eta={eta}", rel=1e-4)
    assert np.abs(free.asnumpy()).max() > 1.5
    assert np.abs(got).max() < 1.1  # the last DDIM step adds sqrt(1 - a_0) eps (a_0 = 0.9999)


@pytest.mark.parametrize("sampler,eta,karras,steps", [("ddim", 0.5, False, 4), ("dpmpp2m", 0.0, True, 4)])
def test_sampler_parity_tiny_unet(unets, sampler, eta, karras, steps):
    """Full tiny sampling runs through the real MultiViewUNetModel (random weights), CFG + cameras."""
    ms_unet, t_unet, ctx_dim = unets
    x_T, c, uc, cam = _inputs(ctx_dim)
    out_ms, out_t = _run_both(_ms_model_fn(ms_unet), _torch_model_fn(t_unet), x_T, c, uc, cam,
                              sampler, steps, eta, karras, 3.0)
    assert_parity(out_ms, out_t, f"tiny UNet {sampler} eta={eta} karras={karras} {steps} steps", rel=1e-4)
    assert np.all(np.isfinite(out_ms.asnumpy()))
    assert float(np.abs(out_ms.asnumpy() - x_T).max()) > 0.1


def _run_unipc(ms_model_fn, t_model_fn, ctx_dim, steps, order, variant, scale, karras=False, clip_x0=None, ac=None):
    """tests/parity_cases.run_samplers with UniPC's order and variant -> (MindSpore, torch, x_T)."""
    import torch
    x_T, c, uc, cam = _inputs(ctx_dim)
    ac = make_alphas_cumprod() if ac is None else ac
    f = x_T.shape[0]
    ms_eps = mss.guided_eps_fn(ms_model_fn, ms.Tensor(c), ms.Tensor(uc), scale, ms.Tensor(cam), f)
    t_eps = ts.guided_eps_fn(t_model_fn, to_torch(c), to_torch(uc), scale, to_torch(cam), f)
    kw = dict(karras=karras, clip_x0=clip_x0, order=order, variant=variant)
    out_ms = mss.sample("unipc", ms_eps, ms.Tensor(x_T), ac, steps, **kw)
    with torch.no_grad():
        out_t = ts.sample("unipc", t_eps, to_torch(x_T), ac, steps, **kw)
    return out_ms, out_t, x_T


@pytest.mark.parametrize("variant,order,karras", [("bh2", 2, False), ("bh1", 3, False), ("bh2", 3, True),
                                                  ("bh1", 1, False)])
def test_unipc_parity_stand_in_20_steps(variant, order, karras):
    """UniPC (predictor + corrector, history over all views at once) on the stand-in model, CFG 7.5."""
    out_ms, out_t, x_T = _run_unipc(_stand_in_ms, _stand_in_torch, 8, 20, order, variant, 7.5, karras)
    assert_parity(out_ms, out_t, f"stand-in UniPC {variant} order {order} karras={karras} 20 steps", rel=1e-4)
    assert float(np.abs(out_ms.asnumpy() - x_T).max()) > 0.1


def test_unipc_clip_x0_parity_and_bounds():
    """Pixel-space sampling: the clipped data prediction bounds UniPC's result too (final step x = m0)."""
    ac = make_alphas_cumprod(1000, 1e-4, 0.02, "sqrt_linear")
    out_ms, out_t, _ = _run_unipc(_stand_in_ms, _stand_in_torch, 8, 20, 2, "bh2", 7.5, clip_x0=1.0, ac=ac)
    assert_parity(out_ms, out_t, "clip_x0 UniPC", rel=1e-4)
    assert np.abs(out_ms.asnumpy()).max() <= 1.0 + 1e-6


def test_unipc_parity_tiny_unet(unets):
    """A full tiny UniPC run through the real MultiViewUNetModel (random weights), CFG + cameras."""
    ms_unet, t_unet, ctx_dim = unets
    out_ms, out_t, x_T = _run_unipc(_ms_model_fn(ms_unet), _torch_model_fn(t_unet), ctx_dim, 4, 3, "bh2", 3.0)
    assert_parity(out_ms, out_t, "tiny UNet UniPC bh2 order 3 4 steps", rel=1e-4)
    assert np.all(np.isfinite(out_ms.asnumpy()))
    assert float(np.abs(out_ms.asnumpy() - x_T).max()) > 0.1


def test_bad_step_counts_and_names():
    with pytest.raises(ValueError, match="3 steps would sample timestep 1000"):
        mss.ddim_timesteps(3)
    with pytest.raises(ValueError, match="unknown sampler"):
        mss.sample("euler", None, None, make_alphas_cumprod(), 10)
    with pytest.raises(ValueError, match="needs a numpy rng"):
        mss.sample_ddim(lambda x, t: x, ms.Tensor(np.zeros((1, 4, 2, 2), np.float32)), make_alphas_cumprod(), 10,
                        eta=1.0)


def test_q_sample_graph_mode_equals_pynative():
    """NoiseSchedule runs inside GRAPH-mode training steps (SDS guidance)."""
    sched = NoiseSchedule()
    rng = np.random.RandomState(3)
    x0, noise = (ms.Tensor(rng.standard_normal((4, 4, 8, 8)).astype(np.float32)) for _ in range(2))
    t = ms.Tensor(np.array([1, 250, 500, 999], dtype=np.int32))
    eager = sched(x0, t, noise)
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = sched(x0, t, noise)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert_parity(graph, eager, "q_sample GRAPH vs PyNative", rel=1e-6)


@pytest.mark.parametrize("beta_schedule,end", [("linear", 0.0683), ("sqrt_linear", 0.00635)])
def test_beta_schedules_match_torch_and_pinned_ends(beta_schedule, end):
    """LDM's "linear" (scaled, SD) and "sqrt_linear" (DDPM's true linear, the demo model's) schedules."""
    from neutral.mvdream.model_config import load_model_config
    from torch_ref.mvdream.schedule import schedule_from_config as t_from_config
    from mindspore_impl.mvdream.schedule import schedule_from_config
    params = {"sqrt_linear": load_model_config("configs/demo-model.yaml"),
              "linear": load_model_config("configs/sd-v2-base.yaml")}[beta_schedule]
    ac = schedule_from_config(params)
    print(beta_schedule, "sqrt(alpha_bar) at t=999:", float(np.sqrt(ac[-1])))
    np.testing.assert_array_equal(ac, t_from_config(params))
    assert np.sqrt(ac[-1]) == pytest.approx(end, abs=5e-4)
    np.testing.assert_allclose(NoiseSchedule.from_config(params).alphas_cumprod.asnumpy(), ac)
    with pytest.raises(ValueError, match="beta_schedule must be"):
        make_alphas_cumprod(beta_schedule="cosine")
