"""A whole tiny original MVDream checkpoint (UNet + VAE + text encoder + schedule buffers) converts
to one .ckpt with nothing left over, and every tensor of it loads strictly into the MindSpore models."""
import os

import numpy as np
import torch

from convert.io import write_torch_checkpoint
from convert.keymaps import SUBMODELS
from neutral.mvdream.checkpoint_layout import CONFIG_KEYS, PREFIXES
from neutral.mvdream.model_config import load_model_config
from convert.pt2ms import main as pt2ms_main
from mindspore_impl.core.checkpoint import load_state_dict, read_params
from mindspore_impl.mvdream import text_encoder as ms_te
from mindspore_impl.mvdream import unet as ms_unet
from mindspore_impl.mvdream import vae as ms_vae
from torch_ref.mvdream import text_encoder as pt_te
from torch_ref.mvdream import unet as pt_unet
from torch_ref.mvdream import vae as pt_vae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(ROOT, "configs", "tiny-mvdream.yaml")
PARTS = {  # submodel name -> (torch builder, MindSpore builder)
    "unet": (pt_unet.build_from_config, ms_unet.build_from_config),
    "vae": (pt_vae.build_from_config, ms_vae.build_from_config),
    "text_encoder": (pt_te.build_from_config, ms_te.build_from_config),
}


def test_tiny_original_checkpoint_converts_and_loads_completely(tmp_path):
    mp = load_model_config(TINY_YAML)
    torch.manual_seed(0)
    original = {"betas": np.linspace(1e-4, 2e-2, 1000, dtype=np.float32),
                "alphas_cumprod": np.linspace(1.0, 0.1, 1000, dtype=np.float32)}
    # the converter's sub-models are the checkpoint layout's
    assert {s.name: (s.prefix, s.config_key) for s in SUBMODELS} == \
        {name: (PREFIXES[name], CONFIG_KEYS[name]) for name in PARTS}
    for name, (build_pt, _) in PARTS.items():
        module = build_pt(dict(mp[CONFIG_KEYS[name]]["params"]))
        original.update({PREFIXES[name] + k: v.detach().numpy() for k, v in module.state_dict().items()})
    src, dst = str(tmp_path / "tiny-original.pt"), str(tmp_path / "tiny.ckpt")
    write_torch_checkpoint(original, src)

    assert pt2ms_main(["--src", src, "--dst", dst, "--config", TINY_YAML]) == 0
    converted = read_params(dst)
    assert len(converted) == len(original) - 2  # only the two schedule buffers are dropped

    loaded = set()
    for name, (_, build_ms) in PARTS.items():
        cell = build_ms(dict(mp[CONFIG_KEYS[name]]["params"]))
        names = load_state_dict(cell, converted, prefix=PREFIXES[name], strict=True, what=name)
        loaded.update(PREFIXES[name] + n for n in names)
    print(f"[convert] {len(original)} original tensors -> {len(converted)} converted, {len(loaded)} loaded")
    assert loaded == set(converted)  # nothing left over
    # the MindSpore .safetensors output holds the same tensors, 0-d logit_scale included
    st = str(tmp_path / "tiny.safetensors")
    assert pt2ms_main(["--src", src, "--dst", st, "--config", TINY_YAML]) == 0
    assert {k: v.shape for k, v in read_params(st).items()} == {k: v.shape for k, v in converted.items()}
    vae, text = PREFIXES["vae"], PREFIXES["text_encoder"]
    assert converted[text + "logit_scale"].shape == ()
    # values survive: a VAE norm (weight -> gamma) and the text embedding (weight -> embedding_table)
    for t_name, m_name in [(vae + "encoder.norm_out.weight", vae + "encoder.norm_out.gamma"),
                           (text + "token_embedding.weight", text + "token_embedding.embedding_table")]:
        assert np.array_equal(converted[m_name], original[t_name])
