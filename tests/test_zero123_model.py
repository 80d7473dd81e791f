"""Parity of the Zero-1-to-3 model: torch_ref vs mindspore_impl through the converter (docs/architecture.md,
"The twin-tree rule"), the relative camera T, and the mvdream UNet configured as zero123's plain SD 1.x UNet.

Weights travel the user's way: torch_ref's tiny Zero123 with random weights -> a Lightning-style
{"state_dict": ...} .ckpt in the original layout (with an EMA copy of the UNet, the CLIP text side and the
schedule buffers, as upstream's file holds them) -> `python -m convert.zero123` -> `load_zero123` (strict).
"""
import os

import mindspore as ms
import numpy as np
import pytest
import torch

from convert.zero123 import main as convert_main
from mindspore_impl.zero123.loading import load_zero123
from neutral.mvdream.model_config import load_model_config
from neutral.zero123 import checkpoint_layout as layout
from neutral.zero123.camera import relative_camera_T
from tests.parity import assert_parity, to_torch, torch_module
from torch_ref.zero123.model import Zero123 as TorchZero123

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(ROOT, "configs", "tiny-zero123.yaml")
FULL_YAML = os.path.join(ROOT, "configs", "sd-objaverse-finetune-c_concat-256.yaml")


def random_state(model: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    """Every tensor random (norm scales around 1, the rest ~ 0.5 / sqrt(fan-in)), so no key can be mixed up."""
    g = torch.Generator().manual_seed(seed)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    norm_scales = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, norms)}
    out = {}
    for name, v in model.state_dict().items():
        noise = torch.randn(v.shape, generator=g)
        if name in norm_scales:
            out[name] = (1.0 + 0.1 * noise).numpy()
        else:
            fan_in = max(1, v[0].numel()) if v.ndim > 1 else 4
            out[name] = (noise * (0.5 / fan_in ** 0.5)).numpy()
    return out


def original_checkpoint(model: torch.nn.Module, seed: int) -> tuple[dict, dict]:
    """(the state the reference samples with, the whole original state dict). The UNet's training copy differs
    from its EMA copy, which upstream samples with."""
    used = random_state(model, seed)
    raw_unet = random_state(model, seed + 100)
    sd = dict(used)
    for key in used:
        if key.startswith(layout.UNET.prefix):
            sd[layout.ema_key(key[len(layout.UNET.prefix):])] = used[key]
            sd[key] = raw_unet[key]
    sd["model_ema.decay"] = np.array(0.9999, np.float32)
    sd["model_ema.num_updates"] = np.array(105000, np.int32)
    width = 16  # the CLIP text side the converter drops (FrozenCLIPImageEmbedder keeps it, unused)
    sd.update({f"{layout.CLIP_PREFIX}token_embedding.weight": np.zeros((10, width), np.float32),
               f"{layout.CLIP_PREFIX}positional_embedding": np.zeros((77, width), np.float32),
               f"{layout.CLIP_PREFIX}ln_final.weight": np.ones(width, np.float32),
               f"{layout.CLIP_PREFIX}ln_final.bias": np.zeros(width, np.float32),
               f"{layout.CLIP_PREFIX}text_projection": np.zeros((width, 32), np.float32),
               f"{layout.CLIP_PREFIX}logit_scale": np.array(4.6, np.float32),
               "betas": np.linspace(1e-4, 2e-2, 1000).astype(np.float32),
               "alphas_cumprod": np.linspace(1.0, 0.1, 1000).astype(np.float32)})
    return used, sd


def save_lightning(sd: dict, path: str) -> None:
    torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                "global_step": 105000, "epoch": 3}, path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    params = load_model_config(TINY_YAML)
    pt = TorchZero123(params)
    used, sd = original_checkpoint(pt, seed=0)
    pt.load_state_dict({k: torch.from_numpy(v) for k, v in used.items()})
    pt = torch_module(pt.eval())
    folder = tmp_path_factory.mktemp("zero123")
    src, dst = str(folder / "zero123-tiny.ckpt"), str(folder / "zero123-tiny-ms.ckpt")
    save_lightning(sd, src)
    assert convert_main(["--src", src, "--dst", dst, "--config", TINY_YAML]) == 0
    ms_model = load_zero123(dst, params)
    rng = np.random.default_rng(1)
    inputs = dict(image=rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32),
                  x=rng.standard_normal((2, 4, 16, 16)).astype(np.float32),
                  t=np.array([20, 700], np.int32),
                  T=relative_camera_T([30.0, -10.0], [90.0, 200.0], [1.5, 1.2], 0.0, 0.0, 1.2))
    return dict(params=params, pt=pt, ms=ms_model, inputs=inputs, src=src, dst=dst)


