"""The shipped demo model (pretrained/demo/model.ckpt, configs/demo-model.yaml, pretrained/demo/tokenizer).

- it loads strictly into MVDreamPipeline (every tensor used, no extra key, shapes equal), and a checkpoint
  with one tensor missing is refused;
- scripts/t2i.py samples it in a subprocess that exits with status 0 (MindSpore 2.7.2 PyNative corrupted the
  heap when reshaping transposed views, and the demo's pixel-shuffle path aborted at exit) and draws an
  object of the named colour: the mean colour of the views' centres is nearest to that palette colour.
"""
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from mindspore_impl.core.checkpoint import CheckpointError, read_params, save_params
from mindspore_impl.mvdream.data import primitives as P
from mindspore_impl.mvdream.pipeline import MVDreamPipeline
from neutral.mvdream.checkpoint_layout import PREFIXES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CKPT = os.path.join(ROOT, "pretrained", "demo", "model.ckpt")
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo-model.yaml")
DEMO_TOKENIZER = os.path.join(ROOT, "pretrained", "demo", "tokenizer")


def test_shipped_checkpoint_loads_strictly(tmp_path):
    size_mb = os.path.getsize(DEMO_CKPT) / 2 ** 20
    pipe = MVDreamPipeline.from_checkpoint(DEMO_CKPT, DEMO_CONFIG, DEMO_TOKENIZER)
    params = [p for cell in (pipe.unet, pipe.vae, pipe.text_encoder) for p in cell.get_parameters()]
    n_values = sum(int(np.prod(p.shape)) for p in params)
    state = read_params(DEMO_CKPT)
    print(f"{DEMO_CKPT}: {size_mb:.2f} MB, {len(state)} tensors, {n_values} values")
    assert size_mb < 8.0
    assert len(state) == len(params) == 240
    assert n_values == sum(v.size for v in state.values())
    assert all(np.isfinite(v).all() for v in state.values())
    missing = dict(state)
    missing.pop(PREFIXES["unet"] + "out.2.weight")
    bad = str(tmp_path / "missing.ckpt")
    save_params(missing, bad)
    with pytest.raises(CheckpointError, match="out.2.weight") as err:
        MVDreamPipeline.from_checkpoint(bad, DEMO_CONFIG, DEMO_TOKENIZER)
    print(err.value)


def object_colour(grid: np.ndarray) -> np.ndarray:
    """Mean RGB in [0, 1] of the central 12x12 pixels of every 32x32 view (the primitives are centred there)."""
    rgb = grid.astype(np.float64).reshape(32, 4, 32, 3).transpose(1, 0, 2, 3) / 255.0
    return rgb[:, 10:22, 10:22].reshape(-1, 3).mean(axis=0)


def nearest_colour(rgb: np.ndarray) -> str:
    return min(P.DEFAULT_COLORS, key=lambda c: float(np.linalg.norm(np.asarray(P.COLORS[c]) - rgb)))


@pytest.mark.parametrize("prompt,colour", [("a red cube", "red"), ("a blue sphere", "blue")])
def test_t2i_exits_cleanly_and_draws_the_named_colour(tmp_path, prompt, colour):
    out = tmp_path / "t2i"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "t2i.py"), prompt, "--ckpt", DEMO_CKPT,
           "--config", DEMO_CONFIG, "--tokenizer", DEMO_TOKENIZER, "--size", "32", "--steps", "20",
           "--scale", "5", "--n_samples", "1", "--suffix", "", "--outdir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"t2i exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    grid = iio.imread(out / "grid.png")
    assert grid.shape == (32, 4 * 32, 3)
    rgb = object_colour(grid)
    print(f"{prompt!r}: object colour {np.round(rgb, 3)}, nearest {nearest_colour(rgb)}")
    assert nearest_colour(rgb) == colour
