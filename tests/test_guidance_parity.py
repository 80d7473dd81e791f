"""Multiview SDS guidance: one step on tiny random models, torch_ref vs MindSpore, and its host-side rules.

Loss and d loss / d rgb are compared for x0 mode (with and without recon_std_rescale), plain SDS
(which crashes upstream) and SJC; the GRAPH-mode step must equal the PyNative one.
"""
import os

import mindspore as ms
import numpy as np
import pytest
import torch

from neutral.mvdream.model_config import load_model_config
from convert.pt2ms import convert_state_dict
from mindspore_impl.core.checkpoint import load_state_dict
from neutral.mvdream.checkpoint_layout import PREFIXES
from neutral.registry import find
from mindspore_impl.lift3d.guidance import multiview_diffusion_guidance as msg
from mindspore_impl.mvdream import schedule as ms_schedule
from mindspore_impl.mvdream import unet as ms_unet
from tests.parity import assert_parity, to_torch, tolerance, torch_module
from tests.parity_cases import GUIDANCE_IMAGE as IMAGE_SIZE
from tests.parity_cases import GUIDANCE_ORDER as ORDER
from tests.parity_cases import GUIDANCE_VIEWS as N_VIEW
from tests.parity_cases import guidance_c2w as _c2w
from tests.parity_cases import guidance_cfg as _cfg
from tests.parity_cases import guidance_inputs as _inputs
from tests.parity_cases import guidance_models
from tests.parity_cases import guidance_ms_step as _ms_step
from tests.parity_cases import guidance_pair as _pair
from tests.parity_cases import guidance_torch_step as _torch_step
from tests.parity_cases import numpy_state, relative_to_max
from tests.parity_cases import randomize_zero_tensors as _randomize
from torch_ref.lift3d.guidance import multiview_diffusion_guidance as tg
from torch_ref.mvdream import schedule as t_schedule
from torch_ref.mvdream import unet as t_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny-mvdream.yaml")


@pytest.fixture(scope="module")
def models():
    """(torch unet, torch vae, MindSpore unet, MindSpore vae) with the same random weights."""
    return guidance_models()


def assert_grad_parity(actual, reference, name, rel=1e-4):
    """Gradients are small here: compare them relative to the reference's max |value|."""
    a, r, scale = relative_to_max(actual, reference)
    print(f"[parity] {name}: max |ref| {scale:.3e}")
    assert_parity(a, r, name + " (relative to max |ref|)", rel=rel)


@pytest.mark.parametrize("mode,rescale,n_obj", [("x0", 0.5, 2), ("x0", 0.0, 1), ("sds", 0.5, 1),
                                                ("sjc", 0.5, 1)])
def test_one_step_parity(models, mode, rescale, n_obj):
    tgd, mgd = _pair(models, _cfg(guidance_mode=mode, recon_std_rescale=rescale))
    tgd.update_step(4000)
    inputs = _inputs(mgd, n_obj)
    t_loss, t_grad, t_norm = _torch_step(tgd, inputs)
    m_loss, m_grad, m_norm = _ms_step(mgd, inputs)
    assert float(t_loss) > 0 and float(t_grad.abs().max()) > 0
    assert_parity(m_loss, t_loss, f"{mode} r={rescale} loss")
    assert_parity(m_norm, t_norm, f"{mode} r={rescale} grad_norm")
    assert_grad_parity(m_grad, t_grad, f"{mode} r={rescale} d loss / d rgb")


def test_grad_clip_parity(models):
    clip = [0, 0.5, 1.0, 1000]  # scheduled like threestudio: 1.0 from step 1000 on
    tgd, mgd = _pair(models, _cfg(guidance_mode="sds", grad_clip=clip))
    _, free = _pair(models, _cfg(guidance_mode="sds"))
    tgd.update_step(4000)
    inputs = _inputs(mgd, 1)
    assert mgd.grad_clip_val == pytest.approx(1.0)
    t_loss, t_grad, t_norm = _torch_step(tgd, inputs)
    m_loss, m_grad, m_norm = _ms_step(mgd, inputs)
    f_loss, _, f_norm = _ms_step(free, inputs)
    # the clamp really bites: every entry of the latent gradient is within +-1 (loss <= 0.5 * numel / B)
    assert float(t_loss) <= 0.5 * 1.0 * 4 * 16 * 16 + 1e-6
    assert float(m_norm) < 0.9 * float(f_norm) and float(m_loss) < float(f_loss)
    assert_parity(m_loss, t_loss, "clipped sds loss", rel=1e-5)
    assert_grad_parity(m_grad, t_grad, "clipped sds d loss / d rgb")


