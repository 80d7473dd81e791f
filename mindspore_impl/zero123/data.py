"""The training stream of Zero-1-to-3 style training: pairs of views of one object with their relative camera T.

    data_type: "zero123-view-pairs-datamodule"  (configs/demo-zero123-training.yaml, tiny-zero123-training.yaml)

The data file is a primitives dataset (mindspore_impl/mvdream/data/primitives.py, the same validated .npz layout the
MVDream demo trains on), best written with every view at random around its object:
    python scripts/make_primitives_dataset.py --views random --out data/primitive_views_32.npz --n_view 8 ...
It holds images uint8 (N, V, H, W, 3) rendered over `background`, masks (N, V, H, W) and per-view cameras
(elevation, azimuth, distance (N, V)). A sample is two different views of one object (upstream's
random.sample(range(total_view), 2)): the condition view and the target view, both over white (upstream composites
its RGBA renders over white; neutral/zero123/training.py `on_white`), and T = relative_camera_T(target, condition)
(neutral/zero123/camera.py: the same T the zero123 guidance feeds the model at SDS time).

Every random number of a training step comes from this module's one numpy Generator (seeded by the run's seed), in
a fixed order: objects and views (`sample_pairs`), then t, condition dropout (upstream's three-way split at rate
`uncond`), noise and first-stage noise (`sample_step_noise`); the system draws nothing, so a run is reproducible from
its seed, and `get_state` / `set_state` (saved in every checkpoint) make a resumed run continue exactly.

Batches: target and cond float32 (B, 3, H, W) in [-1, 1], T (B, 4), t (B,) int32, drop_embedding and drop_image
(B,) float32 {0, 1}, noise and fs_noise (B, C, h, w). Validation batches: fixed pairs (one object of each of the
first `n_eval_pairs` distinct captions, its view 0 to its view V/2), each with its target to compare against. Test
batches: an orbit of the first eval pair's condition view, `n_test_views` azimuths at its elevation and distance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np

from mindspore_impl.mvdream.data.primitives import DatasetError, load_dataset
from neutral.config import parse_structured
from neutral.errors import MissingFileError
from neutral.mvdream.first_stage import downsample_of
from neutral.mvdream.model_config import load_model_config
from neutral.registry import register
from neutral.zero123.camera import relative_camera_T
from neutral.zero123.model_config import first_stage_entry
from neutral.zero123.training import images_to_model, on_white, pair_T, sample_pairs, sample_step_noise

DATASET_HINT = ("make one with: python scripts/make_primitives_dataset.py --views random --out "
                "data/primitive_views_32.npz --n_view 8 (see its --help), or set data.path= to your .npz")


@dataclass
class ViewPairsDataModuleConfig:
    path: str = "data/primitive_views_32.npz"
    # the model YAML the system trains (image size, latent shape, number of timesteps)
    model_config: str = "configs/demo-zero123-model.yaml"
    batch_size: int = field(default=16, metadata={"min": 1})  # view pairs per step
    # upstream's `uncond` (LatentDiffusion.get_input): the embedding alone, both, the concat image alone, each this
    # often
    uncond: float = field(default=0.05, metadata={"min": 0.0, "max": 1.0 / 3.0})
    n_eval_pairs: int = field(default=4, metadata={"min": 1})
    n_test_views: int = field(default=8, metadata={"min": 0})


def model_geometry(model_params: dict) -> dict:
    """Image size, latent shape (C, h, w) and number of timesteps of a Zero123 model YAML's model.params."""
    unet = model_params["unet_config"]["params"]
    size = int(unet["image_size"])
    return {"image_size": size * downsample_of(first_stage_entry(model_params)),
            "latent_shape": (int(unet["out_channels"]), size, size),
            "num_timesteps": int(model_params.get("timesteps", 1000))}


