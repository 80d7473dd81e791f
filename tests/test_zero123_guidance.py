"""zero123-guidance: one step (loss, grad norm, d loss / d rendered rgb) MindSpore vs torch_ref through the converter,
in SDS and SJC modes; the SDS gradient against the model's own conditional / unconditional eps; the cached reference
embeddings; per-view timesteps in the annealed range; the frozen model outside every trainable set; bad input.

Weights travel the user's way: torch_ref's tiny Zero123 (configs/tiny-zero123.yaml) with random weights -> a
Lightning-style .ckpt in the original layout -> `python -m convert.zero123` -> `Zero123Guidance.from_config`.
"""
import os

import imageio.v3 as iio
import mindspore as ms
import numpy as np
import pytest
import torch

from convert.zero123 import main as convert_main
from mindspore_impl.core.checkpoint import CheckpointError
from mindspore_impl.lift3d.guidance import multiview_diffusion_guidance as mvg
from mindspore_impl.lift3d.guidance import zero123_guidance as zg
from mindspore_impl.mvdream.schedule import NoiseSchedule
from mindspore_impl.zero123.loading import load_zero123
from neutral.config import parse_structured
from neutral.errors import MissingFileError
from neutral.lift3d.multiview_diffusion_guidance import GuidanceError
from neutral.lift3d.single_image_datamodule import SingleImageError
from neutral.lift3d.zero123_guidance import reference_image
from neutral.mvdream.model_config import load_model_config
from neutral.registry import find
from tests.parity import assert_parity, to_torch, torch_module
from tests.parity_cases import relative_to_max
from tests.test_zero123_model import TINY_YAML, original_checkpoint, save_lightning
from torch_ref.lift3d.guidance.zero123_guidance import Zero123Guidance as TorchZero123Guidance
from torch_ref.mvdream.schedule import NoiseSchedule as TorchNoiseSchedule
from torch_ref.zero123.model import Zero123 as TorchZero123

# threestudio configs/zero123.yaml
MIN_STEP = [0, 0.4, 0.2, 200]
MAX_STEP = [0, 0.85, 0.5, 200]


def write_disc_rgba(path: str, size: int = 40, color=(200, 60, 40)) -> str:
    """An RGBA image: an opaque disc of `color` on a transparent background."""
    img = np.zeros((size, size, 4), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (0.3 * size) ** 2
    img[inside] = list(color) + [255]
    iio.imwrite(path, img)
    return path


def tiny_zero123_checkpoint(folder, seed: int = 0):
    """(torch_ref Zero123 with the weights the original file samples with, original .ckpt, converted .ckpt)."""
    params = load_model_config(TINY_YAML)
    model = TorchZero123(params)
    used, sd = original_checkpoint(model, seed=seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in used.items()})
    src, dst = os.path.join(folder, "zero123-tiny.ckpt"), os.path.join(folder, "zero123-tiny-ms.ckpt")
    save_lightning(sd, src)
    assert convert_main(["--src", src, "--dst", dst, "--config", TINY_YAML]) == 0
    return model.eval(), src, dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero123-guidance")
    model, src, dst = tiny_zero123_checkpoint(str(folder))
    image = write_disc_rgba(str(folder / "disc_rgba.png"))
    params = load_model_config(TINY_YAML)
    return dict(model=torch_module(model), src=src, dst=dst, image=image, params=params,
                ms_model=load_zero123(dst, params))


def _cfg(tiny, **kw):
    base = dict(pretrained_model_name_or_path=tiny["dst"], pretrained_config=TINY_YAML, cond_image_path=tiny["image"],
                cond_elevation_deg=5.0, cond_camera_distance=3.8, guidance_scale=3.0,
                min_step_percent=MIN_STEP, max_step_percent=MAX_STEP)
    base.update(kw)
    return base


