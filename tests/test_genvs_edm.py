"""GeNVS EDM building blocks (mindspore_impl/genvs/edm.py, torch_ref/genvs/edm.py, neutral/genvs/edm.py).

- parity of EDMPrecond, the loss (and its parameter gradients), uniform_noise_dropout and sample_edm between
  MindSpore and torch_ref, on a tiny stand-in conv net with the same weights;
- exactness against the Gaussian case of Karras et al. 2022: for data N(0, sd^2 I) the ideal denoiser is
  D(x; s) = x sd^2 / (s^2 + sd^2) and the probability-flow ODE maps x(s_max) to x(s_max) sd / sqrt(s_max^2 +
  sd^2). Measured (float32, Karras sigmas 0.002..80, rho 7), relative error of the deterministic sampler:
  Heun 4.4e-2 / 9.8e-3 / 2.3e-3 at 20 / 40 / 80 steps (x4.5, x4.2 per halving: second order), Euler 7.0e-2
  at 40 steps (x2 per halving: first order);
- coefficient identities, schedule, churn, training-sigma draws and config checks.
"""
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn as msnn
from mindspore import ops

from mindspore_impl.genvs import edm as mse
from neutral.genvs.edm import (EDMSamplerConfig, check_edm_sampler, churn_gamma, draw_cond_dropout,
                               edm_loss_weight, edm_precond_coefficients, karras_sigmas, sample_training_sigmas,
                               step_gammas)
from tests.parity import assert_parity, to_numpy, to_torch, torch_module
from torch_ref.genvs import edm as tse

SD = 0.5
C, CC, B, H = 3, 2, 2, 8  # image channels, conditioning channels, batch, side


# ----------------------------------------------------------------------------- tiny stand-in nets
class TinyNetMS(msnn.Cell):
    """F, u = split(conv([x_in, cond]) + emb c_noise); u_mode: pixel (u like F), sample (u (B,)), zero, none."""

    def __init__(self, u_mode="pixel"):
        super().__init__()
        self.u_mode = u_mode
        self.conv = msnn.Conv2d(C + CC, 2 * C, 3, pad_mode="pad", padding=1, has_bias=True)
        self.emb = ms.Parameter(ms.Tensor(np.zeros(2 * C, np.float32)), name="emb")

    def construct(self, x_in, c_noise, cond):
        out = self.conv(ops.concat([x_in, cond], 1)) + self.emb.reshape(1, -1, 1, 1) * c_noise.reshape(-1, 1, 1, 1)
        f, u = out[:, :C], out[:, C:]
        if self.u_mode == "none":
            return f
        if self.u_mode == "zero":
            return f, ops.zeros_like(u)
        return f, (u.mean(axis=(1, 2, 3)) if self.u_mode == "sample" else u)


class TinyNetTorch(torch.nn.Module):
    def __init__(self, u_mode="pixel"):
        super().__init__()
        self.u_mode = u_mode
        self.conv = torch.nn.Conv2d(C + CC, 2 * C, 3, padding=1, bias=True)
        self.emb = torch.nn.Parameter(torch.zeros(2 * C))

    def forward(self, x_in, c_noise, cond):
        out = self.conv(torch.cat([x_in, cond], 1)) + self.emb.reshape(1, -1, 1, 1) * c_noise.reshape(-1, 1, 1, 1)
        f, u = out[:, :C], out[:, C:]
        if self.u_mode == "none":
            return f
        if self.u_mode == "zero":
            return f, torch.zeros_like(u)
        return f, (u.mean(dim=(1, 2, 3)) if self.u_mode == "sample" else u)


