"""scripts/t2i.py and MVDreamPipeline on a tiny random checkpoint + tiny tokenizer files.

Writes valid PNGs (read back with imageio, shapes checked) for 4 joint views and for 5 views
(sliding window, DPM++ 2M); missing checkpoint / tokenizer files give errors that say where
to get them and how to convert.
"""
import json
import os
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from mindspore_impl.core.checkpoint import CheckpointError, save_params
from mindspore_impl.mvdream.pipeline import MVDreamPipeline
from neutral.mvdream.checkpoint_layout import PREFIXES
from tests.tiny_mvdream_models import TINY_CONFIG, write_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import t2i  # noqa: E402

MERGES = [("a", "s"), ("as", "t"), ("r", "o"), ("ro", "n"), ("c", "a"), ("ca", "t</w>")]


def write_tiny_tokenizer(folder) -> str:
    from neutral.mvdream.tokenizer import EOT, SOT, bytes_to_unicode
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens] + ["".join(m) for m in MERGES] + [SOT, EOT]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("t2i")
    ckpt = str(d / "tiny-mvdream.safetensors")
    state = write_tiny_checkpoint(ckpt, seed=0)
    return {"dir": d, "ckpt": ckpt, "state": state, "tok": write_tiny_tokenizer(d / "tokenizer")}


@pytest.mark.parametrize("num_frames,sampler,eta", [(4, "ddim", 0.5), (5, "dpmpp2m", 0.0)])
def test_end_to_end_parity_with_torch_pipeline(assets, num_frames, sampler, eta):
    """Prompt -> images through tokenizer, text encoder, UNet (joint or sliding window), sampler
    and VAE decoder: the MindSpore pipeline on the converted checkpoint equals the torch_ref one."""
    from neutral.mvdream.tokenizer import load_tokenizer
    from tests.parity import assert_parity
    from tests.tiny_mvdream_models import tiny_params, torch_state
    from torch_ref.mvdream.pipeline import MVDreamPipeline as TorchPipeline
    original, _ = torch_state(("unet", "vae", "text_encoder"), 0, tiny_params())  # same seed as the checkpoint
    tp = TorchPipeline.from_state_dict(original, tiny_params(), load_tokenizer(assets["tok"]))
    mp = MVDreamPipeline.from_checkpoint(assets["ckpt"], TINY_CONFIG, assets["tok"])
    kw = dict(negative_prompt="astronaut", num_frames=num_frames, steps=2, scale=4.0, eta=eta, sampler=sampler,
              seed=11, height=16, width=16, return_latents=True)
    img_ms, lat_ms = mp("a cat", **kw)
    img_t, lat_t = tp("a cat", **kw)
    assert_parity(lat_ms, lat_t, f"t2i latents {num_frames} views {sampler}", rel=1e-4)
    assert np.abs(img_ms.astype(int) - img_t.astype(int)).max() <= 1  # uint8 rounding at most


def run_t2i(assets, outdir, *extra):
    return t2i.main(["--text", "a cat", "--ckpt", assets["ckpt"], "--config", TINY_CONFIG,
                     "--tokenizer", assets["tok"], "--outdir", str(outdir), "--size", "16", "--n_samples", "1",
                     *extra])


def test_t2i_writes_grid_and_views(assets):
    out = assets["dir"] / "out4"
    assert run_t2i(assets, out, "--steps", "2", "--negative_prompt", "astronaut") == 0
    grid = iio.imread(out / "grid.png")
    assert grid.shape == (16, 4 * 16, 3) and grid.dtype == np.uint8
    views = [iio.imread(out / f"sample0_view{j}.png") for j in range(4)]
    assert all(v.shape == (16, 16, 3) for v in views)
    np.testing.assert_array_equal(np.concatenate(views, axis=1), grid)
    assert not os.path.exists(out / "sample0_view4.png")
    assert grid.std() > 0  # an image, not a constant