def _build(tiny, from_config: bool = False, **kw):
    """The MindSpore guidance: the product path (from_config: converted checkpoint, model YAML, image file), or the
    same from the module's loaded model (faster)."""
    if from_config:
        return zg.Zero123Guidance.from_config(_cfg(tiny, **kw))
    cfg = parse_structured(zg.Config, _cfg(tiny, **kw))
    schedule = NoiseSchedule.from_config(tiny["params"])
    return zg.Zero123Guidance(cfg, tiny["ms_model"], schedule, reference_image(cfg, 32))


def _pair(tiny, from_config: bool = False, **kw):
    """(MindSpore guidance, its torch_ref twin on the same weights and reference image)."""
    mgd = _build(tiny, from_config, **kw)
    tgd = TorchZero123Guidance(mgd.cfg, tiny["model"], TorchNoiseSchedule.from_config(tiny["params"]),
                               reference_image(mgd.cfg, mgd.image_size), mgd.image_size)
    return mgd, torch_module(tgd)


def _inputs(mgd, seed: int = 0, step: int = 100, b: int = 2, hw: int = 24):
    rng = np.random.default_rng(seed)
    mgd.update_step(step)
    inputs = mgd.sample_inputs(rng, b)
    inputs["rgb"] = rng.uniform(0, 1, (b, hw, hw, 3)).astype(np.float32)
    inputs["T"] = mgd.camera_T([20.0, -5.0, 60.0][:b], [90.0, 200.0, -30.0][:b], [3.8, 3.5, 4.0][:b])
    return inputs


ORDER = ("T", "t", "noise", "vae_noise")


def _ms_step(mgd, inputs):
    rest = [ms.Tensor(inputs[k]) for k in ORDER]
    (loss, norm), grad = ms.value_and_grad(lambda rgb: mgd(rgb, *rest), 0, None, has_aux=True)(ms.Tensor(inputs["rgb"]))
    return loss, grad, norm


def _torch_step(tgd, inputs):
    rgb = to_torch(inputs["rgb"], requires_grad=True)
    loss, norm = tgd(rgb, *[to_torch(inputs[k]) for k in ORDER])
    loss.backward()
    return loss.detach(), rgb.grad, norm


@pytest.mark.parametrize("mode,clip", [("sds", None), ("sjc", None), ("sds", [0, 0.05, 0.02, 200])])
def test_one_step_parity(tiny, mode, clip):
    """The first case builds from the files (from_config) and checks the cached reference embeddings too: computed
    once at build, equal to the twin's, never recomputed by a step."""
    first = mode == "sds" and clip is None
    mgd, tgd = _pair(tiny, from_config=first, guidance_mode=mode, grad_clip=clip)
    inputs = _inputs(mgd)
    tgd.update_step(100)
    t_loss, t_grad, t_norm = _torch_step(tgd, inputs)
    calls = []
    if first:
        assert mgd.clip_embedding.shape == (1, 1, 32) and mgd.ref_latent.shape == (1, 4, 16, 16)
        assert_parity(mgd.clip_embedding.asnumpy(), tgd.c_crossattn, "cached CLIP embedding")
        assert_parity(mgd.ref_latent.asnumpy(), tgd.c_concat, "cached reference latent (first-stage mode)")
        encode = mgd.model.encode_reference
        mgd.model.encode_reference = lambda *a: calls.append(1) or encode(*a)
    m_loss, m_grad, m_norm = _ms_step(mgd, inputs)
    if first:
        del mgd.model.encode_reference
        assert calls == []
    print(f"{mode} clip={clip}: t {inputs['t'].tolist()}, loss {float(t_loss):.4f}")
    assert float(t_loss) > 0 and float(t_grad.abs().max()) > 0
    assert m_grad.shape == (2, 24, 24, 3)
    assert_parity(m_loss, t_loss, f"zero123 {mode} loss")
    assert_parity(m_norm, t_norm, f"zero123 {mode} grad norm")
    a, r, _ = relative_to_max(m_grad, t_grad)
    assert_parity(a, r, f"zero123 {mode} d loss / d rgb (relative to max |ref|)")
    if clip is not None:  # 0.035 at step 100: the clamp bites
        assert mgd.grad_clip_val == pytest.approx(0.035)
        assert float(m_norm) <= 0.035 * np.sqrt(2 * 4 * 16 * 16) + 1e-5


