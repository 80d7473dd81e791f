"""Parity of the MVDream multiview UNet: torch_ref vs mindspore_impl (docs/architecture.md, "Parity").

Weights travel the user's way: torch state dict -> original-format .pt (under the UNet prefix)
-> convert.pt2ms.convert_state_dict -> strict load into the MindSpore model.
"""
import os

import mindspore as ms
import numpy as np
import pytest
import torch

from convert.keymaps import UNET, expected_torch_shapes, name_map
from neutral.mvdream.model_config import load_model_config
from tests.parity import assert_parity, to_numpy, to_torch, torch_module
from tests.parity_cases import randomize_unet as randomize
from tests.parity_cases import tiny_unet_params
from tests.parity_cases import unet_inputs as make_inputs
from tests.parity_cases import unet_ms_run as ms_run
from tests.parity_cases import unet_ms_twin as ms_twin
from tests.parity_cases import unet_pair
from tests.parity_cases import unet_torch_run as torch_run

import mindspore_impl.mvdream as ms_mvdream
from mindspore_impl.mvdream import attention as ms_attention
from mindspore_impl.mvdream import unet as ms_unet
import torch_ref.mvdream as pt_mvdream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = UNET.prefix


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    """Tiny UNet pair and the 4-view (2 objects x 4 views, with camera) PyNative results."""
    params, pt_model, ms_model = unet_pair(str(tmp_path_factory.mktemp("tiny4")), seed=0)
    inputs = make_inputs(8, params["context_dim"], camera=True, seed=1)
    return dict(params=params, pt=pt_model, ms=ms_model, inputs=inputs,
                ref=torch_run(pt_model, *inputs, num_frames=4), got=ms_run(ms_model, *inputs, num_frames=4))


def test_four_views_with_camera_outputs_and_input_gradients(tiny4):
    (out, gx, gc), (ref_out, ref_gx, ref_gc) = tiny4["got"], tiny4["ref"]
    assert out.shape == (8, 4, 16, 16)
    assert_parity(out, ref_out, "unet 4 views + camera: output")
    assert_parity(gx, ref_gx, "unet 4 views + camera: d/dx")
    assert_parity(gc, ref_gc, "unet 4 views + camera: d/dcontext")
    # the views really attend to each other: changing view 0 changes the output of view 1
    x, t, ctx, cam, _ = tiny4["inputs"]
    x2 = x.copy()
    x2[0] += 1.0
    out2 = tiny4["ms"](ms.Tensor(x2), ms.Tensor(t), ms.Tensor(ctx), ms.Tensor(cam), 4).asnumpy()
    assert np.abs(out2[1] - out[1]).max() > 1e-3
    assert np.abs(out2[4:] - out[4:]).max() == 0.0  # the other object is untouched


def test_one_view_without_camera(tiny4):
    """camera=None, num_frames=1: plain SD 2.1 behaviour, same weights."""
    inputs = make_inputs(2, tiny4["params"]["context_dim"], camera=False, seed=2)
    (out, gx, gc) = ms_run(tiny4["ms"], *inputs, 1)
    (ref_out, ref_gx, ref_gc) = torch_run(tiny4["pt"], *inputs, 1)
    assert_parity(out, ref_out, "unet 1 view, no camera: output")
    assert_parity(gx, ref_gx, "unet 1 view, no camera: d/dx")
    assert_parity(gc, ref_gc, "unet 1 view, no camera: d/dcontext")


def test_recompute_switch_keeps_gradients(tiny4, tmp_path):
    """use_checkpoint=True -> Cell.recompute() on every ResBlock / SpatialTransformer3D; gradients unchanged
    (checked on the middle block: ResBlock, joint-view transformer, ResBlock)."""
    recomputed = ms_twin(tiny4["pt"], tiny4["params"] | {"use_checkpoint": True}, str(tmp_path))
    blocks = [c for _, c in recomputed.cells_and_names()
              if isinstance(c, (ms_unet.ResBlock, ms_attention.SpatialTransformer3D))]
    assert len(blocks) == 12 and all(getattr(c, "_has_config_recompute", False) for c in blocks)
    rng = np.random.default_rng(5)
    h, emb = rng.standard_normal((8, 64, 8, 8)), rng.standard_normal((8, 128))
    ctx, w = rng.standard_normal((8, 5, 32)), rng.standard_normal((8, 64, 8, 8))
    h, emb, ctx, w = (ms.Tensor(a.astype(np.float32)) for a in (h, emb, ctx, w))

    def grads(block):
        def loss(hh, ee):
            return (block(hh, ee, ctx, 4) * w).sum()
        return ms.grad(loss, grad_position=(0, 1))(h, emb)

    (gh, ge), (ref_gh, ref_ge) = grads(recomputed.middle_block), grads(tiny4["ms"].middle_block)
    assert_parity(gh, ref_gh, "recompute vs plain middle block: d/dh", rel=1e-5)
    assert_parity(ge, ref_ge, "recompute vs plain middle block: d/demb", rel=1e-5)


def test_v15_style_config(tmp_path):
    """sd-v1.5-4view style (num_heads instead of num_head_channels, 1x1-conv proj_in/out, other context
    width) plus the two rarer switches use_scale_shift_norm and conv_resample=False."""
    params = tiny_unet_params(num_heads=2, num_head_channels=-1, use_linear_in_transformer=False, context_dim=24,
                              use_scale_shift_norm=True, conv_resample=False)
    pt_model = pt_mvdream.MultiViewUNetModel(**params).eval()
    randomize(pt_model, seed=3)
    assert pt_model.input_blocks[3][1].proj_in.weight.shape == (64, 64, 1, 1)
    assert pt_model.input_blocks[3][1].transformer_blocks[0].attn1.heads == 2
    ms_model = ms_twin(pt_model, params, str(tmp_path))
    torch_module(pt_model)
    x, t, ctx, cam, _ = make_inputs(4, 24, camera=True, seed=4)
    out = ms_model(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx), ms.Tensor(cam), 4)
    with torch.no_grad():
        ref = pt_model(to_torch(x), to_torch(t), to_torch(ctx), to_torch(cam), num_frames=4)
    assert_parity(out, ref, "unet v1.5-style: output")