def test_t2i_many_views_sliding_window_dpmpp(assets):
    out = assets["dir"] / "out5"
    assert run_t2i(assets, out, "--num_frames", "5", "--sampler", "dpmpp2m", "--steps", "1", "--scale", "5") == 0
    grid = iio.imread(out / "grid.png")
    assert grid.shape == (16, 5 * 16, 3)
    assert iio.imread(out / "sample0_view4.png").shape == (16, 16, 3)


def test_t2i_unipc(assets, capsys):
    """--sampler unipc with its order/variant flags writes the views; an eta for it is a one-line error."""
    out = assets["dir"] / "out_unipc"
    assert run_t2i(assets, out, "--sampler", "unipc", "--unipc-order", "3", "--unipc-variant", "bh1",
                   "--steps", "3", "--num_frames", "2") == 0
    grid = iio.imread(out / "grid.png")
    assert grid.shape == (16, 2 * 16, 3) and grid.std() > 0
    capsys.readouterr()
    assert run_t2i(assets, out, "--sampler", "unipc", "--eta", "0.5") == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --eta must be 0 with --sampler unipc (a deterministic sampler), got 0.5"


def test_pipeline_seed_determinism_and_single_view(assets):
    pipe = MVDreamPipeline.from_checkpoint(assets["ckpt"], TINY_CONFIG, assets["tok"])
    kw = dict(num_frames=2, steps=1, height=16, width=16, seed=7)
    a, la = pipe("a cat", return_latents=True, **kw)
    b, lb = pipe("a cat", return_latents=True, **kw)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(la.asnumpy(), lb.asnumpy())
    s = pipe("a cat", single_view=True, **kw)
    assert s.shape == (2, 16, 16, 3)


def test_missing_checkpoint_says_where_and_how(assets, capsys):
    rc = t2i.main(["--ckpt", str(assets["dir"] / "nope.ckpt"), "--config", TINY_CONFIG, "--tokenizer", assets["tok"],
                   "--outdir", str(assets["dir"] / "x")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "MVDream checkpoint not found" in err and "nope.ckpt" in err
    assert "huggingface.co/MVDream/MVDream" in err and "python -m convert.pt2ms --src" in err
    with pytest.raises(FileNotFoundError, match="convert.pt2ms"):
        MVDreamPipeline.from_checkpoint(str(assets["dir"] / "nope.safetensors"), TINY_CONFIG, assets["tok"])


def test_missing_tokenizer_says_where(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="stable-diffusion-2-1-base"):
        MVDreamPipeline.from_checkpoint(assets["ckpt"], TINY_CONFIG, str(tmp_path / "no_tokenizer"))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        MVDreamPipeline.from_checkpoint(assets["ckpt"], TINY_CONFIG, str(tmp_path / "tok"))


def test_incomplete_checkpoint_is_refused(assets, tmp_path):
    state = dict(assets["state"])
    dropped = sorted(k for k in state if k.startswith(PREFIXES["vae"]))[0]
    del state[dropped]
    path = str(tmp_path / "broken.ckpt")
    save_params(state, path)
    with pytest.raises(CheckpointError, match="missing keys") as exc:
        MVDreamPipeline.from_checkpoint(path, TINY_CONFIG, assets["tok"])
    assert dropped[len(PREFIXES["vae"]):] in str(exc.value)


def test_fp16_unet_close_to_fp32(assets):
    kw = dict(num_frames=2, steps=2, height=16, width=16, seed=3, scale=3.0, return_latents=True)
    _, l32 = MVDreamPipeline.from_checkpoint(assets["ckpt"], TINY_CONFIG, assets["tok"])("a cat", **kw)
    pipe16 = MVDreamPipeline.from_checkpoint(assets["ckpt"], TINY_CONFIG, assets["tok"], dtype="fp16")
    import mindspore as ms
    assert pipe16.unet.input_blocks[0][0].weight.dtype == ms.float16
    _, l16 = pipe16("a cat", **kw)
    from tests.parity import assert_parity
    assert_parity(l16, l32, "fp16 UNet vs fp32 latents (2 DDIM steps)", rel=5e-3)
