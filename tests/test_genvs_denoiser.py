"""GeNVS denoiser UNet (mindspore_impl/genvs/denoiser.py, torch_ref/genvs/denoiser.py,
neutral/genvs/denoiser_config.py).

- parity MindSpore vs torch_ref with the same random weights (copied by name; the names are equal): F and u,
  gradients w.r.t. every parameter and both inputs, for the three variance modes;
- wrapped in EDMPrecond (edm.py): D(x; sigma), u and edm_loss between the twins, and the shapes EDMPrecond takes;
- PyNative equals GRAPH (ms.jit) for one forward;
- a tiny overfit: Adam on edm_loss over 2 fixed 8x8 images lowers a fixed-draw evaluation loss;
- config checks, and the parameter count: at the upstream size (GeNVS' k_configs/config_128_*.json: channels
  [128, 128, 256, 512, 512], depths [2, 2, 2, 4, 4], attention at the last two levels, mapping 256) the net has
  115,030,916 parameters (upstream's ImageDenoiserModelV1 has 2,304 more: `mapping_cond`, the 9-d augmentation
  conditioning this port leaves out). That is above the 100 M the issue assumed for every component. The proposed
  shipped size (channels [32, 64, 64], depths [2, 2, 2], attention at the last level, mapping 64, 32x32) has
  972,004 (3.9 MB in float32).
"""
import time

import mindspore as ms
import numpy as np
import pytest
import torch

from mindspore_impl.genvs import edm as mse
from mindspore_impl.genvs.denoiser import GeNVSDenoiserUNet as MSNet
from neutral.config import ConfigError
from neutral.genvs.denoiser_config import DenoiserConfig, denoiser_config, denoiser_parameter_count
from neutral.genvs.edm import sample_training_sigmas
from tests.parity import assert_parity, to_numpy, to_torch, torch_module
from torch_ref.genvs import edm as tse
from torch_ref.genvs.denoiser import GeNVSDenoiserUNet as TorchNet

# two levels, attention at the second, 16x16: the whole UNet path (blur down/up, skip concat, AdaGN, attention)
TINY = dict(channels=[16, 32], depths=[1, 2], attention_levels=[1], mapping_width=32, group_size=8, head_size=16,
            image_size=16, dropout=0.05)
B, H, C, CC = 2, 16, 3, 16
UPSTREAM_PARAMS = 115_030_916
SHIPPED = dict(channels=[32, 64, 64], depths=[2, 2, 2], attention_levels=[2], mapping_width=64, image_size=32)
SHIPPED_PARAMS = 972_004


def ms_t(a):
    return ms.Tensor(np.asarray(a))


def copy_torch_weights(ms_net, t_net):
    """Every MindSpore parameter (frozen buffers included) from the torch state dict of the same name; the two
    name sets must be equal (the strict check a checkpoint load makes)."""
    state = {k: v.detach().cpu().numpy() for k, v in t_net.state_dict().items()}
    names = {p.name for p in ms_net.get_parameters()}
    assert names == set(state), f"only MindSpore: {sorted(names - set(state))}, only torch: " \
                                f"{sorted(set(state) - names)}"
    for p in ms_net.get_parameters():
        assert tuple(p.shape) == state[p.name].shape, p.name
        p.set_data(ms.Tensor(state[p.name].copy()))


def net_pair(variance="sample", seed=0, **over):
    """(MindSpore net, torch net in eval) with the same weights. proj_out is zero at init (image_v1.py), so it is
    drawn here: otherwise F and u would be 0 and every comparison trivial."""
    cfg = dict(TINY, variance=variance, **over)
    torch.manual_seed(seed)
    t_net = TorchNet(cfg).eval()
    with torch.no_grad():
        t_net.proj_out.weight.normal_(0.0, 0.3)
        t_net.proj_out.bias.normal_(0.0, 0.1)
    ms_net = MSNet(cfg)
    copy_torch_weights(ms_net, t_net)
    return ms_net, torch_module(t_net)


def inputs(seed=1, h=H):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, h, h)).astype(np.float32)
    c_noise = np.log(np.array([0.05, 3.0], np.float32)) / 4
    cond = rng.uniform(0, 1, (B, CC, h, h)).astype(np.float32)
    return x, c_noise, cond