def precond_pair(u_mode="pixel", seed=0):
    """(MindSpore EDMPrecond, torch EDMPrecond) with the same random weights (copied through numpy)."""
    torch.manual_seed(seed)
    t_net = TinyNetTorch(u_mode)
    with torch.no_grad():
        t_net.emb.normal_(0.0, 0.3)
        t_net.conv.weight.mul_(0.5)
    ms_net = TinyNetMS(u_mode)
    state = {k: v.detach().numpy() for k, v in t_net.state_dict().items()}
    for p in ms_net.get_parameters():
        key = p.name.split("net.", 1)[-1]
        p.set_data(ms.Tensor(state[key].copy()))
    assert {p.name.split("net.", 1)[-1] for p in ms_net.get_parameters()} == set(state)
    return mse.EDMPrecond(ms_net, SD), torch_module(tse.EDMPrecond(t_net, SD))


def inputs(seed=1):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, (B, C, H, H)).astype(np.float32)
    noise = rng.standard_normal((B, C, H, H)).astype(np.float32)
    cond = rng.uniform(0, 1, (B, CC, H, H)).astype(np.float32)
    sigma = np.array([0.05, 3.0], np.float32)
    return y, noise, cond, sigma


def ms_t(a):
    return ms.Tensor(np.asarray(a))


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("u_mode", ["pixel", "sample", "none"])
def test_precond_and_loss_parity(u_mode):
    p_ms, p_t = precond_pair(u_mode)
    y, noise, cond, sigma = inputs()
    x = y + sigma[:, None, None, None] * noise
    d_ms, u_ms = p_ms(ms_t(x), ms_t(sigma), ms_t(cond))
    d_t, u_t = p_t(to_torch(x), to_torch(sigma), to_torch(cond))
    assert_parity(d_ms, d_t, f"EDMPrecond D ({u_mode})", rel=1e-5)
    assert (u_ms is None) == (u_t is None) == (u_mode == "none")
    if u_ms is not None:
        assert_parity(u_ms, u_t, f"EDMPrecond u ({u_mode})", rel=1e-5)

    params = p_ms.trainable_params()
    grad_fn = ms.value_and_grad(lambda *a: mse.edm_loss(p_ms, *a), None, params)
    loss_ms, grads_ms = grad_fn(ms_t(y), ms_t(noise), ms_t(sigma), ms_t(cond))
    loss_t = tse.edm_loss(p_t, to_torch(y), to_torch(noise), to_torch(sigma), to_torch(cond))
    loss_t.backward()
    assert_parity(loss_ms, loss_t, f"edm_loss ({u_mode})", rel=1e-5)
    t_params = dict(p_t.named_parameters())
    assert len(params) == len(t_params) == 3
    for p, g in zip(params, grads_ms):
        assert_parity(g, t_params[p.name].grad, f"d edm_loss / d {p.name} ({u_mode})", rel=1e-5)


def test_uniform_noise_dropout_parity_and_exact():
    rng = np.random.default_rng(3)
    cond = rng.standard_normal((4, CC, H, H)).astype(np.float32)
    mask, noise = draw_cond_dropout(rng, 4, (CC, H, H), p=0.5)
    mask[:2] = [0.0, 1.0]
    out_ms = mse.uniform_noise_dropout(ms_t(cond), ms_t(mask), ms_t(noise)).asnumpy()
    out_t = to_numpy(tse.uniform_noise_dropout(to_torch(cond), to_torch(mask), to_torch(noise)))
    np.testing.assert_array_equal(out_ms, out_t)
    for i in range(4):
        np.testing.assert_array_equal(out_ms[i], noise[i] if mask[i] else cond[i])
    assert noise.min() >= 0.0 and noise.max() < 1.0