class _GuidanceLoss(ms.nn.Cell):
    """rgb + step inputs -> (loss, d loss / d rgb), the shape of a system's compiled step."""

    def __init__(self, guidance):
        super().__init__()
        self.guidance = guidance
        self.grad_fn = ms.value_and_grad(self.forward, grad_position=0, has_aux=True)

    def forward(self, rgb, c2w, emb, t, noise, vae_noise):
        return self.guidance(rgb, c2w, emb, t, noise, vae_noise)

    def construct(self, rgb, c2w, emb, t, noise, vae_noise):
        (loss, _), grad = self.grad_fn(rgb, c2w, emb, t, noise, vae_noise)
        return loss, grad


def test_graph_mode_equals_pynative(models):
    """One compiled graph; update_step changes the scheduled clip bound without recompiling."""
    _, mgd = _pair(models, _cfg(guidance_mode="x0", recon_std_rescale=0.5, grad_clip=[0, 2.0, 8.0, 1000]))
    step = _GuidanceLoss(mgd)
    results = []
    for global_step in (0, 4000):
        inputs = _inputs(mgd, 1, seed=3, global_step=global_step)
        ms.set_context(mode=ms.PYNATIVE_MODE)
        p_loss, p_grad, _ = _ms_step(mgd, inputs)
        ms.set_context(mode=ms.GRAPH_MODE)
        g_loss, g_grad = step(*[ms.Tensor(inputs[k]) for k in ("rgb",) + ORDER])
        assert_parity(g_loss, p_loss, f"GRAPH vs PyNative loss, step {global_step}", rel=1e-5)
        assert_grad_parity(g_grad, p_grad, f"GRAPH vs PyNative d loss / d rgb, step {global_step}", rel=1e-5)
        results.append(float(g_loss))
    assert results[0] != results[1]


def test_x0_loss_formula(models):
    """loss == 0.5 * sum((latents - x0)^2) / B, the paper's x0-reconstruction loss, value included."""
    tgd, mgd = _pair(models, _cfg(guidance_mode="x0", recon_std_rescale=0.5))
    tgd.update_step(4000)
    inputs = _inputs(mgd, 1, hw=IMAGE_SIZE)
    rgb = to_torch(inputs["rgb"])
    with torch.no_grad():
        loss, _ = tgd(rgb, *[to_torch(inputs[k]) for k in ORDER])
        x = rgb.permute(0, 3, 1, 2) * 2 - 1
        z = tgd.vae.encode(x).sample(to_torch(inputs["vae_noise"])) * 0.18215
        t = to_torch(inputs["t"]).long().repeat(4)
        ns = tgd.noise_schedule
        x_t = ns.q_sample(z, t, to_torch(inputs["noise"]))
        from torch_ref.mvdream.cameras import normalize_camera
        cam = normalize_camera(to_torch(inputs["c2w"]))
        eps = tgd.unet(torch.cat([x_t] * 2), t.repeat(2), to_torch(inputs["text_embeddings"]),
                       cam.repeat(2, 1), N_VIEW)
        e_c, e_u = eps.chunk(2)
        e = e_u + 50.0 * (e_c - e_u)
        x0 = ns.predict_start_from_noise(x_t, t, e)
        x0_c = ns.predict_start_from_noise(x_t, t, e_c)
        factor = (x0_c.std(unbiased=True) + 1e-8) / (x0.std(unbiased=True) + 1e-8)  # one object of 4 views
        x0 = 0.5 * x0 * factor + 0.5 * x0
        expected = 0.5 * ((z - x0) ** 2).sum() / 4
    assert_parity(loss, expected, "x0 loss vs hand formula", rel=1e-5)


def test_recon_std_factor_per_group():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b = (rng.standard_normal((8, 4, 3, 3)) * np.repeat([1.0, 3.0], 4)[:, None, None, None]).astype(np.float32)
    factor = msg.recon_std_factor(ms.Tensor(a), ms.Tensor(b), 4).asnumpy().reshape(-1)
    expected = [(a[g * 4:(g + 1) * 4].std(ddof=1) + 1e-8) / (b[g * 4:(g + 1) * 4].std(ddof=1) + 1e-8)
                for g in range(2)]
    assert_parity(factor, np.array(expected), "per-group std factor", rel=1e-5)
    assert factor[0] / factor[1] == pytest.approx(3.0, rel=0.3)  # the groups really differ
    t_factor = tg.recon_std_factor(to_torch(a), to_torch(b), 4).reshape(-1)
    assert_parity(factor, t_factor, "per-group std factor vs torch_ref", rel=1e-5)
    out = msg.rescale_x0(ms.Tensor(b), ms.Tensor(a), 4, 0.5).asnumpy()
    ref = tg.rescale_x0(to_torch(b), to_torch(a), 4, 0.5)
    assert_parity(out, ref, "rescale_x0 vs torch_ref", rel=1e-5)


