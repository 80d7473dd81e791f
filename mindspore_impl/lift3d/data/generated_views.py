"""Generate, then reconstruct: a data module whose views come from the multiview diffusion model.

`generated-views-datamodule` samples N views of the prompt along a camera spiral (neutral/lift3d/
generated_views.py) with the sliding-window scheme (mvdream/sliding_window.py: view n attends jointly with
views n-1 and 0, as marching-waifu-x) and a multistep sampler (DPM++ 2M or UniPC), mattes them (RGBA) and
writes them as a `transforms.json` folder; then it is the `transforms-datamodule` on that folder, so the
reconstruction system fits the field to the views. The camera condition of each view is
`normalize_camera(c2w)` of the renderer's camera, what the SDS guidance feeds the same model.

The folder is cached under `cache_dir`, keyed by everything that decides its pixels (the generation settings,
the seed and the checkpoint file's size and mtime): a resumed or repeated run reuses it. The trial gets a copy
(`views/`) when the trainer attaches it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from mindspore_impl.mvdream.data.primitives import make_cameras
from neutral.config import ConfigError
from neutral.lift3d.generated_views import background_matte, spiral_angles
from neutral.lift3d.transforms_dataset import (TRANSFORMS, TransformsDataModule, TransformsDataModuleConfig,
                                               write_transforms)
from neutral.mvdream.samplers import SAMPLERS
from neutral.registry import register


@dataclass
class GeneratedViewsDataModuleConfig(TransformsDataModuleConfig):
    prompt: str = ""
    negative_prompt: str = ""
    # the multiview model (converted checkpoint, original model YAML, tokenizer folder)
    ckpt_path: str = "pretrained/demo/model.ckpt"
    config_path: str = "configs/demo-model.yaml"
    tokenizer_path: str = "pretrained/demo/tokenizer"
    # the camera spiral: n_views views, `turns` turns while the elevation rises over elevation_range
    n_views: int = field(default=24, metadata={"min": 1})
    turns: int = field(default=3, metadata={"min": 1})
    elevation_range: List[float] = field(default_factory=lambda: [0.0, 30.0])
    azimuth_start: float = 0.0
    camera_distance: float = field(default=2.5, metadata={"min": 1e-6})
    fovy_deg: float = field(default=40.0, metadata={"min": 1e-3, "max": 179.0})
    image_size: int = field(default=32, metadata={"min": 1})
    # sampling
    sampler: str = "dpmpp2m"
    steps: int = field(default=20, metadata={"min": 1})
    guidance_scale: float = 10.0
    karras: bool = False
    unipc_order: int = 2
    unipc_variant: str = "bh2"
    window: int = field(default=3, metadata={"min": 1})
    windows_per_call: int = field(default=64, metadata={"min": 1})  # windows batched in one UNet call
    compile: bool = True  # the UNet as a compiled graph (PyNative for real-size models on CPU)
    generation_seed: Optional[int] = None  # None: the run's seed
    # alpha from the distance to the view's border colour: 0 below matte_range[0], 1 above matte_range[1]
    matte: bool = True
    matte_range: List[float] = field(default_factory=lambda: [0.25, 0.45])
    cache_dir: str = ".cache/generated_views"


@register("generated-views-datamodule")
class GeneratedViewsDataModule(TransformsDataModule):
    """`transforms-datamodule` on views it generates first (module docstring)."""

    Config = GeneratedViewsDataModuleConfig
    GENERATION_KEYS = ("prompt", "negative_prompt", "n_views", "turns", "elevation_range", "azimuth_start",
                       "camera_distance", "fovy_deg", "image_size", "sampler", "steps", "guidance_scale", "karras",
                       "unipc_order", "unipc_variant", "window", "matte", "matte_range")

    def prepare(self) -> str:
        cfg = self.cfg
        self._check()
        settings = {k: getattr(cfg, k) for k in self.GENERATION_KEYS}
        settings["seed"] = self.seed if cfg.generation_seed is None else int(cfg.generation_seed)
        stat = os.stat(cfg.ckpt_path) if os.path.isfile(cfg.ckpt_path) else None
        settings["checkpoint"] = [os.path.abspath(cfg.ckpt_path), stat.st_size if stat else None,
                                  stat.st_mtime_ns if stat else None, os.path.abspath(cfg.config_path)]
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        root = os.path.join(cfg.cache_dir, key)
        self.generation = settings
        if os.path.isfile(os.path.join(root, TRANSFORMS)):
            print(f"generated views: reusing {root} ({cfg.n_views} views of {cfg.prompt!r})", flush=True)
            return root
        self._generate(root, settings)
        return root

    def _check(self) -> None:
        cfg = self.cfg
        if not cfg.prompt.strip():
            raise ConfigError("data.prompt is empty: give the text to generate views of, e.g. "
                              "system.prompt_processor.prompt=\"a red cube\" (the demo config links the two)")
        if cfg.sampler not in SAMPLERS:
            raise ConfigError(f"data.sampler {cfg.sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
        if cfg.sampler == "ddim" and 1000 % cfg.steps:
            raise ConfigError(f"data.steps {cfg.steps}: DDIM needs a step count that divides 1000")
        if len(cfg.elevation_range) != 2 or len(cfg.matte_range) != 2:
            raise ConfigError("data.elevation_range and data.matte_range take two values each")
        if not 0.0 <= cfg.matte_range[0] < cfg.matte_range[1]:
            raise ConfigError(f"data.matte_range {list(cfg.matte_range)} must satisfy 0 <= low < high")

    def _generate(self, root: str, settings: dict) -> None:
        from mindspore_impl.mvdream.pipeline import MVDreamPipeline

        cfg = self.cfg
        elevation, azimuth = spiral_angles(cfg.n_views, cfg.elevation_range, cfg.turns, cfg.azimuth_start)
        n = cfg.n_views
        cams = make_cameras(elevation, azimuth, np.full(n, cfg.camera_distance), np.full(n, cfg.fovy_deg),
                            cfg.image_size)
        pipe = MVDreamPipeline.from_checkpoint(cfg.ckpt_path, cfg.config_path, cfg.tokenizer_path)
        if cfg.compile:
            pipe.compile()
        start = time.time()
        print(f"generated views: sampling {n} views of {cfg.prompt!r} ({cfg.sampler}, {cfg.steps} steps, "
              f"window {cfg.window})", flush=True)
        images = pipe(cfg.prompt, cfg.negative_prompt, num_frames=n, steps=cfg.steps, scale=cfg.guidance_scale,
                      sampler=cfg.sampler, seed=settings["seed"], height=cfg.image_size, width=cfg.image_size,
                      karras=cfg.karras, window=cfg.window, windows_per_call=cfg.windows_per_call,
                      unipc_order=cfg.unipc_order, unipc_variant=cfg.unipc_variant, camera=cams["camera"],
                      progress=True)
        rgb = images.astype(np.float32) / 255.0
        if cfg.matte:
            alpha = background_matte(rgb, *cfg.matte_range)
            images = np.concatenate([images, np.round(alpha * 255.0).astype(np.uint8)[..., None]], axis=-1)
        tmp = f"{root}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:  # the cache holds complete folders only: a failed write leaves nothing behind
            write_transforms(tmp, images, cams["c2w"], cfg.fovy_deg)
            with open(os.path.join(tmp, "generation.json"), "w", encoding="utf-8") as f:
                json.dump(settings, f, indent=2)
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"generated views: {n} views in {time.time() - start:.1f} s -> {root}", flush=True)

    def attach_trial(self, trial) -> None:
        """Copy the generated folder into the trial (views/), so the run keeps what it was fitted to."""
        shutil.copytree(self.root, os.path.join(trial.root, "views"), dirs_exist_ok=True)
