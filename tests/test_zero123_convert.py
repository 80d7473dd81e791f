"""The Zero-1-to-3 converter (convert/zero123.py) and loader (mindspore_impl/zero123/loading.py): strict on the
original layout (neutral/zero123/checkpoint_layout.py), one-line errors that name the offending key or file, no
unpickled code, and the full-size key set and shapes, from torch_ref on the meta device to the MindSpore model."""
import os

import numpy as np
import pytest
import torch

from convert.zero123 import convert_state_dict, expected_torch_shapes, main as convert_main, ms_names
from mindspore_impl.core.checkpoint import CheckpointError, save_params
from mindspore_impl.zero123.loading import load_weights, load_zero123
from mindspore_impl.zero123.model import Zero123
from neutral.errors import MissingFileError
from neutral.mvdream.model_config import load_model_config
from neutral.zero123 import checkpoint_layout as layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(ROOT, "configs", "tiny-zero123.yaml")
FULL_YAML = os.path.join(ROOT, "configs", "sd-objaverse-finetune-c_concat-256.yaml")


@pytest.fixture(scope="module")
def params():
    return load_model_config(TINY_YAML)


@pytest.fixture(scope="module")
def original(params):
    """An original-layout tiny state dict (zeros: only keys and shapes matter here) with its EMA copy, the CLIP
    text side and the schedule buffers."""
    sd = {k: np.zeros(s, np.float32) for k, s in expected_torch_shapes(params).items()}
    for key in [k for k in sd if k.startswith(layout.UNET.prefix)]:
        sd[layout.ema_key(key[len(layout.UNET.prefix):])] = np.ones_like(sd[key])
    sd.update({"model_ema.decay": np.array(0.9999, np.float32), "model_ema.num_updates": np.array(7, np.int32),
               layout.CLIP_PREFIX + "logit_scale": np.array(4.6, np.float32),
               layout.CLIP_PREFIX + "token_embedding.weight": np.zeros((10, 8), np.float32),
               layout.CLIP_PREFIX + "transformer.resblocks.0.mlp.c_fc.weight": np.zeros((32, 8), np.float32),
               "posterior_mean_coef1": np.zeros(1000, np.float32)})
    return sd


def convert(state, params, **kw):
    return convert_state_dict(state, params, log=lambda *_: None, **kw)


def test_unet_weights_choice(original, params):
    key = layout.UNET.prefix + "out.2.weight"
    assert convert(original, params)[key].min() == 1.0                       # auto: the EMA copy
    assert convert(original, params, unet_weights="raw")[key].max() == 0.0   # the training copy
    no_ema = {k: v for k, v in original.items() if not k.startswith(layout.EMA_PREFIX)}
    assert convert(no_ema, params)[key].max() == 0.0                          # auto without EMA: raw
    with pytest.raises(CheckpointError, match=r"no EMA weights \(model_ema\.\*\)"):
        convert(no_ema, params, unet_weights="ema")


@pytest.mark.parametrize("edit, pattern", [
    (lambda sd: sd.update({"cond_stage_model.model.visual.extra.weight": np.zeros(3, np.float32)}),
     r"unexpected keys \(1\): cond_stage_model\.model\.visual\.extra\.weight"),
    (lambda sd: sd.update({"lora.up.weight": np.zeros(3, np.float32)}), r"unexpected keys \(1\): lora\.up\.weight"),
    (lambda sd: sd.pop("cc_projection.bias"), r"missing keys \(1\): cc_projection\.bias"),
    (lambda sd: sd.update({"cc_projection.weight": np.zeros((32, 35), np.float32)}),
     r"shape mismatches \(1\): cc_projection\.weight: checkpoint \(32, 35\) vs model \(32, 36\)"),
    (lambda sd: sd.pop(layout.ema_key("out.2.bias")),
     r"EMA weights .*missing keys \(1\): model_ema\.diffusion_modelout2bias"),
    (lambda sd: sd.pop("first_stage_model.encoder.conv_in.weight"),
     r"missing keys \(1\): first_stage_model\.encoder\.conv_in\.weight"),
])
def test_strict_errors_name_the_key(original, params, edit, pattern):
    sd = dict(original)
    edit(sd)
    with pytest.raises(CheckpointError, match=pattern) as info:
        convert(sd, params)
    assert "\n" not in str(info.value)