def test_annealing_moves_timestep_range(models):
    _, mgd = _pair(models, _cfg())
    mgd.update_step(0)
    assert (mgd.min_step, mgd.max_step) == (980, 980)
    ts0 = {int(mgd.sample_inputs(np.random.default_rng(s), 4)["t"][0]) for s in range(20)}
    mgd.update_step(4000)
    assert (mgd.min_step, mgd.max_step) == (500, 740)
    mgd.update_step(8000)
    assert (mgd.min_step, mgd.max_step) == (20, 500)
    ts = [int(mgd.sample_inputs(np.random.default_rng(s), 4)["t"][0]) for s in range(50)]
    assert ts0 == {980}
    assert min(ts) >= 20 and max(ts) <= 500 and len(set(ts)) > 10
    mgd.update_step(20000)
    assert (mgd.min_step, mgd.max_step) == (20, 500)


def test_frozen_models_not_trainable(models):
    _, mgd = _pair(models, _cfg())
    named = list(mgd.parameters_and_names())
    assert len(named) > 0
    assert mgd.trainable_params() == []
    assert all(not p.requires_grad for _, p in named)
    assert all(n.startswith(mgd.checkpoint_exclude_prefixes()) for n, _ in named)

    class System(ms.nn.Cell):  # how a system holds it: only its own fields are trainable / saved
        def __init__(self):
            super().__init__()
            self.geometry = ms.nn.Dense(2, 2)
            self.guidance = mgd

    assert sorted(p.name for p in System().trainable_params()) == ["geometry.bias", "geometry.weight"]


def test_registered_and_config_errors():
    assert find("multiview-diffusion-guidance") is msg.MultiviewDiffusionGuidance
    with pytest.raises(msg.GuidanceError, match="guidance_mode"):
        msg.check_config(msg.Config(guidance_mode="dds"))
    with pytest.raises(ValueError, match="unknown|Allowed keys"):
        msg.MultiviewDiffusionGuidance.from_config({"guidance_scal": 50.0})


def test_missing_checkpoint_error(tmp_path):
    missing = str(tmp_path / "mvdream-sd21.ckpt")
    with pytest.raises(msg.GuidanceError) as exc:
        msg.MultiviewDiffusionGuidance.from_config({"ckpt_path": missing})
    text = str(exc.value)
    print(text)
    assert missing in text
    assert "sd-v2.1-base-4view.pt" in text and "huggingface.co/MVDream/MVDream" in text
    assert "python -m convert.pt2ms --src sd-v2.1-base-4view.pt --dst " + missing in text
    with pytest.raises(msg.GuidanceError, match="no MVDream checkpoint given"):
        msg.MultiviewDiffusionGuidance.from_config({})


def test_from_config_loads_the_converted_checkpoint(tmp_path):
    """The product path: converted checkpoint + original YAML -> guidance; equals torch_ref on the same weights."""
    from tests.tiny_mvdream_models import torch_state, write_tiny_checkpoint
    ckpt = str(tmp_path / "tiny.ckpt")
    write_tiny_checkpoint(ckpt, seed=7)
    _, modules = torch_state(("unet", "vae", "text_encoder"), seed=7)
    cfg = dict(ckpt_path=ckpt, config_path=TINY, n_view=N_VIEW, image_size=IMAGE_SIZE,
               min_step_percent=[0, 0.98, 0.02, 8000], max_step_percent=[0, 0.98, 0.50, 8000])
    mgd = find("multiview-diffusion-guidance").from_config(cfg)
    assert mgd.trainable_params() == [] and mgd.latent_shape() == (4, 16, 16)
    tgd = torch_module(tg.MultiviewDiffusionGuidance(mgd.cfg, modules["unet"], modules["vae"],
                                                     t_schedule.NoiseSchedule()))
    tgd.update_step(4000)
    inputs = _inputs(mgd, 1)
    t_loss, t_grad, _ = _torch_step(tgd, inputs)
    m_loss, m_grad, _ = _ms_step(mgd, inputs)
    assert_parity(m_loss, t_loss, "from_config x0 loss")
    # CFG 50 multiplies the UNet's fp32 rounding in x0 (measured with these weights: 3.2e-4 relative
    # at scale 50, 1.5e-5 at scale 1), hence the looser gradient tolerance here
    assert_grad_parity(m_grad, t_grad, "from_config d loss / d rgb", rel=1e-3)
    half = msg.MultiviewDiffusionGuidance.from_config(dict(cfg, half_precision_weights=True))
    assert {p.dtype for n, p in half.parameters_and_names() if n.startswith("unet.")} == {ms.float16, ms.float32}
    assert {p.dtype for n, p in half.parameters_and_names() if n.startswith("vae.")} == {ms.float32}
    h_loss, h_grad, _ = _ms_step(half, inputs)
    assert h_grad.dtype == ms.float32
    rel = abs(float(h_loss) - float(t_loss)) / float(t_loss)
    print(f"[half] fp16 weights loss {float(h_loss):.4f} vs fp32 {float(t_loss):.4f} (rel {rel:.2e})")
    assert rel < tolerance(2e-2, dtype="float16")