def test_norm_num_groups_extension(tmp_path):
    """norm_num_groups (this port's extension, default 32 = upstream): 8 groups in every ResBlock, transformer
    and output GroupNorm; same output in both trees. With 32 channels and 32 groups each channel is normalised
    alone, which removes its spatial mean: the demo model (configs/demo-model.yaml) uses 8."""
    params = tiny_unet_params(norm_num_groups=8)
    pt_model = pt_mvdream.MultiViewUNetModel(**params).eval()
    randomize(pt_model, seed=5)
    assert pt_model.out[0].num_groups == 8 and pt_model.input_blocks[1][0].in_layers[0].num_groups == 8
    assert pt_model.input_blocks[3][1].norm.num_groups == 8
    ms_model = ms_twin(pt_model, params, str(tmp_path))
    torch_module(pt_model)
    assert ms_model.out[0].num_groups == 8
    x, t, ctx, cam, _ = make_inputs(4, params["context_dim"], camera=True, seed=6)
    out = ms_model(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx), ms.Tensor(cam), 4)
    with torch.no_grad():
        ref = pt_model(to_torch(x), to_torch(t), to_torch(ctx), to_torch(cam), num_frames=4)
        default = pt_mvdream.MultiViewUNetModel(**tiny_unet_params())
        default.load_state_dict(pt_model.state_dict())
        ref32 = torch_module(default.eval())(to_torch(x), to_torch(t), to_torch(ctx), to_torch(cam), num_frames=4)
    assert_parity(out, ref, "unet norm_num_groups=8: output")
    assert float(np.abs(to_numpy(ref) - to_numpy(ref32)).max()) > 1e-2  # the groups really changed


def test_fp16_weights_switch(tiny4, tmp_path):
    """use_fp16: Dense/Conv weights float16 (norms float32), float32 output close to the fp32 reference."""
    ms16 = ms_twin(tiny4["pt"], tiny4["params"] | {"use_fp16": True}, str(tmp_path))
    dtypes = {p.name: p.dtype for p in ms16.get_parameters()}
    assert dtypes["input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"] == ms.float16
    assert dtypes["input_blocks.3.1.transformer_blocks.0.norm1.gamma"] == ms.float32
    x, t, ctx, cam, _ = make_inputs(4, tiny4["params"]["context_dim"], camera=True, seed=6)
    out = ms16(ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx), ms.Tensor(cam), 4)
    assert out.dtype == ms.float32
    with torch.no_grad():
        ref = tiny4["pt"](to_torch(x), to_torch(t), to_torch(ctx), to_torch(cam), num_frames=4)
    assert_parity(out, ref, "unet fp16 weights vs fp32 reference: output", dtype="float16")


def test_graph_mode_matches_pynative(tiny4):
    x, t, ctx, cam, _ = tiny4["inputs"]
    ms.set_context(mode=ms.GRAPH_MODE)
    out = tiny4["ms"](ms.Tensor(x), ms.Tensor(t), ms.Tensor(ctx), ms.Tensor(cam), 4)
    assert_parity(out, tiny4["got"][0], "unet GRAPH vs PyNative: output", rel=1e-6)


def test_full_sd21_config_names_and_shapes():
    """The converted name/shape set of the real sd-v2-base UNet equals the MindSpore model's, exactly."""
    from mindspore.nn.utils import no_init_parameters
    model_params = load_model_config(os.path.join(ROOT, "configs", "sd-v2-base.yaml"))
    torch_shapes = expected_torch_shapes(UNET, model_params)
    names = name_map(UNET, torch_shapes)
    converted = {names[k]: shape for k, shape in torch_shapes.items()}
    with no_init_parameters():  # shapes only: skip allocating/initialising 868M weights
        model = ms_mvdream.MultiViewUNetModel(**model_params["unet_config"]["params"])
    ms_shapes = {p.name: tuple(p.shape) for p in model.get_parameters()}
    assert len(torch_shapes) == 690  # SD 2.1 UNet (686) + camera_embed (4)
    assert sum(int(np.prod(s)) for s in torch_shapes.values()) == 867_572_164
    assert sorted(set(converted) ^ set(ms_shapes)) == []
    assert {k: v for k, v in converted.items() if ms_shapes[k] != v} == {}
    assert torch_shapes["camera_embed.0.weight"] == (1280, 16)
    assert converted["middle_block.1.transformer_blocks.0.norm1.weight".replace("weight", "gamma")] == (1280,)
    assert torch_shapes["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)


@pytest.mark.parametrize("override, message", [
    (dict(resblock_updown=True), "resblock_updown=True is not supported"),
    (dict(use_spatial_transformer=False), "use_spatial_transformer=False"),
    (dict(num_classes=10), "class/ADM conditioning"),
    (dict(disable_middle_self_attn=True), "disabling self-attention"),
    (dict(dims=3), "dims=3"),
])
def test_unsupported_options_fail_clearly(override, message):
    for tree in (pt_mvdream, ms_mvdream):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            tree.MultiViewUNetModel(**tiny_unet_params(**override))