def test_unet_with_8_input_channels(tiny):
    """The UNet alone, on cat([x_noisy, c_concat]) (8 channels) and a random context: output and input gradient."""
    pt_unet, ms_unet = tiny["pt"].model.diffusion_model, tiny["ms"].model.diffusion_model
    rng = np.random.default_rng(2)
    x8 = rng.standard_normal((2, 8, 16, 16)).astype(np.float32)
    ctx = rng.standard_normal((2, 1, 32)).astype(np.float32)
    w = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    t = tiny["inputs"]["t"]
    xt = to_torch(x8, requires_grad=True)
    ref = pt_unet(xt, to_torch(t).long(), to_torch(ctx))
    (ref * to_torch(w)).sum().backward()

    def loss(xx):
        out = ms_unet(xx, ms.Tensor(t), ms.Tensor(ctx))
        return (out * ms.Tensor(w)).sum(), out

    (_, out), gx = ms.value_and_grad(loss, has_aux=True)(ms.Tensor(x8))
    assert out.shape == (2, 4, 16, 16)
    assert_parity(out, ref, "zero123 unet (8 channels): output")
    assert_parity(gx, xt.grad, "zero123 unet (8 channels): d/dx")


@pytest.mark.parametrize("size", [32, 16])
def test_clip_image_tower_with_preprocessing(tiny, size):
    """Bicubic resize (down from 32 and up from 16 to the tower's 24), normalisation and the tower's embedding."""
    image = np.random.default_rng(size).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
    pt_enc, ms_enc = tiny["pt"].cond_stage_model, tiny["ms"].cond_stage_model
    with torch.no_grad():
        ref_pre = pt_enc.preprocess(to_torch(image))
        ref = pt_enc.encode(to_torch(image))
    pre = ms_enc.preprocess(ms.Tensor(image))
    emb = ms_enc.encode(ms.Tensor(image))
    assert pre.shape == (2, 3, 24, 24) and emb.shape == (2, 1, 32)
    assert_parity(pre, ref_pre, f"clip preprocess {size}->24", rel=1e-5)
    assert_parity(emb, ref, f"clip image embedding ({size}x{size} input)")


def test_cc_projection_and_reference_encoding(tiny):
    image, T = tiny["inputs"]["image"], tiny["inputs"]["T"]
    with torch.no_grad():
        ref_emb, ref_latent = tiny["pt"].encode_reference(to_torch(image))
        ref_c = tiny["pt"].camera_conditioning(ref_emb, to_torch(T))
    emb, latent = tiny["ms"].encode_reference(ms.Tensor(image))
    c = tiny["ms"].camera_conditioning(emb, ms.Tensor(T))
    assert c.shape == (2, 1, 32) and latent.shape == (2, 4, 16, 16)
    assert_parity(latent, ref_latent, "reference latent (first-stage mode)")
    assert_parity(c, ref_c, "cc_projection([clip embedding, T])")


def test_eps_with_and_without_conditioning(tiny):
    inp = tiny["inputs"]
    with torch.no_grad():
        _, ref_latent = tiny["pt"].encode_reference(to_torch(inp["image"]))
        ref_cond = tiny["pt"](to_torch(inp["x"]), to_torch(inp["t"]).long(), to_torch(inp["image"]), ref_latent,
                              to_torch(inp["T"]))
        ref_uncond = tiny["pt"].unconditional(to_torch(inp["x"]), to_torch(inp["t"]).long())
    m = tiny["ms"]
    latent = m.first_stage_model.encode_mode(ms.Tensor(inp["image"]))
    cond = m(ms.Tensor(inp["x"]), ms.Tensor(inp["t"]), ms.Tensor(inp["image"]), latent, ms.Tensor(inp["T"]))
    uncond = m.unconditional(ms.Tensor(inp["x"]), ms.Tensor(inp["t"]))
    assert_parity(cond, ref_cond, "zero123 eps, conditional")
    assert_parity(uncond, ref_uncond, "zero123 eps, unconditional (zero c_concat and c_crossattn)")
    assert np.abs(cond.asnumpy() - uncond.asnumpy()).max() > 1e-2  # the conditions matter
    # the unconditional branch is the conditional one fed zeros, as upstream builds it
    zeros = m.apply_model(ms.Tensor(inp["x"]), ms.Tensor(inp["t"]), ms.Tensor(np.zeros((2, 4, 16, 16), np.float32)),
                          ms.Tensor(np.zeros((2, 1, 32), np.float32)))
    np.testing.assert_array_equal(zeros.asnumpy(), uncond.asnumpy())


