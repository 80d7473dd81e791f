"""The training stream of multiview diffusion training: a multiview dataset file, sampled one step at a time.

    data_type: "multiview-primitives-datamodule"      (configs/demo-mvdiffusion.yaml, configs/tiny-mvdiffusion.yaml)

The data file is a primitives dataset (primitives.py, written by scripts/make_primitives_dataset.py): images
uint8 (N, V, H, W, 3), cameras (N, V, 16) (normalize_camera(c2w) flattened), captions (N,). A sample is F views
of one object: V = F, or V a multiple of F (F evenly spaced views with a random offset).

Every random number of a training step comes from this module's one numpy Generator (seeded by the run's seed),
in a fixed order: objects, view offsets (`sample_objects`), then timesteps, caption dropout, noise and
first-stage noise (neutral/mvdream/training.py: sample_step_noise). The system (mvdream/diffusion_system.py)
draws nothing, so a run is reproducible from its seed and `get_state` / `set_state` (saved in every checkpoint by
core/trainer.py) make a resumed run continue exactly. The noise needs the model's latent shape and number of
timesteps, read from the same model YAML as the system's (`model_config: ${system.model_config}`).

Batches: images float32 ((B F), 3, H, W) in [-1, 1], camera ((B F), 16), captions (B strings), t ((B F),) int32,
drop (B,) float32, noise and fs_noise ((B F), C, h, w) float32. Validation and test batches are prompts
({"prompt", "index"}): the system samples F views of each.

Data parallel (msrun, core/distributed.py): `batch_size` stays the global batch and must be divisible by the
number of ranks. Every rank draws the whole global batch from the same seeded Generator, in the same order, and
keeps its contiguous slice of objects (rank r of n: objects [r B/n, (r+1) B/n) with their F views, timesteps,
dropout and noises). So the ranks' inputs together are exactly the single process's batch, the Generator state
is the same on every rank (rank 0's checkpoint resumes any number of ranks), and with the gradient mean across
ranks a step equals the single-process step on the combined batch up to float32 summation order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from mindspore_impl.core import distributed
from mindspore_impl.mvdream.data.primitives import DatasetError, load_dataset
from neutral.config import ConfigError, parse_structured
from neutral.errors import MissingFileError
from neutral.mvdream.first_stage import downsample_of
from neutral.mvdream.model_config import load_model_config
from neutral.mvdream.training import TIMESTEP_SHARING, images_to_model, sample_step_noise
from neutral.registry import register

DATASET_HINT = ("make one with: python scripts/make_primitives_dataset.py --out data/primitives_32.npz "
                "(see its --help), or set data.path= to your multiview .npz")
N_DEFAULT_EVAL_PROMPTS = 4


@dataclass
class MultiviewDataModuleConfig:
    path: str = "data/primitives_32.npz"
    # the model YAML the system trains (for the image size, latent shape and number of timesteps)
    model_config: str = "configs/demo-model.yaml"
    batch_size: int = field(default=8, metadata={"min": 1})  # objects per step (batch_size x num_frames images)
    num_frames: int = field(default=4, metadata={"min": 1})
    # caption -> "" with this probability (classifier-free guidance)
    cfg_drop_prob: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    # "object": one t per object for its F views; "view": one t per view
    timestep_sharing: str = "object"
    # prompts sampled at validation and in the test video; null: the dataset's first 4 distinct captions
    eval_prompts: Optional[List[str]] = None


def sample_objects(rng: np.random.Generator, data: dict, batch: int, num_frames: int) -> dict:
    """Draw `batch` objects (with replacement) and F evenly spaced views of each: images, camera, captions."""
    n, v = data["images"].shape[:2]
    idx = rng.integers(0, n, batch)
    stride = v // num_frames
    offset = rng.integers(0, stride, batch) if stride > 1 else np.zeros(batch, np.int64)
    views = offset[:, None] + stride * np.arange(num_frames)[None]
    images = data["images"][idx[:, None], views]  # (B, F, H, W, 3)
    cams = data["cameras"][idx[:, None], views].reshape(batch * num_frames, 16)
    return {"images": images, "camera": np.ascontiguousarray(cams, dtype=np.float32),
            "captions": [data["captions"][i] for i in idx]}


def shard(batch: Dict[str, Any], rank: int, world_size: int, num_objects: int, num_frames: int) -> Dict[str, Any]:
    """Rank `rank`'s contiguous share of the objects of a global batch: per-object entries (captions, drop) and
    per-view entries ((B F) first axis) cut at the same object boundaries."""
    per = num_objects // world_size
    lo, hi = rank * per, (rank + 1) * per
    out = {}
    for key, value in batch.items():
        n = len(value)
        if n == num_objects:
            out[key] = value[lo:hi]
        elif n == num_objects * num_frames:
            out[key] = value[lo * num_frames:hi * num_frames]
        else:
            raise ValueError(f"batch entry {key!r} has {n} rows, neither {num_objects} objects nor "
                             f"{num_objects * num_frames} views")
    return out


def check_world_size(batch_size: int, world_size: int) -> None:
    """ConfigError unless the global batch splits evenly over the data-parallel ranks."""
    if world_size > 1 and batch_size % world_size:
        raise ConfigError(f"data.batch_size {batch_size} (the global batch, in objects) is not divisible by the "
                          f"{world_size} ranks msrun started; set data.batch_size to a multiple of {world_size} "
                          f"or change --worker_num")


def load_training_data(path: str) -> dict:
    """images (N, V, H, W, 3) uint8, cameras (N, V, 16) float32, captions (N,) str from a multiview .npz."""
    if not path or not os.path.isfile(path):
        raise MissingFileError(f"dataset file not found: {path!r}; {DATASET_HINT}")
    data = load_dataset(path)
    return {"images": data["images"], "cameras": data["cameras"].astype(np.float32),
            "captions": [str(c) for c in data["captions"]]}


def check_data(data: dict, num_frames: int, image_size: int, path: str = "dataset") -> None:
    """DatasetError unless the arrays fit the layout, the number of views and the model's image size."""
    images, cameras, captions = data["images"], data["cameras"], data["captions"]
    if images.ndim != 5 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{path}: images must be uint8 (N, V, H, W, 3), got {images.dtype} {images.shape}")
    n, v, h, w, _ = images.shape
    if cameras.shape != (n, v, 16):
        raise DatasetError(f"{path}: cameras must be (N, V, 16) = {(n, v, 16)}, got {cameras.shape}")
    if len(captions) != n:
        raise DatasetError(f"{path} has {n} objects but {len(captions)} captions")
    if v % num_frames:
        raise DatasetError(f"{path} has {v} views per object; data.num_frames {num_frames} must divide it")
    if h != image_size or w != image_size:
        raise DatasetError(f"{path}: images are {h}x{w} but the model is trained at {image_size}x{image_size}")


