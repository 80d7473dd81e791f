"""AutoencoderKL parity: torch_ref vs MindSpore through the project's converter (tiny config),
plus the full-size sd-v2-base name/shape set and GRAPH-mode encoding with gradient."""
import os

import mindspore as ms
import numpy as np
import pytest

from convert.keymaps import VAE, expected_torch_shapes, name_map
from neutral.mvdream.model_config import load_model_config
from mindspore_impl.mvdream import vae as ms_vae
from tests.parity import assert_parity, to_torch
from tests.parity_cases import sds_latents_loss
from tests.parity_cases import vae_inputs as inputs
from tests.parity_cases import vae_pair as build_pair
from tests.parity_cases import vae_with_attention as with_attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = load_model_config(os.path.join(ROOT, "configs", "tiny-mvdream.yaml"))
FULL = load_model_config(os.path.join(ROOT, "configs", "sd-v2-base.yaml"))
PREFIX = VAE.prefix


@pytest.mark.parametrize("variant", ["tiny", "tiny_attn"])
def test_encode_decode_parity(variant):
    mp = TINY if variant == "tiny" else with_attention(TINY)
    pt, msm = build_pair(mp)
    x, noise, z, _ = inputs()
    post_pt = pt.encode(to_torch(x))
    post_ms = msm.encode(ms.Tensor(x))
    assert tuple(post_ms.mean.shape) == (2, 4, 16, 16)
    assert_parity(post_ms.mean, post_pt.mean, f"{variant} encode mean")
    assert_parity(post_ms.logvar, post_pt.logvar, f"{variant} encode logvar")
    assert_parity(post_ms.std, post_pt.std, f"{variant} encode std")
    assert_parity(post_ms.sample(ms.Tensor(noise)), post_pt.sample(to_torch(noise)),
                  f"{variant} posterior sample")
    dec_pt = pt.decode(to_torch(z))
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


def test_encoder_input_gradient():
    pt, msm = build_pair(TINY)
    x, noise, _, g = inputs()
    xt = to_torch(x, requires_grad=True)
    (pt.encode(xt).sample(to_torch(noise)) * 0.18215 * to_torch(g)).sum().backward()
    grad_ms = ms.grad(sds_latents_loss(msm, ms.Tensor(noise), ms.Tensor(g)))(ms.Tensor(x))
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