def load_view_data(path: str, image_size: int) -> dict:
    """The arrays a view-pair stream needs from a primitives dataset, the images over white; DatasetError when the
    file does not fit (fewer than 2 views per object, another image size)."""
    if not path or not os.path.isfile(path):
        raise MissingFileError(f"dataset file not found: {path!r}; {DATASET_HINT}")
    data = load_dataset(path)
    n, v, h, w, _ = data["images"].shape
    if v < 2:
        raise DatasetError(f"{path} has {v} view per object; view pairs need at least 2")
    if h != image_size or w != image_size:
        raise DatasetError(f"{path}: images are {h}x{w} but the model is trained at {image_size}x{image_size}")
    return {"images": on_white(data["images"], data["masks"], data["background"]),
            "elevation": data["elevation"].astype(np.float64), "azimuth": data["azimuth"].astype(np.float64),
            "distance": data["distance"].astype(np.float64), "captions": [str(c) for c in data["captions"]]}


@register("zero123-view-pairs-datamodule")
class ViewPairsDataModule:
    """`sample(global_step)`: one training step's batch; `val_batch(i)`: eval pair i; `test_batch(i)`: orbit view i."""

    Config = ViewPairsDataModuleConfig

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        self.cfg = parse_structured(ViewPairsDataModuleConfig, cfg, "data")
        geometry = model_geometry(load_model_config(self.cfg.model_config))
        self.image_size = geometry["image_size"]
        self.latent_shape = geometry["latent_shape"]
        self.num_timesteps = geometry["num_timesteps"]
        self.data = load_view_data(self.cfg.path, self.image_size)
        self.eval_pairs = self._eval_pairs()
        self.rng = np.random.default_rng(seed)

    def _eval_pairs(self) -> list[tuple[int, int, int]]:
        """(object, condition view, target view): the first object of each of the first n distinct captions."""
        first: Dict[str, int] = {}
        for i, c in enumerate(self.data["captions"]):
            first.setdefault(c, i)
        v = self.data["images"].shape[1]
        return [(i, 0, v // 2) for i in list(first.values())[:self.cfg.n_eval_pairs]]

    def get_state(self) -> Dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: Dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def sample(self, global_step: int) -> Dict[str, Any]:
        """Every random number of one step from self.rng: pairs, then t / dropout / noise / fs_noise."""
        cfg, d = self.cfg, self.data
        n, v = d["images"].shape[:2]
        objects, cond, target = sample_pairs(self.rng, n, v, cfg.batch_size)
        batch = {"target": images_to_model(d["images"][objects, target]),
                 "cond": images_to_model(d["images"][objects, cond]),
                 "T": pair_T(d["elevation"], d["azimuth"], d["distance"], objects, cond, target)}
        batch.update(sample_step_noise(self.rng, cfg.batch_size, self.latent_shape, self.num_timesteps, cfg.uncond))
        return batch

    def val_batch(self, index: int) -> Dict[str, Any]:
        if not 0 <= index < len(self.eval_pairs):
            raise IndexError(f"eval pair index {index} out of range [0, {len(self.eval_pairs)})")
        d = self.data
        o, c, t = self.eval_pairs[index]
        objects, cond, target = np.array([o]), np.array([c]), np.array([t])
        return {"cond": images_to_model(d["images"][objects, cond]),
                "target": images_to_model(d["images"][objects, target]),
                "T": pair_T(d["elevation"], d["azimuth"], d["distance"], objects, cond, target), "index": index}

    def test_batch(self, index: int) -> Dict[str, Any]:
        if not 0 <= index < self.cfg.n_test_views:
            raise IndexError(f"test view index {index} out of range [0, {self.cfg.n_test_views})")
        d = self.data
        o, c, _ = self.eval_pairs[0]
        el, az, dist = d["elevation"][o, c], d["azimuth"][o, c], d["distance"][o, c]
        T = relative_camera_T(el, az + index * 360.0 / self.cfg.n_test_views, dist, el, az, dist)
        return {"cond": images_to_model(d["images"][[o], [c]]), "T": T, "index": index}

    @property
    def n_val(self) -> int:
        return len(self.eval_pairs)

    @property
    def n_test(self) -> int:
        return self.cfg.n_test_views