def test_cli_writes_nothing_on_error_and_reports_one_line(original, params, tmp_path, capsys):
    sd = dict(original)
    sd["cc_projection.weight"] = np.zeros((32, 35), np.float32)
    src, dst = str(tmp_path / "bad.ckpt"), str(tmp_path / "out.ckpt")
    torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, src)
    assert convert_main(["--src", src, "--dst", dst, "--config", TINY_YAML]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "cc_projection.weight" in err and "\n" not in err
    assert not os.path.exists(dst)
    assert convert_main(["--src", str(tmp_path / "none.ckpt"), "--dst", dst, "--config", TINY_YAML]) == 2
    err = capsys.readouterr().err
    assert "none.ckpt" in err and "zero123-xl.ckpt" in err and "huggingface.co/cvlab/zero123-weights" in err


class Payload:
    """Pickled into a checkpoint to check that loading refuses objects (torch.load weights_only=True)."""

    def __reduce__(self):
        return (print, ("code from the checkpoint ran",))


def test_pickled_code_is_refused(tmp_path, capsys):
    src = str(tmp_path / "evil.ckpt")
    torch.save({"state_dict": {"cc_projection.bias": torch.zeros(3)}, "callback": Payload()}, src)
    assert convert_main(["--src", src, "--dst", str(tmp_path / "o.ckpt"), "--config", TINY_YAML]) == 2
    out = capsys.readouterr()
    assert "weights_only=True" in out.err and "code from the checkpoint ran" not in out.out


def test_loader_errors(original, params, tmp_path):
    with pytest.raises(MissingFileError, match=r"'missing\.ckpt'.*zero123-xl\.ckpt.*python -m convert\.zero123"):
        load_zero123("missing.ckpt", params)
    torch_file = str(tmp_path / "zero123-xl.ckpt")
    torch.save({"state_dict": {"cc_projection.bias": torch.zeros(3)}}, torch_file)
    with pytest.raises(CheckpointError, match="original PyTorch checkpoint, not a converted one"):
        load_zero123(torch_file, params)
    converted = convert(original, params)
    del converted["cond_stage_model.model.visual.ln_post.gamma"]
    path = str(tmp_path / "converted.ckpt")
    save_params(converted, path)
    with pytest.raises(CheckpointError, match=r"converted\.ckpt .*missing keys \(1\): "
                                              r"cond_stage_model\.model\.visual\.ln_post\.gamma"):
        load_zero123(path, params)


def test_full_size_names_and_shapes():
    """The real config: torch_ref's Zero123 on the meta device has exactly the original checkpoint's used keys
    (counts and totals of the published models), and they map one-to-one onto the MindSpore model's parameters."""
    from mindspore.nn.utils import no_init_parameters
    model_params = load_model_config(FULL_YAML)
    shapes = expected_torch_shapes(model_params)
    per_part = {p.name: [k for k in shapes if k.startswith(p.prefix)] for p in layout.PARTS}
    assert sum(len(v) for v in per_part.values()) == len(shapes) == 1232
    totals = {name: sum(int(np.prod(shapes[k])) for k in keys) for name, keys in per_part.items()}
    # SD 1.x UNet 859,520,964 + 320 x 4 x 3 x 3 for the 4 extra input channels; the SD VAE; openai ViT-L/14 visual
    assert totals == {"unet": 859_532_484, "vae": 83_653_863, "image_encoder": 303_966_208, "cc_projection": 593_664}
    assert {k: len(v) for k, v in per_part.items()} == {"unet": 686, "vae": 248, "image_encoder": 296,
                                                       "cc_projection": 2}
    v = layout.IMAGE_ENCODER.prefix
    assert shapes[v + "conv1.weight"] == (1024, 3, 14, 14) and shapes[v + "positional_embedding"] == (257, 1024)
    assert shapes[v + "proj"] == (1024, 768)
    assert shapes[v + "transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert shapes["cc_projection.weight"] == (768, 772) and shapes["cc_projection.bias"] == (768,)
    assert shapes[layout.UNET.prefix + "input_blocks.0.0.weight"] == (320, 8, 3, 3)
    names = ms_names(shapes)
    converted = {names[k]: s for k, s in shapes.items()}
    with no_init_parameters():  # names and shapes only: no 1.2G weights allocated
        model = Zero123(model_params)
    assert {p.name: tuple(p.shape) for p in model.get_parameters()} == converted
    assert names[v + "ln_post.weight"] == v + "ln_post.gamma"
    assert names[layout.UNET.prefix + "out.0.bias"] == layout.UNET.prefix + "out.0.beta"
    # the EMA buffer names of the real UNet are one-to-one
    assert len({layout.ema_key(k[len(layout.UNET.prefix):]) for k in per_part["unet"]}) == 686


def test_converted_state_loads_into_the_model(original, params):
    model = Zero123(params)
    load_weights(model, convert(original, params), "memory")
    assert float(model.cc_projection.weight.asnumpy().max()) == 0.0