def test_graph_mode_matches_pynative(tiny):
    inp = tiny["inputs"]
    m = tiny["ms"]
    latent = m.first_stage_model.encode_mode(ms.Tensor(inp["image"]))
    eager = m(ms.Tensor(inp["x"]), ms.Tensor(inp["t"]), ms.Tensor(inp["image"]), latent, ms.Tensor(inp["T"]))
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = m(ms.Tensor(inp["x"]), ms.Tensor(inp["t"]), ms.Tensor(inp["image"]), latent, ms.Tensor(inp["T"]))
    assert_parity(graph, eager, "zero123 eps GRAPH vs PyNative", rel=1e-6)


def test_converted_unet_is_the_ema_copy(tiny):
    """Upstream samples with the EMA weights: the default conversion takes them, not the training copy."""
    from mindspore_impl.core.checkpoint import read_params
    params = read_params(tiny["dst"])
    key = "input_blocks.0.0.weight"
    ema = torch.load(tiny["src"], weights_only=True)["state_dict"][layout.ema_key(key)].numpy()
    np.testing.assert_array_equal(params[layout.UNET.prefix + key], ema)


def test_mvdream_unet_is_zero123s_plain_unet():
    """The real config builds SD 1.x's UNet from mvdream's MultiViewUNetModel with no switch: 8 input channels,
    no camera embedding, 1x1-conv proj_in / proj_out, 8 heads of width channels / 8 (legacy False)."""
    with torch.device("meta"):
        model = TorchZero123(load_model_config(FULL_YAML))
    unet = model.model.diffusion_model
    assert not hasattr(unet, "camera_embed")
    assert tuple(unet.input_blocks[0][0].weight.shape) == (320, 8, 3, 3)
    for block, ch in ((unet.input_blocks[1][1], 320), (unet.input_blocks[7][1], 1280), (unet.middle_block[1], 1280)):
        assert isinstance(block.proj_in, torch.nn.Conv2d) and tuple(block.proj_in.weight.shape) == (ch, ch, 1, 1)
        attn = block.transformer_blocks[0].attn1
        assert attn.heads == 8 and attn.to_q.weight.shape[0] == ch
        assert abs(attn.scale - (ch // 8) ** -0.5) < 1e-12
        assert tuple(block.transformer_blocks[0].attn2.to_k.weight.shape) == (ch, 768)


def _upstream_T(target_xyz, cond_xyz):
    """zero123/ldm/data/simple.py get_T on camera centres: polar from +Z, azimuth atan2(y, x), radius."""
    def spherical(p):
        xy = p[0] ** 2 + p[1] ** 2
        return np.arctan2(np.sqrt(xy), p[2]), np.arctan2(p[1], p[0]), np.sqrt(xy + p[2] ** 2)
    (th_t, az_t, r_t), (th_c, az_c, r_c) = spherical(target_xyz), spherical(cond_xyz)
    d_az = (az_t - az_c) % (2 * np.pi)
    return np.array([th_t - th_c, np.sin(d_az), np.cos(d_az), r_t - r_c])


def test_relative_camera_T_hand_computed():
    s = np.sqrt(0.5)
    T = relative_camera_T([30.0, -15.0, 10.0], [90.0, -45.0, 10.0], [1.5, 1.2, 1.2], [0.0, 0.0, 10.0],
                          [0.0, 0.0, 350.0], [1.2, 1.2, 1.2])
    expected = np.array([[-np.pi / 6, 1.0, 0.0, 0.3],                       # higher view: negative d_polar
                         [np.pi / 12, -s, s, 0.0],
                         [0.0, np.sin(np.deg2rad(20.0)), np.cos(np.deg2rad(20.0)), 0.0]])  # 350 -> 10 deg: +20
    assert T.dtype == np.float32 and T.shape == (3, 4)
    np.testing.assert_allclose(T, expected, atol=1e-6)
    assert relative_camera_T(0.0, 0.0, 1.2, 0.0, 0.0, 1.2).tolist() == [[0.0, 0.0, 1.0, 0.0]]
    # same numbers as upstream's training-data definition on camera centres (elevation up from the XY plane)
    for el, az, r, el0, az0, r0 in [(20.0, 130.0, 2.0, -5.0, 40.0, 1.7), (-40.0, -170.0, 1.1, 15.0, 160.0, 1.4)]:
        def centre(e, a, d):
            e, a = np.deg2rad(e), np.deg2rad(a)
            return d * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        np.testing.assert_allclose(relative_camera_T(el, az, r, el0, az0, r0)[0],
                                   _upstream_T(centre(el, az, r), centre(el0, az0, r0)), atol=1e-6)