# ----------------------------------------------------------------------------- parity
def test_forward_and_gradient_parity():
    """Per-sample u (upstream); the other variance modes differ only in the last line of construct and are
    compared forward in test_forward_parity_other_modes and through edm_loss below."""
    ms_net, t_net = net_pair("sample")
    x, c_noise, cond = inputs()
    rng = np.random.default_rng(2)
    w_f = rng.standard_normal((B, C, H, H)).astype(np.float32)
    w_u = rng.standard_normal((B,)).astype(np.float32)

    def objective_ms(x_in, c, cd):
        f, u = ms_net(x_in, c, cd)
        return (f * ms_t(w_f)).mean() + (u * ms_t(w_u)).mean(), f, u

    params = ms_net.trainable_params()
    grad_fn = ms.value_and_grad(objective_ms, grad_position=(0, 2), weights=params, has_aux=True)
    (obj_ms, f_ms, u_ms), (in_grads_ms, p_grads_ms) = grad_fn(ms_t(x), ms_t(c_noise), ms_t(cond))

    x_t, cond_t = to_torch(x, requires_grad=True), to_torch(cond, requires_grad=True)
    f_t, u_t = t_net(x_t, to_torch(c_noise), cond_t)
    obj_t = (f_t * to_torch(w_f)).mean() + (u_t * to_torch(w_u)).mean()
    obj_t.backward()

    assert tuple(f_ms.shape) == (B, C, H, H) and tuple(u_ms.shape) == (B,)
    assert_parity(f_ms, f_t, "F")
    assert_parity(u_ms, u_t, "u")
    assert float(np.abs(to_numpy(f_t)).max()) > 0.1   # not a trivial output
    assert_parity(obj_ms, obj_t, "objective")
    assert_parity(in_grads_ms[0], x_t.grad, "d/d x_in")
    assert_parity(in_grads_ms[1], cond_t.grad, "d/d cond")
    t_params = dict(t_net.named_parameters())
    assert len(params) == len(p_grads_ms) == len(t_params)
    worst = max((assert_parity(g, t_params[p.name].grad, f"d/d {p.name}"), p.name)
                for p, g in zip(params, p_grads_ms))
    print(f"[denoiser] {len(params)} parameter gradients, largest error {worst[0]:.2e} ({worst[1]})")


@pytest.mark.parametrize("variance", ["pixel", "none"])
def test_forward_parity_other_modes(variance):
    """pixel: u (B, 1, H, W); none: F alone (EDMPrecond then gives u None), here also without conditioning
    channels (cond_channels 0, cond None: an unconditional denoiser)."""
    over = dict(cond_channels=0) if variance == "none" else {}
    ms_net, t_net = net_pair(variance, **over)
    x, c_noise, cond = inputs()
    cond = None if over else cond
    out_ms = ms_net(ms_t(x), ms_t(c_noise), None if cond is None else ms_t(cond))
    with torch.no_grad():
        out_t = t_net(to_torch(x), to_torch(c_noise), None if cond is None else to_torch(cond))
    if variance == "none":
        assert_parity(out_ms, out_t, "F (none, no conditioning)")
        return
    assert tuple(out_ms[1].shape) == (B, 1, H, H)
    assert_parity(out_ms[0], out_t[0], "F (pixel)")
    assert_parity(out_ms[1], out_t[1], "u (pixel)")


def test_names_match_at_three_levels_and_cond_none_is_zeros():
    cfg = dict(TINY, channels=[8, 16, 16], depths=[2, 1, 2], attention_levels=[0, 2], variance="none")
    t_net = TorchNet(cfg)
    copy_torch_weights(MSNet(cfg), t_net)   # asserts the name sets and shapes are equal

    ms_net, _ = net_pair("sample")
    x, c_noise, _ = inputs()
    f0, u0 = ms_net(ms_t(x), ms_t(c_noise), None)
    f1, u1 = ms_net(ms_t(x), ms_t(c_noise), ms_t(np.zeros((B, CC, H, H), np.float32)))
    np.testing.assert_array_equal(f0.asnumpy(), f1.asnumpy())
    np.testing.assert_array_equal(u0.asnumpy(), u1.asnumpy())


