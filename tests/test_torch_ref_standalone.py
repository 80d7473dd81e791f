"""torch_ref must import and run on a machine with PyTorch but no MindSpore.

A child interpreter blocks every `mindspore` import, imports each torch_ref module and runs a tiny
forward of the UNet and the ImplicitVolume; `mindspore` must never reach sys.modules.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import importlib, json, os, sys

class BlockMindSpore:
    """Meta-path finder: any import of mindspore (or a submodule) fails as if it were not installed."""
    def find_spec(self, name, path=None, target=None):
        if name == "mindspore" or name.startswith("mindspore."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the standalone test)")
        return None

sys.meta_path.insert(0, BlockMindSpore())
root = sys.argv[1]
sys.path.insert(0, root)

names = []
for folder, dirs, files in os.walk(os.path.join(root, "torch_ref")):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    rel = os.path.relpath(folder, root).split(os.sep)
    for f in sorted(files):
        if f.endswith(".py"):
            names.append(".".join(rel if f == "__init__.py" else rel + [f[:-3]]))
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:  # report every failing module, not just the first
        failed[name] = f"{type(exc).__name__}: {exc}"

import numpy as np
import torch
from omegaconf import OmegaConf
from torch_ref.lift3d.geometry.implicit_volume import ImplicitVolume
from torch_ref.mvdream.unet import build_from_config

torch.manual_seed(0)
params = OmegaConf.to_container(OmegaConf.load(os.path.join(root, "configs", "tiny-mvdream.yaml")).model.params)
unet = build_from_config(dict(params["unet_config"]["params"])).eval()
with torch.no_grad():  # random weights everywhere (the output conv starts at zero)
    for p in unet.parameters():
        p.normal_(0.0, 0.05)
x = torch.randn(4, 4, 8, 8)
with torch.no_grad():
    eps = unet(x, torch.full((4,), 500, dtype=torch.long), torch.randn(4, 77, 32), torch.randn(4, 16), num_frames=4)
grid = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
        "base_resolution": 4, "per_level_scale": 1.5}
volume = ImplicitVolume({"pos_encoding_config": grid, "normal_type": "analytic"})
points = torch.rand(16, 3) * 1.6 - 0.8
density, features = volume(points)
print(json.dumps({
    "imported": len(names), "failed": failed,
    "eps_shape": list(eps.shape), "eps_finite": bool(torch.isfinite(eps).all()), "eps_std": float(eps.std()),
    "density_shape": list(density.shape), "features_shape": list(features.shape),
    "density_finite": bool(torch.isfinite(density).all()),
    "mindspore_loaded": sorted(m for m in sys.modules if m == "mindspore" or m.startswith("mindspore.")),
}))
'''


def test_torch_ref_imports_and_runs_without_mindspore():
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, ROOT],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[standalone] imported {report['imported']} torch_ref modules without MindSpore; "
          f"UNet eps {report['eps_shape']} std {report['eps_std']:.4f}")
    assert report["failed"] == {}, report["failed"]
    on_disk = sum(f.endswith(".py") for _, _, files in os.walk(os.path.join(ROOT, "torch_ref")) for f in files)
    assert report["imported"] == on_disk and on_disk >= 30  # every module under torch_ref/
    assert report["mindspore_loaded"] == []
    assert report["eps_shape"] == [4, 4, 8, 8] and report["eps_finite"] and report["eps_std"] > 0
    assert report["density_shape"] == [16, 1] and report["features_shape"] == [16, 3] and report["density_finite"]