@pytest.mark.parametrize("mode", ["sds", "sjc"])
def test_gradient_from_the_models_own_eps(tiny, mode):
    """d loss / d latents = grad / B with eps from Zero123's own API: the conditional eps recomputes the CLIP embedding
    and reference latent from the image (so the cached ones are right), the unconditional one is `unconditional`
    (zero c_concat and c_crossattn). SDS: grad = (1 - abar_t)(eps_cfg - noise); SJC: (y - (z - sigma eps_cfg)) / sigma
    with eps_cfg taken at z / sqrt(1 + sigma^2)."""
    mgd = _build(tiny, guidance_mode=mode)
    assert zg.sjc_perturb is mvg.sjc_perturb and zg.sjc_grad is mvg.sjc_grad and zg.sds_grad is mvg.sds_grad
    inputs = _inputs(mgd, seed=4)
    rng = np.random.default_rng(5)
    latents = ms.Tensor(rng.standard_normal((2, 4, 16, 16)).astype(np.float32) * 0.5)
    t, T, noise = ms.Tensor(inputs["t"]), ms.Tensor(inputs["T"]), ms.Tensor(inputs["noise"])
    grad = ms.grad(lambda z: mgd.latent_loss(z, T, t, noise)[0])(latents).asnumpy()

    model = mgd.model
    image = ms.Tensor(reference_image(mgd.cfg, 32).transpose(2, 0, 1)[None].repeat(2, 0)) * 2.0 - 1.0
    abar = mgd.noise_schedule.alphas_cumprod_np[inputs["t"]].reshape(2, 1, 1, 1)
    y, n = latents.asnumpy().astype(np.float64), inputs["noise"].astype(np.float64)
    if mode == "sds":
        x_in = np.sqrt(abar) * y + np.sqrt(1 - abar) * n
    else:
        sigma = np.sqrt((1 - abar) / abar)
        z = y + sigma * n
        x_in = z / np.sqrt(1 + sigma ** 2)
    x = ms.Tensor(x_in.astype(np.float32))
    ref_latent = model.first_stage_model.encode_mode(image)
    e_c = model(x, t, image, ref_latent, T).asnumpy()
    e_u = model.unconditional(x, t).asnumpy()
    eps = e_u + 3.0 * (e_c - e_u)
    expected = (1 - abar) * (eps - n) if mode == "sds" else (y - (z - sigma * eps)) / sigma
    a, r, _ = relative_to_max(grad, expected / 2)
    assert_parity(a, r, f"{mode}: d loss / d latents vs the model's own eps", rel=1e-5)


def test_timesteps_per_view_in_the_annealed_range(tiny):
    mgd = _build(tiny)
    expected = {0: (400, 850), 100: (300, 675), 200: (200, 500), 5000: (200, 500)}
    for step, (lo, hi) in expected.items():
        mgd.update_step(step)
        assert (mgd.min_step, mgd.max_step) == (lo, hi)
        t = mgd.sample_inputs(np.random.default_rng(step), 64)["t"]
        assert t.shape == (64,) and t.dtype == np.int32 and t.min() >= lo and t.max() <= hi
        assert len(set(t.tolist())) > 30  # one timestep per view
    # the same Generator state gives the same inputs (resume)
    a = mgd.sample_inputs(np.random.default_rng(3), 2)
    b = mgd.sample_inputs(np.random.default_rng(3), 2)
    assert all(np.array_equal(a[k], b[k]) for k in a)


class _GuidanceStep(ms.nn.Cell):
    """rgb + step inputs -> (loss, d loss / d rgb), the shape of a system's compiled step."""

    def __init__(self, guidance):
        super().__init__()
        self.guidance = guidance
        self.grad_fn = ms.value_and_grad(self.forward, grad_position=0, has_aux=True)

    def forward(self, rgb, T, t, noise, vae_noise):
        return self.guidance(rgb, T, t, noise, vae_noise)

    def construct(self, rgb, T, t, noise, vae_noise):
        (loss, _), grad = self.grad_fn(rgb, T, t, noise, vae_noise)
        return loss, grad


