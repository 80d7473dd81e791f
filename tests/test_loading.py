"""The checkpoint layout (neutral/mvdream/checkpoint_layout.py) and the one model loader
(mindspore_impl/mvdream/loading.py): a tiny random checkpoint round trip, and the errors users see."""
import os

import mindspore as ms
import numpy as np
import pytest

from mindspore_impl.core.checkpoint import CheckpointError, save_params
from mindspore_impl.mvdream import loading
from mindspore_impl.mvdream.first_stage import IdentityFirstStage
from neutral.config import ConfigError
from neutral.mvdream import checkpoint_layout as layout
from neutral.mvdream.model_config import load_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = load_model_config(os.path.join(ROOT, "configs", "tiny-mvdream.yaml"))
DEMO = load_model_config(os.path.join(ROOT, "configs", "demo-model.yaml"))


def test_layout_is_the_original_checkpoint_format():
    """Facts of the original MVDream checkpoint (upstream LatentDiffusionInterface's attribute paths and YAML
    entries): spelled out here on purpose, so an edit of the one definition fails."""
    assert layout.PREFIXES == {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                               "text_encoder": "cond_stage_model.model."}
    assert layout.CONFIG_KEYS == {"unet": "unet_config", "vae": "first_stage_config",
                                  "text_encoder": "cond_stage_config"}
    assert layout.NAMES == ("unet", "vae", "text_encoder")
    assert layout.part("vae") is layout.VAE
    with pytest.raises(ValueError, match="known: unet, vae, text_encoder"):
        layout.part("clip")
    assert layout.keys_outside(["model.diffusion_model.out.2.weight", "model_ema.decay", "betas"]) == \
        ["betas", "model_ema.decay"]


def test_converter_takes_its_prefixes_from_the_layout():
    from convert.keymaps import SUBMODELS
    assert [(s.name, s.prefix, s.config_key) for s in SUBMODELS[:3]] == \
        [(p.name, p.prefix, p.config_key) for p in layout.PARTS]


def _random_state(models: dict, seed: int = 0) -> dict:
    """MindSpore-named random arrays under the layout's prefixes, one per parameter of `models`."""
    rng = np.random.default_rng(seed)
    return {layout.PREFIXES[name] + p.name: rng.standard_normal(p.shape).astype(np.float32)
            for name, cell in models.items() for p in cell.get_parameters()}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """(path of a tiny random .safetensors with all three sub-models, its state)."""
    state = _random_state(loading.build_models(TINY))
    path = str(tmp_path_factory.mktemp("loading") / "tiny.safetensors")
    save_params(state, path)
    return path, state


def _assert_loaded(models: dict, state: dict) -> None:
    for name, cell in models.items():
        for p in cell.get_parameters():
            expected = state[layout.PREFIXES[name] + p.name].astype(ms.dtype_to_nptype(p.dtype))
            np.testing.assert_array_equal(p.asnumpy(), expected, err_msg=f"{name}: {p.name}")


def test_round_trip_every_value_and_subsets(tiny_ckpt, tmp_path):
    path, state = tiny_ckpt
    models = loading.load_models(path, TINY)
    assert sorted(models) == ["text_encoder", "unet", "vae"]
    n_params = sum(len(list(cell.get_parameters())) for cell in models.values())
    assert n_params == len(state)
    _assert_loaded(models, state)
    assert not any(cell.training for cell in models.values())
    # a MindSpore .ckpt holds the same; the SDS guidance loads two of the three sub-models
    ckpt = str(tmp_path / "tiny.ckpt")
    save_params(state, ckpt)
    two = loading.load_models(ckpt, TINY, ("unet", "vae"))
    assert sorted(two) == ["unet", "vae"]
    _assert_loaded(two, state)


def test_half_precision_unet(tiny_ckpt):
    """use_fp16: UNet Dense/Conv weights float16 (rounded from the checkpoint), norms float32; other parts fp32."""
    path, state = tiny_ckpt
    models = loading.load_models(path, TINY, ("unet", "text_encoder"), use_fp16=True)
    assert {p.dtype for p in models["unet"].get_parameters()} == {ms.float16, ms.float32}
    assert {p.dtype for p in models["text_encoder"].get_parameters()} == {ms.float32}
    _assert_loaded(models, state)
    assert {p.dtype for p in loading.build_model(TINY, "unet").get_parameters()} == {ms.float32}


def test_pixel_space_first_stage_is_weightless():
    vae = loading.build_model(DEMO, "vae")
    assert isinstance(vae, IdentityFirstStage) and not list(vae.get_parameters())


def test_missing_file_names_the_download_and_convert_hint(tmp_path):
    missing = str(tmp_path / "mvdream-sd21.ckpt")
    for path in (missing, None, ""):
        with pytest.raises(FileNotFoundError) as exc:
            loading.load_models(path, TINY)
        text = str(exc.value)
        assert "MVDream checkpoint not found" in text and loading.CHECKPOINT_HINT in text
        assert "huggingface.co/MVDream/MVDream" in text and "python -m convert.pt2ms --src" in text
        assert repr(path) in text
    original = tmp_path / "sd-v2.1-base-4view.pt"
    original.write_bytes(b"not converted")
    with pytest.raises(CheckpointError, match="expected a converted .ckpt or .safetensors file"):
        loading.load_models(str(original), TINY)


def test_wrong_keys_are_checkpoint_errors(tiny_ckpt, tmp_path):
    _, state = tiny_ckpt
    unet = layout.PREFIXES["unet"]
    cases = {
        "outside": ({**state, "model_ema.decay": np.zeros(1, np.float32)}, "keys outside the UNet/VAE/text encoder"),
        "missing": ({k: v for k, v in state.items() if k != unet + "out.2.weight"}, "missing keys.*out.2.weight"),
        "unexpected": ({**state, unet + "extra": np.zeros(1, np.float32)}, "unexpected keys.*extra"),
        "shape": ({**state, unet + "out.2.bias": np.zeros(3, np.float32)}, "shape mismatches.*out.2.bias"),
    }
    for case, (bad, match) in cases.items():
        path = str(tmp_path / f"{case}.safetensors")
        save_params(bad, path)
        with pytest.raises(CheckpointError, match=match) as exc:
            loading.load_models(path, TINY, ("unet",))
        assert path in str(exc.value), case
        if case != "outside":
            assert f"(UNet, prefix '{unet}')" in str(exc.value)


def test_config_without_the_entry_is_a_config_error():
    with pytest.raises(ConfigError, match="no 'cond_stage_config' entry for the text encoder"):
        loading.build_models({k: v for k, v in TINY.items() if k != "cond_stage_config"})