def _pixel_space_inputs(mgd):
    """One object x 4 views at 32x32 with the demo model's 64-wide text embeddings."""
    rng = np.random.default_rng(0)
    inputs = mgd.sample_inputs(rng, N_VIEW)
    inputs["rgb"] = rng.uniform(0, 1, (N_VIEW, 32, 32, 3)).astype(np.float32)
    inputs["c2w"] = _c2w(1)
    inputs["text_embeddings"] = rng.standard_normal((2 * N_VIEW, 77, 64)).astype(np.float32)
    return inputs


def test_pixel_space_demo_model_drives_sds(tmp_path):
    """configs/demo-model.yaml (identity first stage, 12x16x16 'latents'): from_config builds, loads
    strictly and gives a finite loss whose gradient reaches every rendered pixel."""
    from mindspore_impl.core.checkpoint import save_params, state_dict
    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo-model.yaml")
    unet = ms_unet.build_from_config(dict(load_model_config(demo)["unet_config"]["params"]))
    ckpt = str(tmp_path / "demo.ckpt")
    save_params(state_dict(unet, PREFIXES["unet"]), ckpt)
    mgd = find("multiview-diffusion-guidance").from_config(dict(ckpt_path=ckpt, config_path=demo, n_view=N_VIEW,
                                                                 image_size=32))
    assert mgd.latent_shape() == (12, 16, 16) and mgd.trainable_params() == []
    mgd.update_step(4000)
    loss, grad, _ = _ms_step(mgd, _pixel_space_inputs(mgd))
    g = grad.asnumpy()
    print(f"[pixel-space] loss {float(loss):.4f}, |grad| min {np.abs(g).min():.2e} max {np.abs(g).max():.2e}")
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert g.shape == (N_VIEW, 32, 32, 3) and np.count_nonzero(g) > 0.99 * g.size


def test_pixel_space_x0_clip_parity():
    """Pixel space (demo model: identity first stage, 2x2 unshuffle, sqrt_linear schedule): the x0 target is
    clipped to [-1, 1]; loss and d/d rgb agree with the torch twin, and the clip really acts here."""
    from mindspore_impl.mvdream.first_stage import IdentityFirstStage as MsIdentity
    from torch_ref.mvdream.first_stage import IdentityFirstStage as TIdentity
    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo-model.yaml")
    params = load_model_config(demo)
    torch.manual_seed(0)
    tu = t_unet.build_from_config(dict(params["unet_config"]["params"])).eval()
    _randomize(tu, 3)
    state = numpy_state(tu, PREFIXES["unet"])
    converted = convert_state_dict(state, params, parts=["unet"], log=lambda *_: None)
    mu = ms_unet.build_from_config(dict(params["unet_config"]["params"]))
    load_state_dict(mu, converted, prefix=PREFIXES["unet"])
    cfg = msg.Config(n_view=N_VIEW, image_size=32, guidance_scale=20.0, recon_std_rescale=0.5,
                     min_step_percent=0.5, max_step_percent=0.5)
    tgd = torch_module(tg.MultiviewDiffusionGuidance(cfg, tu, TIdentity(3, 2),
                                                     t_schedule.NoiseSchedule.from_config(params), 1.0))
    mgd = msg.MultiviewDiffusionGuidance(cfg, mu, MsIdentity(3, 2), ms_schedule.NoiseSchedule.from_config(params), 1.0)
    assert mgd.clip_x0 and tgd.clip_x0
    tgd.update_step(0)
    mgd.update_step(0)
    inputs = _pixel_space_inputs(mgd)
    t_loss, t_grad, _ = _torch_step(tgd, inputs)
    m_loss, m_grad, _ = _ms_step(mgd, inputs)
    assert_parity(m_loss, t_loss, "pixel-space x0 clip: loss")
    # random weights put x0 = (x_t - 0.96 e) / 0.28 far outside [-1, 1] before the clip: float32 rounding of
    # those large values in the std rescale gives ~1.6e-4 of max |grad|
    assert_grad_parity(m_grad, t_grad, "pixel-space x0 clip: d/d rgb", rel=5e-4)
    mgd.clip_x0 = False
    unclipped, _, _ = _ms_step(mgd, inputs)
    print(f"[pixel-space] loss clipped {float(t_loss):.4f} vs unclipped {float(unclipped.asnumpy()):.4f}")
    assert float(unclipped.asnumpy()) > 1.5 * float(t_loss)