def test_dropout_only_in_training():
    ms_net, _ = net_pair("sample", dropout=0.5)
    x, c_noise, cond = (ms_t(a) for a in inputs())
    eval_a = ms_net(x, c_noise, cond)[0].asnumpy()
    ms_net.set_train(True)
    train_a = ms_net(x, c_noise, cond)[0].asnumpy()
    ms_net.set_train(False)
    np.testing.assert_array_equal(ms_net(x, c_noise, cond)[0].asnumpy(), eval_a)
    assert np.abs(train_a - eval_a).max() > 1e-3


# ----------------------------------------------------------------------------- EDM preconditioning
@pytest.mark.parametrize("variance", ["sample", "pixel"])
def test_edm_precond_and_loss_parity(variance):
    ms_net, t_net = net_pair(variance, seed=3)
    p_ms, p_t = mse.EDMPrecond(ms_net, 0.5), torch_module(tse.EDMPrecond(t_net, 0.5))
    rng = np.random.default_rng(4)
    y = rng.uniform(-1, 1, (B, C, H, H)).astype(np.float32)
    noise = rng.standard_normal((B, C, H, H)).astype(np.float32)
    sigma = np.array([0.05, 3.0], np.float32)
    _, _, cond = inputs()
    x = y + sigma[:, None, None, None] * noise

    d_ms, u_ms = p_ms(ms_t(x), ms_t(sigma), ms_t(cond))
    d_t, u_t = p_t(to_torch(x), to_torch(sigma), to_torch(cond))
    # the shapes EDMPrecond and edm_loss take: D like x, u per sample (B,) or per pixel (B, 1, H, W)
    assert tuple(d_ms.shape) == x.shape
    assert tuple(u_ms.shape) == ((B,) if variance == "sample" else (B, 1, H, H))
    assert_parity(d_ms, d_t, f"EDMPrecond D ({variance})")
    assert_parity(u_ms, u_t, f"EDMPrecond u ({variance})")

    loss_ms = mse.edm_loss(p_ms, ms_t(y), ms_t(noise), ms_t(sigma), ms_t(cond))
    loss_t = tse.edm_loss(p_t, to_torch(y), to_torch(noise), to_torch(sigma), to_torch(cond))
    assert_parity(loss_ms, loss_t, f"edm_loss ({variance})")


def test_untrained_net_is_f_zero_u_zero():
    """proj_out starts at zero (image_v1.py), so D = c_skip x and the loss is half the plain EDM loss of F = 0."""
    net = MSNet(dict(TINY))
    x, c_noise, cond = inputs()
    f, u = net(ms_t(x), ms_t(c_noise), ms_t(cond))
    assert not f.asnumpy().any() and not u.asnumpy().any()


# ----------------------------------------------------------------------------- GRAPH mode
# compiled functions stay referenced for the session: MindSpore 2.7.2 keys graphs by id(), and a new function at
# a freed one's address met its dropped graph inside the full suite (tests/parity.py, _RETIRED_STEPS)
_COMPILED = []


def test_graph_matches_pynative():
    ms_net, _ = net_pair("sample", seed=5)
    x, c_noise, cond = (ms_t(a) for a in inputs())
    f_py, u_py = ms_net(x, c_noise, cond)

    @ms.jit
    def forward(a, b, c):
        return ms_net(a, b, c)

    _COMPILED.append(forward)
    f_gr, u_gr = forward(x, c_noise, cond)
    assert_parity(f_gr, f_py, "F GRAPH vs PyNative", rel=1e-5)
    assert_parity(u_gr, u_py, "u GRAPH vs PyNative", rel=1e-5)