@pytest.mark.parametrize("solver,churn", [("euler", 0.0), ("heun", 0.0), ("euler", 3.0), ("heun", 40.0)])
def test_sample_edm_parity(solver, churn):
    p_ms, p_t = precond_pair("pixel", seed=2)
    _, _, cond, _ = inputs()
    x_T = np.random.default_rng(4).standard_normal((B, C, H, H)).astype(np.float32)
    sig = karras_sigmas(8, 0.002, 80.0)
    cond_ms, cond_t = ms_t(cond), to_torch(cond)
    fn_ms = lambda x, s: p_ms(x, ms_t(np.full(B, s, np.float32)), cond_ms)[0]  # noqa: E731
    fn_t = lambda x, s: p_t(x, to_torch(np.full(B, s, np.float32)), cond_t)[0]  # noqa: E731
    kw = dict(solver=solver, s_churn=churn, s_noise=1.003)
    out_ms = mse.sample_edm(fn_ms, ms_t(x_T), sig, rng=np.random.default_rng(5), clip=False, **kw)
    out_t = tse.sample_edm(fn_t, to_torch(x_T), sig, rng=np.random.default_rng(5), clip=False, **kw)
    assert_parity(out_ms, out_t, f"sample_edm {solver} churn={churn}", rel=1e-4)
    clipped = mse.sample_edm(fn_ms, ms_t(x_T), sig, rng=np.random.default_rng(5), **kw)
    np.testing.assert_allclose(clipped.asnumpy(), np.clip(out_ms.asnumpy(), -1, 1), atol=1e-6)
    if churn > 0:  # the churn noise changes the result
        det = mse.sample_edm(fn_ms, ms_t(x_T), sig, solver=solver, clip=False)
        assert np.abs(det.asnumpy() - out_ms.asnumpy()).max() > 1e-3


# ----------------------------------------------------------------------------- exactness (Gaussian data)
def ideal_denoiser(x, s):
    return x * (SD ** 2 / (s * s + SD ** 2))


def ode_error(solver, n, x_T):
    sig = karras_sigmas(n, 0.002, 80.0)
    out = mse.sample_edm(ideal_denoiser, ms_t(x_T), sig, solver=solver, clip=False).asnumpy().astype(np.float64)
    exact = x_T.astype(np.float64) * sig[0] * SD / math.sqrt(sig[0] ** 2 + SD ** 2)
    return float(np.abs(out - exact).max() / np.abs(exact).max())


def test_heun_is_second_order_on_the_exact_ode():
    x_T = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    heun = {n: ode_error("heun", n, x_T) for n in (20, 40, 80)}
    euler = {n: ode_error("euler", n, x_T) for n in (20, 40)}
    print(f"[edm] relative error vs exact ODE: heun {heun}, euler {euler}")
    assert heun[40] < 1.2e-2 and heun[80] < 3e-3       # measured 9.8e-3, 2.3e-3
    assert 3.5 < heun[20] / heun[40] < 5.5 and 3.5 < heun[40] / heun[80] < 5.5   # second order
    assert euler[40] > 5 * heun[40]                      # measured 7.0e-2
    assert 1.7 < euler[20] / euler[40] < 2.3             # first order


def _chain_std(sig, gammas, solver, s_noise):
    """The sampler's exact output std on N(0, I) input for the linear ideal denoiser: each step multiplies x by
    a constant after adding churn noise of variance (s_hat^2 - s^2) s_noise^2."""
    f = lambda s: s / (s * s + SD ** 2)  # noqa: E731  (dx/ds = x f(s))
    var = sig[0] ** 2
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        s_hat = s * (1 + gammas[i])
        var += (s_hat ** 2 - s ** 2) * s_noise ** 2
        h = s_next - s_hat
        k = 1 + h * f(s_hat)
        if solver == "heun" and s_next != 0:
            k = 1 + h / 2 * (f(s_hat) + (1 + h * f(s_hat)) * f(s_next))
        var *= k * k
    return math.sqrt(var)


def test_stochastic_sampler_reaches_the_data_std():
    m = 16384
    sig = karras_sigmas(128, 0.002, 80.0)
    gammas = step_gammas(sig, s_churn=10.0)
    assert gammas[0] == pytest.approx(10.0 / 128)
    x_T = np.random.default_rng(6).standard_normal((m,)).astype(np.float32)
    out = mse.sample_edm(ideal_denoiser, ms_t(x_T), sig, solver="heun", s_churn=10.0, s_noise=1.0,
                         rng=np.random.default_rng(7), clip=False).asnumpy()
    std, predicted, sampling = float(out.std()), _chain_std(sig, gammas, "heun", 1.0), SD / math.sqrt(2 * m)
    print(f"[edm] stochastic heun 128 steps: std {std:.5f}, chain {predicted:.5f}, sampling error {sampling:.5f}")
    assert abs(predicted - SD) < 3e-3                      # discretisation (measured 1.2e-3)
    assert abs(std - predicted) < 4 * sampling             # the churn noise has the stated variance
    assert abs(std - SD) < 4 * sampling + 3e-3
    assert abs(float(out.mean())) < 4 * SD / math.sqrt(m)


