"""OpenCLIP text tower parity (torch_ref vs MindSpore through the converter, tiny arch), the HF
CLIPTextModel layout giving the same output, and the full-size ViT-H-14 name/shape set."""
import copy
import os

import mindspore as ms
import numpy as np
import pytest

from convert.hf_clip import convert_hf_text_encoder, hf_to_openclip
from convert.keymaps import TEXT_ENCODER, expected_torch_shapes, name_map
from neutral.mvdream.model_config import load_model_config
from mindspore_impl.core.checkpoint import CheckpointError, load_state_dict
from neutral.config import ConfigError
from mindspore_impl.mvdream import text_encoder as ms_te
from tests.parity import assert_parity, torch_module
from tests.parity_cases import numpy_state
from tests.parity_cases import text_ms_from_original as ms_from_original
from tests.parity_cases import text_run_torch as run_torch
from tests.parity_cases import text_tokens as tokens
from tests.parity_cases import text_torch_model as torch_model
from tests.parity_cases import text_with_layer as with_layer
from torch_ref.mvdream import text_encoder as pt_te

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = load_model_config(os.path.join(ROOT, "configs", "tiny-mvdream.yaml"))
FULL = load_model_config(os.path.join(ROOT, "configs", "sd-v2-base.yaml"))
PREFIX = TEXT_ENCODER.prefix


@pytest.mark.parametrize("layer", ["penultimate", "last"])
def test_openclip_layout_parity(layer):
    mp = with_layer(TINY, layer)
    pt = torch_model(mp)
    msm = ms_from_original(mp, numpy_state(pt, PREFIX))
    ids = tokens()
    ref = run_torch(pt, ids)
    out = msm(ms.Tensor(ids))
    assert tuple(out.shape) == (2, 77, 32)
    assert_parity(out, ref, f"text encoder ({layer})")


def test_penultimate_skips_exactly_the_last_block():
    """Penultimate output = a 2-layer tower with the same weights run to the end."""
    pt = torch_model(TINY)
    short = copy.deepcopy(TINY)
    short["cond_stage_config"]["params"].update(layer="last", arch=dict(
        TINY["cond_stage_config"]["params"]["arch"], layers=2))
    state = {k: v for k, v in pt.state_dict().items() if ".resblocks.2." not in k}
    pt_short = pt_te.build_from_config(short["cond_stage_config"]["params"]).eval()
    pt_short.load_state_dict(state, strict=True)
    torch_module(pt_short)
    ids = tokens()
    assert_parity(run_torch(pt_short, ids), run_torch(pt, ids), "2-layer last vs 3-layer penultimate", rel=1e-6)


def to_hf_layout(openclip: dict, layers: int) -> dict:
    """An HF CLIPTextModel state dict holding blocks 0..layers-1 of an open_clip text tower."""
    hf = {"text_model.embeddings.token_embedding.weight": openclip["token_embedding.weight"],
          "text_model.embeddings.position_embedding.weight": openclip["positional_embedding"],
          "text_model.embeddings.position_ids": np.arange(77, dtype=np.int64)[None],
          "text_model.final_layer_norm.weight": openclip["ln_final.weight"],
          "text_model.final_layer_norm.bias": openclip["ln_final.bias"]}
    names = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for p, arr in zip("qkv", np.split(openclip[f"{src}attn.in_proj_{kind}"], 3, axis=0)):
                hf[f"{dst}self_attn.{p}_proj.{kind}"] = arr
            for o, h in names.items():
                hf[f"{dst}{h}.{kind}"] = openclip[f"{src}{o}.{kind}"]
    return hf


def test_hf_layout_equals_openclip_layout():
    """SD 2.1's 23-of-24-layer HF encoder ('last') == OpenCLIP 'penultimate' (tiny: 2 of 3 layers)."""
    pt = torch_model(TINY)
    openclip = numpy_state(pt)
    ids = tokens()
    ref = run_torch(pt, ids)
    ms_openclip = ms_from_original(TINY, {PREFIX + k: v for k, v in openclip.items()})
    out_openclip = ms_openclip(ms.Tensor(ids))

    hf = to_hf_layout(openclip, layers=2)
    converted, params = convert_hf_text_encoder(hf, heads=2, log=lambda *_: None)
    assert params["arch"]["layers"] == 2 and params["arch"]["embed_dim"] is None and params["layer"] == "last"
    ms_hf = ms_te.build_from_config(params)
    load_state_dict(ms_hf, converted, prefix=PREFIX, strict=True)
    out_hf = ms_hf(ms.Tensor(ids))
    assert_parity(out_hf, ref, "HF 2-layer 'last' vs torch OpenCLIP penultimate")
    assert_parity(out_hf, out_openclip, "HF layout vs OpenCLIP layout (MindSpore)", rel=1e-6)

    # the same weights in both layouts; every open_clip block tensor is recovered exactly
    back = hf_to_openclip(to_hf_layout(openclip, layers=3))
    assert set(back) == set(openclip) - {"text_projection", "logit_scale"}
    assert all(np.array_equal(back[k], openclip[k]) for k in back)


def test_hf_layout_errors():
    openclip = numpy_state(torch_model(TINY))
    hf = to_hf_layout(openclip, layers=3)
    del hf["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.k_proj\.bias"):
        hf_to_openclip(hf)
    hf = to_hf_layout(openclip, layers=3)
    hf["vision_model.post_layernorm.weight"] = np.ones(4, np.float32)
    with pytest.raises(CheckpointError, match="vision_model.post_layernorm.weight"):
        hf_to_openclip(hf)


def test_graph_mode_matches_pynative():
    pt = torch_model(TINY)
    msm = ms_from_original(TINY, numpy_state(pt, PREFIX))
    ids = ms.Tensor(tokens())
    eager = msm(ids).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = msm(ids).asnumpy()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    assert_parity(graph, eager, "text encoder GRAPH vs PyNative", rel=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown text arch 'ViT-X'"):
        ms_te.parse_config({"arch": "ViT-X"})
    with pytest.raises(ConfigError, match="layer must be one of"):
        ms_te.parse_config({"layer": "middle"})
    with pytest.raises(ConfigError, match="width 32 is not divisible by heads 3"):
        ms_te.parse_config({"arch": {"width": 32, "heads": 3, "layers": 2}})
    with pytest.raises(ConfigError, match="widht"):
        ms_te.parse_config({"arch": {"widht": 8}})


def test_full_size_names_and_shapes():
    """sd-v2-base (ViT-H-14): converted names/shapes equal the MindSpore model's parameters exactly."""
    expected = expected_torch_shapes(TEXT_ENCODER, FULL)  # meta device
    mapping = name_map(TEXT_ENCODER, expected)
    converted = {mapping[k]: shape for k, shape in expected.items()}
    from mindspore.nn.utils import no_init_parameters
    with no_init_parameters():
        msm = ms_te.build_from_config(FULL["cond_stage_config"]["params"])
    actual = {p.name: tuple(p.shape) for p in msm.get_parameters()}
    assert converted == actual
    assert len(actual) == 6 + 24 * 12
    assert actual["token_embedding.embedding_table"] == (49408, 1024)
    assert actual["positional_embedding"] == (77, 1024) and actual["text_projection"] == (1024, 1024)
    assert actual["transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert msm.num_run == 23
    assert sum(int(np.prod(s)) for s in actual.values()) == 354032641