# ----------------------------------------------------------------------------- overfit
def test_overfits_two_images():
    """Adam (lr 3e-3) for 40 compiled (ms.jit) steps of edm_loss on 2 fixed 8x8 images, fresh sigmas
    (LogNormal(0.5, 1.4) in [0.03, 50], neutral sample_training_sigmas) and noise each step. The evaluation loss
    (8 fixed draws of noise and sigma per image, one batch) fell from 0.759 to 0.184 when measured (0.24 of the
    start; the same 0.27-0.41 range in PyNative at other sizes and rates); the assert asks for below 0.7."""
    side, n_eval = 8, 8
    ms.set_seed(0)
    net = MSNet(dict(TINY, image_size=side, dropout=0.0))
    precond = mse.EDMPrecond(net, 0.5)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    images = (np.stack([np.stack([xx, yy, xx * yy]), np.stack([1 - yy, xx, np.abs(xx - yy)])]) * 2 - 1)
    images = images.astype(np.float32)
    cond = rng.uniform(0, 1, (2, CC, side, side)).astype(np.float32)
    ev_rng = np.random.default_rng(1)
    ev = (ms_t(np.tile(images, (n_eval, 1, 1, 1))),
          ms_t(ev_rng.standard_normal((2 * n_eval, C, side, side)).astype(np.float32)),
          ms_t(sample_training_sigmas(ev_rng, 2 * n_eval)), ms_t(np.tile(cond, (n_eval, 1, 1, 1))))
    images, cond = ms_t(images), ms_t(cond)

    def eval_loss():
        return float(mse.edm_loss(precond, *ev).asnumpy())

    def loss_fn(noise, sigma):
        return mse.edm_loss(precond, images, noise, sigma, cond)

    opt = ms.nn.Adam(net.trainable_params(), learning_rate=3e-3)
    grad_fn = ms.value_and_grad(loss_fn, None, opt.parameters)

    @ms.jit
    def step(noise, sigma):
        loss, grads = grad_fn(noise, sigma)
        opt(grads)
        return loss

    _COMPILED.extend([loss_fn, grad_fn, step])
    start, t0 = eval_loss(), time.time()
    for _ in range(40):
        step(ms_t(rng.standard_normal((2, C, side, side)).astype(np.float32)), ms_t(sample_training_sigmas(rng, 2)))
    end = eval_loss()
    print(f"[denoiser] overfit: evaluation loss {start:.4f} -> {end:.4f} ({end / start:.2f}) in "
          f"{time.time() - t0:.1f} s")
    assert end < 0.7 * start


# ----------------------------------------------------------------------------- config and size
def test_config_errors():
    ok = denoiser_config(dict(TINY))
    assert isinstance(ok, DenoiserConfig) and ok.channels == [16, 32]
    bad = [
        (dict(depths=[1]), "depths needs one count"),
        (dict(channels=[]), "non-empty list"),
        (dict(attention_levels=[2]), r"attention_levels must be distinct level indices in \[0, 1\]"),
        (dict(attention_levels=[1, 1]), "attention_levels must be distinct"),
        (dict(variance="channel"), "variance must be one of sample, pixel, none"),
        (dict(mapping_width=33), "mapping_width must be even"),
        (dict(image_size=9), "image_size 9 must be a multiple of 2 .*; use 8"),
        (dict(image_size=2), "at least 2 pixels at the deepest level"),
        (dict(channels=[16, 45], head_size=20), "width 45 does not split into 2 heads"),
        (dict(channels=[16, 44]), "width 44 does not split into 5 GroupNorm groups"),
        (dict(dropout=1.0), r"dropout must be in \[0.0, 0.99\]"),
        (dict(cond_channels=-1), "cond_channels must be >= 0"),
        (dict(chanels=[8]), "Allowed keys"),
    ]
    for over, match in bad:
        with pytest.raises(ConfigError, match=match):
            denoiser_config(dict(TINY, **over))
    with pytest.raises(ConfigError, match="variance must be one of"):
        MSNet(dict(TINY, variance="x"))
    with pytest.raises(ConfigError, match="variance must be one of"):
        TorchNet(dict(TINY, variance="x"))


def test_parameter_count():
    """The count from the layout equals torch's at the tiny, shipped and upstream sizes (upstream built on the
    meta device: no memory, no forward) and MindSpore's trainable parameters at the tiny size."""
    upstream = DenoiserConfig()
    with torch.device("meta"):
        full = TorchNet(upstream)
    n_full = sum(p.numel() for p in full.parameters())
    n_shipped = denoiser_parameter_count(denoiser_config(SHIPPED))
    print(f"[denoiser] parameters: upstream size {n_full:,}, shipped size {n_shipped:,}")
    assert n_full == denoiser_parameter_count(upstream) == UPSTREAM_PARAMS
    with torch.device("meta"):
        shipped = TorchNet(SHIPPED)
    assert sum(p.numel() for p in shipped.parameters()) == denoiser_parameter_count(denoiser_config(SHIPPED)) \
        == SHIPPED_PARAMS
    tiny = denoiser_config(dict(TINY))
    n_ms = sum(int(np.prod(p.shape)) for p in MSNet(tiny).trainable_params())
    assert n_ms == sum(p.numel() for p in TorchNet(tiny).parameters()) == denoiser_parameter_count(tiny)
