"""Our samplers against diffusers' schedulers (an independent implementation, test-only dependency).

The same fake model (a fixed nonlinear numpy function of x and t) drives both sides; the latents are
compared after every step, for the MindSpore samplers (PyNative, CPU) and their torch_ref twins. Both
sides use diffusers' own alphas_cumprod (float32 cumprod; ours, from float64 betas, agrees to ~1e-6),
so the comparison is of the sampling maths. The diffusers configurations that compute what we compute,
on top of the SD schedule (num_train_timesteps 1000, beta_start 0.00085, beta_end 0.012,
beta_schedule "scaled_linear" = LDM's "linear"), prediction_type "epsilon":

- DDIM (LDM's DDIMSampler, eta 0): DDIMScheduler(clip_sample=False, set_alpha_to_one=False,
  timestep_spacing="leading", steps_offset=1), step(eta=0). "leading" + offset 1 is LDM's uniform
  range(0, T, T // S) + 1 and set_alpha_to_one=False its alphas_prev[0] = alphas_cumprod[0]. Equal only
  where S divides T: otherwise LDM takes ceil(T / (T // S)) steps and diffusers S.
- DPM++ 2M: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
  solver_type="midpoint", timestep_spacing="linspace", final_sigmas_type="zero",
  use_karras_sigmas=karras) (lower_order_final on: the last step to sigma 0 is first order).
- UniPC: UniPCMultistepScheduler(solver_order=order, solver_type=variant, predict_x0=True,
  lower_order_final=True, disable_corrector=[], timestep_spacing="linspace", final_sigmas_type="zero",
  use_karras_sigmas=karras). diffusers 0.35.2 drops the order near the end at every step count (not only
  below 15 steps, which its docstring says). Its bh1 final step to sigma 0 is nan (B(h) = hh = -inf
  times a zero residual); ours takes the limit x = m0 (the step is first order, where bh1 = bh2), so for
  bh1 the final latent is compared with diffusers' last data prediction.
"""
import mindspore as ms
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from mindspore_impl.mvdream import samplers as mss
from mindspore_impl.mvdream.schedule import make_alphas_cumprod
from torch_ref.mvdream import samplers as ts

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          prediction_type="epsilon")
REL = 1e-5
SHAPE = (4, 4, 8, 8)  # 4 views


def make_fake_eps(ac: np.ndarray):
    """eps of a model whose data prediction is x0 = 0.8 tanh(W + 0.5 x + 0.2 roll(x)) cos(t / 700)."""
    w = np.random.RandomState(7).standard_normal(SHAPE[1:]).astype(np.float32)

    def eps(x: np.ndarray, t: int) -> np.ndarray:
        x0 = 0.8 * np.tanh(w + 0.5 * x + 0.2 * np.roll(x, 1, axis=1)) * np.cos(t / 700.0)
        a = float(ac[t])
        return ((x - np.sqrt(a) * x0) / np.sqrt(1.0 - a)).astype(np.float32)
    return eps


def x_T():
    return np.random.RandomState(3).standard_normal(SHAPE).astype(np.float32)


def run_diffusers(sched, steps: int, step_kw=None):
    """(timesteps, latents after each step, last data prediction) from diffusers' loop."""
    sched.set_timesteps(steps)
    eps = make_fake_eps(sched.alphas_cumprod.numpy())
    x, out = torch.from_numpy(x_T()), []
    for t in sched.timesteps:
        e = torch.from_numpy(eps(x.numpy(), int(t)))
        x = sched.step(e, t, x, **(step_kw or {})).prev_sample
        out.append(x.numpy().copy())
    last_x0 = sched.model_outputs[-1].numpy() if hasattr(sched, "model_outputs") else None
    return sched.timesteps.numpy(), out, last_x0


def run_ours(tree: str, name: str, ac: np.ndarray, steps: int, **kw):
    """Latents after each step from our sampler (tree "ms" or "torch")."""
    eps, out = make_fake_eps(ac), []
    if tree == "ms":
        mss.sample(name, lambda x, t: ms.Tensor(eps(x.asnumpy(), t)), ms.Tensor(x_T()), ac, steps,
                   callback=lambda i, x: out.append(x.asnumpy()), **kw)
    else:
        ts.sample(name, lambda x, t: torch.from_numpy(eps(x.numpy(), t)), torch.from_numpy(x_T()), ac, steps,
                  callback=lambda i, x: out.append(x.numpy().copy()), **kw)
    return out


def compare(ours, ref, label: str) -> float:
    """Max error over all steps relative to max(1, max |reference|); asserts <= REL at every step."""
    assert len(ours) == len(ref), label
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert np.all(np.isfinite(a)), f"{label}: step {i} not finite"
        err = float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))
        assert err <= REL, f"{label}: step {i} rel err {err:.2e}"
        worst = max(worst, err)
    print(f"{label}: max rel err {worst:.1e} over {len(ref)} steps")
    return worst


