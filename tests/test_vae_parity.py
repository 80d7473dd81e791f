"""AutoencoderKL parity: torch_ref vs MindSpore through the project's converter (tiny config),
plus the full-size sd-v2-base name/shape set and GRAPH-mode encoding with gradient."""
import copy
import os

import mindspore as ms
import numpy as np
import pytest
import torch

from convert.keymaps import VAE, expected_torch_shapes, name_map
from neutral.mvdream.model_config import load_model_config
from convert.pt2ms import convert_state_dict
from mindspore_impl.core.checkpoint import load_state_dict
from mindspore_impl.mvdream import vae as ms_vae
from tests.parity import assert_parity
from torch_ref.mvdream import vae as pt_vae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = load_model_config(os.path.join(ROOT, "configs", "tiny-mvdream.yaml"))
FULL = load_model_config(os.path.join(ROOT, "configs", "sd-v2-base.yaml"))
PREFIX = VAE.prefix


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (norm scales around 1), so a wrong key map cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise * (0.5 / max(1, p[0].numel()) ** 0.5))


def build_pair(model_params: dict, seed: int = 0):
    """torch VAE with random weights, and its MindSpore twin loaded through convert_state_dict."""
    params = model_params["first_stage_config"]["params"]
    pt = pt_vae.build_from_config(params).eval()
    randomize(pt, seed)
    original = {PREFIX + k: v.numpy() for k, v in pt.state_dict().items()}
    converted = convert_state_dict(original, model_params, parts=["vae"], log=lambda *_: None)
    ms_model = ms_vae.build_from_config(params)
    loaded = load_state_dict(ms_model, converted, prefix=PREFIX, strict=True)
    assert len(loaded) == len(original)
    return pt, ms_model


def inputs(seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    noise = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    z = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    g = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    return x, noise, z, g


def with_attention(model_params: dict) -> dict:
    """Tiny config with attention at resolution 16 (down level 1 and up level 1)."""
    mp = copy.deepcopy(model_params)
    mp["first_stage_config"]["params"]["ddconfig"]["attn_resolutions"] = [16]
    return mp


@pytest.mark.parametrize("variant", ["tiny", "tiny_attn"])
def test_encode_decode_parity(variant):
    mp = TINY if variant == "tiny" else with_attention(TINY)
    pt, msm = build_pair(mp)
    x, noise, z, _ = inputs()
    post_pt = pt.encode(torch.from_numpy(x))
    post_ms = msm.encode(ms.Tensor(x))
    assert tuple(post_ms.mean.shape) == (2, 4, 16, 16)
    assert_parity(post_ms.mean, post_pt.mean, f"{variant} encode mean")
    assert_parity(post_ms.logvar, post_pt.logvar, f"{variant} encode logvar")
    assert_parity(post_ms.std, post_pt.std, f"{variant} encode std")
    assert_parity(post_ms.sample(ms.Tensor(noise)), post_pt.sample(torch.from_numpy(noise)),
                  f"{variant} posterior sample")
    dec_pt = pt.decode(torch.from_numpy(z))
    dec_ms = msm.decode(ms.Tensor(z))
    assert tuple(dec_ms.shape) == (2, 3, 32, 32)
    assert_parity(dec_ms, dec_pt, f"{variant} decode")


def test_logvar_clamp():
    """The posterior clamps log-variance to [-30, 20] as the original does."""
    moments = np.concatenate([np.zeros((1, 4, 2, 2)), np.full((1, 4, 2, 2), 50.0)], axis=1).astype(np.float32)
    moments[0, 4:, 0, 0] = -100.0
    post = ms_vae.DiagonalGaussianDistribution(ms.Tensor(moments))
    lv = post.logvar.asnumpy()
    assert lv.max() == 20.0 and lv.min() == -30.0


def _sds_latents_loss(msm, x, noise, g):
    def loss(img):
        latents = msm.encode(img).sample(noise) * 0.18215
        return (latents * g).sum()
    return loss


def test_encoder_input_gradient():
    pt, msm = build_pair(TINY)
    x, noise, _, g = inputs()
    xt = torch.from_numpy(x).requires_grad_(True)
    (pt.encode(xt).sample(torch.from_numpy(noise)) * 0.18215 * torch.from_numpy(g)).sum().backward()
    grad_ms = ms.grad(_sds_latents_loss(msm, x, ms.Tensor(noise), ms.Tensor(g)))(ms.Tensor(x))
    assert_parity(grad_ms, xt.grad, "encoder input gradient")


class SDSLatentLoss(ms.nn.Cell):
    """What the SDS guidance compiles: image -> scaled latent sample -> a loss on it."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def construct(self, img, noise, g):
        return (self.vae.encode_sample(img, noise) * 0.18215 * g).sum()


class InputGrad(ms.nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad = ms.ops.GradOperation()

    def construct(self, img, noise, g):
        return self.grad(self.net)(img, noise, g)


def test_graph_mode_encode_and_grad_match_pynative():
    _, msm = build_pair(TINY)
    x, noise, _, g = inputs()
    loss, grad = SDSLatentLoss(msm), InputGrad(SDSLatentLoss(msm))
    args = (ms.Tensor(x), ms.Tensor(noise), ms.Tensor(g))
    eager, eager_grad = loss(*args).asnumpy(), grad(*args).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    graph, graph_grad = loss(*args).asnumpy(), grad(*args).asnumpy()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert_parity(graph, eager, "GRAPH vs PyNative SDS latent loss", rel=1e-5)
    assert_parity(graph_grad, eager_grad, "GRAPH vs PyNative input gradient", rel=1e-5)


def test_downsample_pads_right_and_bottom_only():
    """A stride-2 3x3 conv after (0,1,0,1) padding: 32 -> 16, first window starts at pixel 0."""
    down = ms_vae.Downsample(32)
    x = np.random.default_rng(0).standard_normal((1, 32, 6, 6)).astype(np.float32)
    w = down.conv.weight.asnumpy()
    out = down(ms.Tensor(x)).asnumpy()
    assert out.shape == (1, 32, 3, 3)
    ref00 = np.einsum("oikl,ikl->o", w, x[0, :, 0:3, 0:3]) + down.conv.bias.asnumpy()
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    ref22 = np.einsum("oikl,ikl->o", w, xp[0, :, 4:7, 4:7]) + down.conv.bias.asnumpy()
    assert_parity(out[0, :, 0, 0], ref00, "downsample corner (0,0)", rel=1e-5)
    assert_parity(out[0, :, 2, 2], ref22, "downsample corner (2,2), padded", rel=1e-5)


def test_full_size_names_and_shapes():
    """sd-v2-base VAE: converted names/shapes equal the MindSpore model's parameters exactly."""
    expected = expected_torch_shapes(VAE, FULL)  # built on the meta device
    mapping = name_map(VAE, expected)
    converted = {mapping[k]: shape for k, shape in expected.items()}
    msm = ms_vae.build_from_config(FULL["first_stage_config"]["params"])
    actual = {p.name: tuple(p.shape) for p in msm.get_parameters()}
    assert converted == actual
    assert len(actual) == 248
    assert "encoder.down.0.downsample.conv.weight" in actual and "decoder.up.3.upsample.conv.weight" in actual
    assert "decoder.up.0.upsample.conv.weight" not in actual
    assert sum(int(np.prod(s)) for s in actual.values()) == 83653863