# ----------------------------------------------------------------------------- host math
def test_coefficient_identities():
    c_skip, c_out, c_in, c_noise = edm_precond_coefficients(SD, SD)
    assert c_skip == pytest.approx(0.5) and c_out == pytest.approx(SD / math.sqrt(2))
    assert c_in == pytest.approx(1 / (SD * math.sqrt(2))) and c_noise == pytest.approx(math.log(SD) / 4)
    s = np.geomspace(0.002, 80, 50)
    c_skip, c_out, c_in, c_noise = edm_precond_coefficients(s, SD)
    np.testing.assert_allclose(edm_loss_weight(s, SD) * c_out ** 2, 1.0, rtol=1e-12)
    np.testing.assert_allclose(c_skip, SD ** 2 * c_in ** 2, rtol=1e-12)
    np.testing.assert_allclose(c_out, s * SD * c_in, rtol=1e-12)
    np.testing.assert_allclose(c_in ** 2 * (s ** 2 + SD ** 2), 1.0, rtol=1e-12)   # unit-variance network input
    np.testing.assert_allclose(c_noise, np.log(s) / 4)
    # the MindSpore coefficients are these, in float32
    p_ms, _ = precond_pair("none")
    got = p_ms.coefficients(ms_t(s.astype(np.float32)), 4)
    for g, ref in zip(got, edm_precond_coefficients(s.astype(np.float32), SD)):
        np.testing.assert_allclose(g.asnumpy().reshape(-1), ref, rtol=2e-6)


def test_f_target_reproduces_y_and_loss_relations():
    y, noise, cond, sigma = inputs()
    n = sigma[:, None, None, None].astype(np.float64) * noise
    c_skip, c_out = (c.reshape(-1, 1, 1, 1) for c in edm_precond_coefficients(sigma, SD)[:2])
    target = ((y - c_skip * (y + n)) / c_out).astype(np.float32)

    class Oracle(msnn.Cell):
        def __init__(self, u):
            super().__init__()
            self.u = u

        def construct(self, x_in, c_noise, cond):
            f = ms_t(target)
            return f if self.u is None else (f, ops.fill(ms.float32, f.shape, self.u))

    d, _ = mse.EDMPrecond(Oracle(None), SD)(ms_t(y + n.astype(np.float32)), ms_t(sigma), ms_t(cond))
    np.testing.assert_allclose(d.asnumpy(), y, atol=2e-6)  # D = y when F = F_target
    assert float(mse.edm_loss(mse.EDMPrecond(Oracle(None), SD), ms_t(y), ms_t(noise), ms_t(sigma))) < 1e-9
    assert float(mse.edm_loss(mse.EDMPrecond(Oracle(0.3), SD), ms_t(y), ms_t(noise), ms_t(sigma))) == \
        pytest.approx(0.15, abs=1e-6)  # (0 e^-u + u) / 2

    # no u: the loss is mean(lambda (D - y)^2); u = 0: exactly half of it
    p_none, _ = precond_pair("none", seed=3)
    p_zero, _ = precond_pair("zero", seed=3)
    x = ms_t(y + n.astype(np.float32))
    d, _ = p_none(x, ms_t(sigma), ms_t(cond))
    lam = edm_loss_weight(sigma, SD).reshape(-1, 1, 1, 1)
    weighted = float(np.mean(lam * (d.asnumpy().astype(np.float64) - y) ** 2))
    plain = float(mse.edm_loss(p_none, ms_t(y), ms_t(noise), ms_t(sigma), ms_t(cond)))
    half = float(mse.edm_loss(p_zero, ms_t(y), ms_t(noise), ms_t(sigma), ms_t(cond)))
    assert plain == pytest.approx(weighted, rel=1e-4)
    assert half == pytest.approx(plain / 2, rel=1e-6)


