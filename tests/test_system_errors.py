"""mvdream-system input errors: a missing MVDream checkpoint, an unknown config key and an empty prompt are
reported with a clear message before any model is built or any trial folder is written (the real
configs/mvdream-sd21*.yaml, so what a user types first is what is tested)."""
import os
import subprocess
import sys

import pytest

import launch
from mindspore_impl.core.checkpoint import CheckpointError
from neutral.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN = os.path.join(ROOT, "configs", "mvdream-sd21.yaml")
SHADING = os.path.join(ROOT, "configs", "mvdream-sd21-shading.yaml")
PROMPT = "system.prompt_processor.prompt=an astronaut riding a horse"


def _fails(tmp_path, config, overrides, exc, match):
    out = tmp_path / "out"
    with pytest.raises(exc, match=match) as info:
        launch.main(["--config", config, "--train", f"exp_root_dir={out}",
                     f"system.guidance.ckpt_path={tmp_path / 'missing' / 'sd-v2.1-base-4view.ckpt'}", *overrides])
    assert not out.exists(), "an error must come before the trial folder is written"
    print(f"{type(info.value).__name__}: {info.value}")
    return str(info.value)


@pytest.mark.parametrize("config", [PLAIN, SHADING])
def test_missing_checkpoint_says_how_to_get_it(tmp_path, config):
    msg = _fails(tmp_path, config, [PROMPT], CheckpointError, "the MVDream checkpoint .* does not exist")
    assert "https://huggingface.co/MVDream/MVDream" in msg
    assert "python -m convert.pt2ms --src sd-v2.1-base-4view.pt" in msg and "--config configs/sd-v2-base.yaml" in msg
    assert "system.guidance.ckpt_path=" in msg


@pytest.mark.parametrize("override,match", [
    ("system.guidance.guidance_scal=10", "bad config for system.guidance: Key 'guidance_scal' not in 'Config'"),
    ("system.geometry.radiuss=2", "bad config for system.geometry: Key 'radiuss' not in 'ImplicitVolumeConfig'"),
    ("system.renderer.num_samples=8", "bad config for system.renderer: Key 'num_samples' not in 'Config'"),
    ("system.prompt_processor.promt=a cat", "bad config for system.prompt_processor: Key 'promt'"),
    ("system.loss.lambda_sdss=1", r"system.loss: unknown keys \['lambda_sdss'\]. Allowed keys: lambda_sds,"),
    ("system.lossx=1", "bad config for system: Key 'lossx' not in 'MVDreamSystemConfig'"),
    ("system.material_type=no-such-material", "system.material_type: unknown module type 'no-such-material'"),
    ("system.loss.lambda_orient=1", "lambda_orient > 0 needs normals: set system.geometry.normal_type"),
    ("system.amp_level=O3", r"system.amp_level must be one of \('O0', 'O2'\), got 'O3'"),
])
def test_unknown_or_bad_config_key(tmp_path, override, match):
    _fails(tmp_path, PLAIN, [PROMPT, override], ConfigError, match)


def test_bad_context_mode_in_config(tmp_path):
    from launch import LaunchError
    _fails(tmp_path, PLAIN, [PROMPT, "mode=fast"], LaunchError,
           "config key mode: must be one of pynative, graph, got 'fast'")


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_empty_prompt(tmp_path, prompt):
    overrides = [] if prompt is None else [f"system.prompt_processor.prompt={prompt}"]
    _fails(tmp_path, SHADING, overrides, ConfigError,
           "the prompt is empty .*: pass system.prompt_processor.prompt=")


def test_cli_prints_the_missing_checkpoint_error(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config", PLAIN, "--train",
                           "system.prompt_processor.prompt=a red cube", f"exp_root_dir={tmp_path / 'out'}",
                           "system.guidance.ckpt_path=nowhere/mvdream.ckpt"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    print(proc.stderr)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: the MVDream checkpoint 'nowhere/mvdream.ckpt' does not exist")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_missing_tokenizer_before_the_model_loads(tmp_path):
    """The checkpoint exists (an empty stand-in: it is never read, because the tokenizer is needed first)."""
    ckpt = tmp_path / "sd-v2.1-base-4view.ckpt"
    ckpt.write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="tokenizer files not found: .*stable-diffusion-2-1-base") as info:
        launch.main(["--config", PLAIN, "--train", f"exp_root_dir={out}", PROMPT, f"system.guidance.ckpt_path={ckpt}",
                     f"system.prompt_processor.tokenizer_path={tmp_path / 'no-tokenizer'}",
                     f"system.prompt_processor.cache_dir={tmp_path / 'cache'}"])
    print(info.value)
    assert not out.exists()