def test_alphas_cumprod_match_diffusers():
    ref = DDIMScheduler(**SD).alphas_cumprod.numpy()
    np.testing.assert_allclose(make_alphas_cumprod(), ref, rtol=2e-6)
    for cls in (DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        np.testing.assert_array_equal(cls(**SD).alphas_cumprod.numpy(), ref)


@pytest.mark.parametrize("tree", ["ms", "torch"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_matches_diffusers(tree, steps):
    sched = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading",
                          steps_offset=1)
    t_ref, ref, _ = run_diffusers(sched, steps, {"eta": 0.0})
    np.testing.assert_array_equal(mss.ddim_timesteps(steps)[::-1], t_ref)
    compare(run_ours(tree, "ddim", sched.alphas_cumprod.numpy(), steps, eta=0.0), ref, f"DDIM {tree} {steps}")


@pytest.mark.parametrize("tree", ["ms", "torch"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_matches_diffusers(tree, karras, steps):
    sched = DPMSolverMultistepScheduler(**SD, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                        timestep_spacing="linspace", final_sigmas_type="zero",
                                        use_karras_sigmas=karras)
    t_ref, ref, _ = run_diffusers(sched, steps)
    t_ours, sig_ours = mss.dpmpp_schedule(sched.alphas_cumprod.numpy(), steps, karras)
    np.testing.assert_array_equal(t_ours, t_ref)
    np.testing.assert_allclose(sig_ours, sched.sigmas.numpy(), rtol=1e-6)
    compare(run_ours(tree, "dpmpp2m", sched.alphas_cumprod.numpy(), steps, karras=karras), ref,
            f"DPM++ 2M {tree} karras={karras} {steps}")


def unipc_scheduler(order, variant, karras=False):
    return UniPCMultistepScheduler(**SD, solver_order=order, solver_type=variant, predict_x0=True,
                                   lower_order_final=True, disable_corrector=[], timestep_spacing="linspace",
                                   final_sigmas_type="zero", use_karras_sigmas=karras)


UNIPC_CASES = [(v, o, s) for v in ("bh1", "bh2") for o in (1, 2, 3) for s in (5, 12, 25)] + [("bh2", 2, 2)]


@pytest.mark.parametrize("tree", ["ms", "torch"])
@pytest.mark.parametrize("variant,order,steps", UNIPC_CASES)
def test_unipc_matches_diffusers(tree, variant, order, steps):
    sched = unipc_scheduler(order, variant)
    t_ref, ref, last_x0 = run_diffusers(sched, steps)
    t_ours, _ = mss.dpmpp_schedule(sched.alphas_cumprod.numpy(), steps)
    np.testing.assert_array_equal(t_ours, t_ref)
    if variant == "bh1":  # diffusers' final bh1 step is nan; the limit is its last data prediction
        assert np.isnan(ref[-1]).all()
        ref[-1] = last_x0
    compare(run_ours(tree, "unipc", sched.alphas_cumprod.numpy(), steps, order=order, variant=variant), ref,
            f"UniPC {tree} {variant} order {order} {steps} steps")


@pytest.mark.parametrize("tree", ["ms", "torch"])
def test_unipc_karras_matches_diffusers(tree):
    sched = unipc_scheduler(3, "bh2", karras=True)
    t_ref, ref, _ = run_diffusers(sched, 15)
    np.testing.assert_array_equal(mss.dpmpp_schedule(sched.alphas_cumprod.numpy(), 15, True)[0], t_ref)
    compare(run_ours(tree, "unipc", sched.alphas_cumprod.numpy(), 15, order=3, variant="bh2", karras=True), ref,
            f"UniPC {tree} bh2 order 3 karras 15 steps")


def test_unipc_order_schedule_and_checks():
    """Predictor orders as diffusers' this_order; bad options raise."""
    from neutral.mvdream.samplers import unipc_orders
    assert unipc_orders(5, 3) == [1, 2, 3, 2, 1]
    assert unipc_orders(20, 2)[-2:] == [2, 1] and unipc_orders(1, 3) == [1]
    ac = make_alphas_cumprod()
    with pytest.raises(ValueError, match="order must be one of"):
        mss.sample("unipc", None, None, ac, 10, order=4)
    with pytest.raises(ValueError, match="variant must be one of"):
        mss.sample("unipc", None, None, ac, 10, variant="bh3")
    with pytest.raises(ValueError, match="unipc is deterministic"):
        mss.sample("unipc", None, None, ac, 10, eta=0.5)