def test_graph_mode_equals_pynative(tiny):
    """One compiled graph for two steps: update_step's new clip bound reaches it without recompiling."""
    mgd = _build(tiny, grad_clip=[0, 0.05, 0.02, 200])
    step = _GuidanceStep(mgd)
    losses = []
    for global_step in (0, 100):
        inputs = _inputs(mgd, seed=3, step=global_step)
        ms.set_context(mode=ms.PYNATIVE_MODE)
        p_loss, p_grad, _ = _ms_step(mgd, inputs)
        ms.set_context(mode=ms.GRAPH_MODE)
        try:
            g_loss, g_grad = step(*[ms.Tensor(inputs[k]) for k in ("rgb",) + ORDER])
        finally:
            ms.set_context(mode=ms.PYNATIVE_MODE)
        assert_parity(g_loss, p_loss, f"GRAPH vs PyNative loss, step {global_step}", rel=1e-5)
        a, r, _ = relative_to_max(g_grad, p_grad)
        assert_parity(a, r, f"GRAPH vs PyNative d loss / d rgb, step {global_step}", rel=1e-5)
        losses.append(float(g_loss))
    assert losses[0] != losses[1]


def test_half_precision_weights(tiny):
    """fp16 UNet weights (norms fp32), fp32 VAE, CLIP and SDS math: a loss near the fp32 one."""
    fp32 = _build(tiny)
    inputs = _inputs(fp32, seed=2)
    full, _, _ = _ms_step(fp32, inputs)
    half = zg.Zero123Guidance.from_config(_cfg(tiny, half_precision_weights=True))
    unet = half.model.model.diffusion_model
    assert {p.dtype for p in unet.get_parameters()} == {ms.float16, ms.float32}
    assert {p.dtype for p in half.model.first_stage_model.get_parameters()} == {ms.float32}
    h_loss, h_grad, _ = _ms_step(half, _inputs(half, seed=2))
    rel = abs(float(h_loss) - float(full)) / float(full)
    print(f"[half] loss {float(h_loss):.4f} vs fp32 {float(full):.4f} (rel {rel:.2e})")
    assert h_grad.dtype == ms.float32 and rel < 2e-2


def test_frozen_model_never_trainable_or_saved(tiny):
    mgd = _build(tiny)
    named = list(mgd.parameters_and_names())
    assert len(named) > 300 and mgd.trainable_params() == []
    assert all(not p.requires_grad for _, p in named)
    assert all(n.startswith(mgd.checkpoint_exclude_prefixes()) for n, _ in named)

    class System(ms.nn.Cell):  # how a system holds it: only its own fields are trainable
        def __init__(self):
            super().__init__()
            self.geometry = ms.nn.Dense(2, 2)
            self.guidance = mgd

    assert sorted(p.name for p in System().trainable_params()) == ["geometry.bias", "geometry.weight"]


def test_registered_and_bad_input(tiny, tmp_path):
    assert find("zero123-guidance") is zg.Zero123Guidance
    with pytest.raises(GuidanceError, match="guidance_mode"):
        zg.Zero123Guidance.from_config(_cfg(tiny, guidance_mode="x0"))
    with pytest.raises(ValueError, match="Allowed keys"):
        zg.Zero123Guidance.from_config(_cfg(tiny, guidance_scal=3.0))
    missing = str(tmp_path / "zero123-xl-ms.ckpt")
    with pytest.raises(MissingFileError) as exc:
        zg.Zero123Guidance.from_config(_cfg(tiny, pretrained_model_name_or_path=missing))
    assert missing in str(exc.value) and "python -m convert.zero123" in str(exc.value)
    with pytest.raises(CheckpointError, match="original PyTorch checkpoint"):  # the Lightning file, unconverted
        zg.Zero123Guidance.from_config(_cfg(tiny, pretrained_model_name_or_path=tiny["src"]))
    image = str(tmp_path / "nothing_rgba.png")
    with pytest.raises(SingleImageError, match=image):
        zg.Zero123Guidance.from_config(_cfg(tiny, cond_image_path=image))