def test_karras_sigmas_and_churn():
    sig = karras_sigmas(250, 0.002, 80.0)
    assert sig.shape == (251,) and sig[0] == 80.0 and sig[-2] == pytest.approx(0.002) and sig[-1] == 0.0
    assert np.all(np.diff(sig) < 0)
    rho = 7.0
    i = 17
    assert sig[i] == pytest.approx((80 ** (1 / rho) + i / 249 * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho)
    np.testing.assert_array_equal(karras_sigmas(1, 0.002, 80.0), [80.0, 0.0])
    assert churn_gamma(0.0, 250) == 0.0
    assert churn_gamma(40.0, 250) == pytest.approx(0.16)
    assert churn_gamma(1e6, 250) == pytest.approx(math.sqrt(2) - 1)
    g = step_gammas(sig, 40.0, s_tmin=0.05, s_tmax=1.0)
    inside = (sig[:-1] >= 0.05) & (sig[:-1] <= 1.0)
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(g, np.where(inside, 0.16, 0.0))
    np.testing.assert_array_equal(step_gammas(sig), 0.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        karras_sigmas(0, 0.002, 80.0)
    with pytest.raises(ValueError, match="sigma_min <= sigma_max"):
        karras_sigmas(10, 1.0, 0.5)


def test_training_sigmas():
    s = sample_training_sigmas(np.random.default_rng(0), 200_000)
    assert s.dtype == np.float32 and s.min() >= np.float32(0.03) and s.max() <= 50.0
    assert (s == np.float32(0.03)).any() and (s == 50.0).any()   # both clips are reached
    assert abs(float(np.log(s.astype(np.float64)).mean()) - 0.5) < 0.02   # clipping moves it by ~2.5e-3
    assert abs(float(np.log(s.astype(np.float64)).std()) - 1.4) < 0.03


def test_sample_edm_errors():
    sig = karras_sigmas(4, 0.002, 80.0)
    x = ms_t(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="solver must be one of euler, heun"):
        mse.sample_edm(ideal_denoiser, x, sig, solver="dpm")
    with pytest.raises(ValueError, match="needs a numpy rng"):
        mse.sample_edm(ideal_denoiser, x, sig, s_churn=1.0)
    with pytest.raises(ValueError, match="needs a numpy rng"):
        tse.sample_edm(ideal_denoiser, to_torch(np.zeros((1, 2), np.float32)), sig, s_churn=1.0)


@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, "steps must be an integer >= 1"),
    ("steps", 2.5, "steps must be an integer >= 1"),
    ("sigma_min", 0.0, "need 0 < sigma_min < sigma_max"),
    ("sigma_max", 0.001, "need 0 < sigma_min < sigma_max"),
    ("rho", 0.0, "rho must be > 0"),
    ("solver", "dpm", "solver must be one of euler, heun, got 'dpm'"),
    ("s_churn", -1.0, "s_churn must be >= 0"),
    ("s_noise", 0.0, "s_noise must be > 0"),
    ("s_tmin", 2.0, "need 0 <= s_tmin <= s_tmax"),
    ("sigma_data", -0.5, "sigma_data must be > 0"),
])
def test_config_check_errors(field, value, message):
    cfg = EDMSamplerConfig(s_tmax=1.0)
    check_edm_sampler(cfg)
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=message):
        check_edm_sampler(cfg)


def test_config_defaults():
    cfg = check_edm_sampler(EDMSamplerConfig())
    assert (cfg.steps, cfg.rho, cfg.solver, cfg.s_noise, cfg.s_tmin, cfg.s_tmax) == (250, 7.0, "euler", 1.003, 0.0,
                                                                                      math.inf)
    assert cfg.sigmas().shape == (251,)
