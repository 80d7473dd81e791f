"""Checkpoint converter (convert.pt2ms / convert.ms2pt) on the tiny MVDream UNet: CLI, formats,
bit-exact round trip, and bad inputs that must fail with a clear message and write nothing."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from convert.io import read_torch_checkpoint, write_torch_checkpoint
from neutral.mvdream.model_config import load_model_config
from convert.ms2pt import main as ms2pt_main
from convert.pt2ms import main as pt2ms_main
from mindspore_impl.core.checkpoint import load_state_dict, read_params, save_params
from neutral.mvdream.checkpoint_layout import UNET

import mindspore_impl.mvdream as ms_mvdream
import torch_ref.mvdream as pt_mvdream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(ROOT, "configs", "tiny-mvdream.yaml")
PREFIX = UNET.prefix


class NotATensor:
    """Pickled into a .pt to check that loading refuses arbitrary objects (weights_only=True)."""

    def __init__(self):
        self.payload = "anything"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """(path of an original-format tiny UNet .pt with random weights, its state dict as numpy)."""
    model = pt_mvdream.MultiViewUNetModel(**load_model_config(TINY_YAML)["unet_config"]["params"])
    g = torch.Generator().manual_seed(0)
    state = {PREFIX + k: torch.randn(v.shape, generator=g).numpy() for k, v in model.state_dict().items()}
    path = str(tmp_path_factory.mktemp("orig") / "tiny-original.pt")
    write_torch_checkpoint(state, path)
    return path, state


def convert(src, dst, *extra):
    return pt2ms_main(["--src", src, "--dst", dst, "--config", TINY_YAML, *extra])


def ms_name(torch_key: str) -> str:
    for norm in ("in_layers.0", "out_layers.0", "out.0", "norm", "norm1", "norm2", "norm3"):
        for t, m in ((".weight", ".gamma"), (".bias", ".beta")):
            if torch_key.endswith("." + norm + t) or torch_key == PREFIX + norm + t:
                return torch_key[: -len(t)] + m
    return torch_key


def test_cli_converts_to_ckpt_that_loads_strictly(original, tmp_path):
    src, state = original
    dst = str(tmp_path / "tiny.ckpt")
    proc = subprocess.run([sys.executable, "-m", "convert.pt2ms", "--src", src, "--dst", dst, "--config", TINY_YAML],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {dst} ({len(state)} tensors)" in proc.stdout
    params = read_params(dst)
    assert set(params) == {ms_name(k) for k in state}
    assert PREFIX + "input_blocks.1.0.in_layers.0.gamma" in params
    assert PREFIX + "input_blocks.3.1.transformer_blocks.0.norm2.beta" in params
    for k, v in state.items():
        np.testing.assert_array_equal(params[ms_name(k)], v)
    model = ms_mvdream.MultiViewUNetModel(**load_model_config(TINY_YAML)["unet_config"]["params"])
    assert len(load_state_dict(model, params, prefix=PREFIX, strict=True)) == len(state)


def test_safetensors_output_and_fp16_cast(original, tmp_path):
    src, state = original
    dst = str(tmp_path / "tiny.safetensors")
    assert convert(src, dst) == 0
    params = read_params(dst)
    assert set(params) == {ms_name(k) for k in state}
    np.testing.assert_array_equal(params[PREFIX + "out.0.gamma"], state[PREFIX + "out.0.weight"])
    half = str(tmp_path / "tiny-fp16.ckpt")
    assert convert(src, half, "--dtype", "float16") == 0
    assert all(v.dtype == np.float16 for v in read_params(half).values())


@pytest.mark.parametrize("middle", [".ckpt", ".safetensors"])
def test_round_trip_pt_ms_pt_is_bit_exact(original, tmp_path, middle):
    src, state = original
    ms_file, back = str(tmp_path / f"tiny{middle}"), str(tmp_path / "back.pt")
    assert convert(src, ms_file) == 0
    assert ms2pt_main(["--src", ms_file, "--dst", back, "--config", TINY_YAML]) == 0
    restored = read_torch_checkpoint(back)
    assert set(restored) == set(state)
    for k, v in state.items():
        assert restored[k].dtype == v.dtype and restored[k].tobytes() == v.tobytes(), k


def _bad_file(kind: str, state: dict, folder) -> str:
    """Write one deliberately broken source checkpoint; return its path."""
    if kind == "truncated_pt":
        path = str(folder / "bad.pt")
        write_torch_checkpoint(state, path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif kind == "truncated_safetensors":
        path = str(folder / "bad.safetensors")
        write_torch_checkpoint(state, path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif kind == "non_tensor_object":
        path = str(folder / "bad.pt")
        torch.save({**{k: torch.from_numpy(v) for k, v in state.items()}, PREFIX + "extra": NotATensor()}, path)
    else:
        broken = dict(state)
        if kind == "missing_key":
            del broken[PREFIX + "input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"]
        elif kind == "wrong_shape":
            broken[PREFIX + "camera_embed.0.weight"] = np.zeros((128, 12), np.float32)
        elif kind == "unknown_prefix":
            broken["model_ema.input_blocks0.weight"] = np.zeros(3, np.float32)
        path = str(folder / "bad.pt")
        write_torch_checkpoint(broken, path)
    return path


@pytest.mark.parametrize("kind, expected", [
    ("truncated_pt", ["could not read", "corrupt or truncated"]),
    ("truncated_safetensors", ["could not read", "as safetensors (corrupt or truncated?)"]),
    ("non_tensor_object", ["refused to load", "weights_only=True"]),
    ("missing_key", ["missing keys (1)", "input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"]),
    ("wrong_shape", ["shape mismatches (1)", "camera_embed.0.weight: checkpoint (128, 12) vs model (128, 16)"]),
    ("unknown_prefix", ["keys no key map understands", "model_ema.input_blocks0.weight", "--ignore-prefix"]),
])
def test_bad_checkpoint_fails_clearly_and_writes_nothing(original, tmp_path, capsys, kind, expected):
    _, state = original
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = _bad_file(kind, state, src_dir)
    for dst in (str(out_dir / "out.ckpt"), str(out_dir / "out.safetensors")):
        assert convert(src, dst) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: "), err
        for text in expected:
            assert text in err, f"{text!r} not in: {err[:1500]}"
    assert os.listdir(out_dir) == []  # no output, no temp file left behind


def test_unknown_prefix_can_be_ignored_on_purpose(original, tmp_path):
    _, state = original
    src = _bad_file("unknown_prefix", state, tmp_path)
    dst = str(tmp_path / "ok.ckpt")
    assert convert(src, dst, "--ignore-prefix", "model_ema.") == 0
    assert len(read_params(dst)) == len(state)


@pytest.mark.parametrize("kind, expected", [
    ("truncated", "could not read MindSpore checkpoint"),
    ("missing_key", "missing keys (1)"),
    ("unknown_prefix", "keys under no known sub-model prefix"),
])
def test_reverse_direction_rejects_bad_ckpt(original, tmp_path, capsys, kind, expected):
    src, _ = original
    good = str(tmp_path / "good.ckpt")
    assert convert(src, good) == 0
    params = read_params(good)
    bad = str(tmp_path / "bad.ckpt")
    if kind == "truncated":
        data = open(good, "rb").read()
        open(bad, "wb").write(data[: len(data) // 2])
    elif kind == "missing_key":
        save_params({k: v for k, v in params.items() if not k.endswith("out.2.bias")}, bad)
    else:
        save_params({**params, "something_else.weight": np.zeros(2, np.float32)}, bad)
    capsys.readouterr()
    dst = tmp_path / "back.pt"
    assert ms2pt_main(["--src", bad, "--dst", str(dst), "--config", TINY_YAML]) == 2
    assert expected in capsys.readouterr().err
    assert not dst.exists()