def model_geometry(model_params: dict) -> dict:
    """Image size, latent shape (C, h, w) and number of timesteps of an original model YAML's model.params."""
    unet = model_params["unet_config"]["params"]
    size = int(unet["image_size"])
    return {"image_size": size * downsample_of(model_params["first_stage_config"]),
            "latent_shape": (int(unet["in_channels"]), size, size),
            "num_timesteps": int(model_params.get("timesteps", 1000))}


@register("multiview-primitives-datamodule")
class MultiviewDataModule:
    """`sample(global_step)`: one training step's batch (see the module docstring); `val_batch(i)` /
    `test_batch(i)`: the i-th evaluation prompt."""

    Config = MultiviewDataModuleConfig

    @classmethod
    def check_world_size(cls, cfg: Any, world_size: int) -> None:
        """launch.py asks before msrun's ranks connect: does the global batch split over world_size ranks?"""
        check_world_size(parse_structured(MultiviewDataModuleConfig, cfg, "data").batch_size, world_size)

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        self.cfg = parse_structured(MultiviewDataModuleConfig, cfg, "data")
        self.rank, self.world_size = distributed.data_parallel_rank(), distributed.data_parallel_size()
        check_world_size(self.cfg.batch_size, self.world_size)
        if self.cfg.timestep_sharing not in TIMESTEP_SHARING:
            raise ConfigError(f"data.timestep_sharing must be one of {TIMESTEP_SHARING}, "
                              f"got {self.cfg.timestep_sharing!r}")
        geometry = model_geometry(load_model_config(self.cfg.model_config))
        self.image_size = geometry["image_size"]
        self.latent_shape = geometry["latent_shape"]
        self.num_timesteps = geometry["num_timesteps"]
        self.data = load_training_data(self.cfg.path)
        check_data(self.data, self.cfg.num_frames, self.image_size, self.cfg.path)
        prompts = self.cfg.eval_prompts
        if prompts is None:
            prompts = list(dict.fromkeys(self.data["captions"]))[:N_DEFAULT_EVAL_PROMPTS]
        self.eval_prompts = [str(p) for p in prompts]
        if not self.eval_prompts:
            raise ConfigError("data.eval_prompts is empty; give at least one prompt (or null for the dataset's)")
        self.rng = np.random.default_rng(seed)

    def get_state(self) -> Dict[str, Any]:
        """JSON-serialisable generator state; `set_state` continues the exact same stream."""
        return self.rng.bit_generator.state

    def set_state(self, state: Dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def sample(self, global_step: int) -> Dict[str, Any]:
        """Every random number of one step from self.rng: objects, views, then t / drop / noise / fs_noise; the
        global batch, or this rank's share of it in data parallel."""
        cfg = self.cfg
        objs = sample_objects(self.rng, self.data, cfg.batch_size, cfg.num_frames)
        batch = {"images": images_to_model(objs["images"]), "camera": objs["camera"], "captions": objs["captions"]}
        batch.update(sample_step_noise(self.rng, cfg.batch_size, cfg.num_frames, self.latent_shape,
                                       self.num_timesteps, cfg.cfg_drop_prob, cfg.timestep_sharing))
        if self.world_size > 1:
            batch = shard(batch, self.rank, self.world_size, cfg.batch_size, cfg.num_frames)
        return batch

    def _eval_batch(self, index: int) -> Dict[str, Any]:
        if not 0 <= index < len(self.eval_prompts):
            raise IndexError(f"eval prompt index {index} out of range [0, {len(self.eval_prompts)})")
        return {"prompt": self.eval_prompts[index], "index": index}

    def val_batch(self, index: int) -> Dict[str, Any]:
        return self._eval_batch(index)

    def test_batch(self, index: int) -> Dict[str, Any]:
        return self._eval_batch(index)

    @property
    def n_val(self) -> int:
        return len(self.eval_prompts)

    @property
    def n_test(self) -> int:
        return len(self.eval_prompts)
