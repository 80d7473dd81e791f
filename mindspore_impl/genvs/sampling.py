"""GeNVS novel-view sampling from one image (MindSpore): load an exported model, then sample target views one at a
time, each conditioned on the feature render of the views that exist so far (jfozard/genvs_unofficial
sample_ar.py sample_sphere_ar, k_pipeline.py KPipeline.sample).

    model = load_genvs("outputs/demo-genvs/<trial>/save/it800-export")      # model.ckpt + config.yaml
    sampler = NovelViewSampler(model)
    out = sampler.run(image, c2w0, intrinsics, targets, EDMSamplerConfig(steps=40, solver="heun", ...), seed=0)
    out.samples     # (T, H, W, 3) in [0, 1]: the denoiser's view of each target camera
    out.renders     # (T, H, W, 3): the feature render's RGB channels, nearest x2 (the regression baseline)
    out.sources     # per target, the views (0 = the input, i = target i - 1) it was conditioned on

One target view: encode each conditioning view into its frustum volume (encoder.py; once per view, cached, since
sampling adds no input noise), render the target camera's feature image from the volumes (renderer.py: the
field's masked mean over a fixed number of source slots, deterministic midpoint ray samples, background 1),
upsample it x2 (nearest) and run the EDM sampler (edm.py sample_edm: Karras sigmas, Euler or Heun, churn) from
N(0, I) sigma_max noise of its own Generator([seed, target index]); the output is clipped to [-1, 1] and mapped to
[0, 1]. Autoregressive mode conditions target t on the set of neutral/genvs/sampling.py conditioning_set (the
input, up to 4 random earlier samples, the last sample); single-view mode conditions every target on the input
alone. Both modes give target t the same noise, so they differ only in their conditioning.

Differences from upstream's sampling script: it feeds the encoder its samples in [-1, 1] as if they were [0, 1]
images (the input view is in [0, 1]); here every view enters the encoder as the [-1, 1] image the encoder takes.
Volumes are cached instead of re-encoded per target (identical without input noise).

The export (mindspore_impl/genvs/system.py GeNVSSystem.export) is model.ckpt (encoder.*, renderer.field.*,
denoiser.net.*) and config.yaml (image_size, render_size, sigma_data and the four sub-configs); GeNVSModel holds
the three cells under those attribute names, so the checkpoint loads strictly, by parameter name.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mindspore_impl.core.checkpoint import CheckpointError, load_state_dict, read_params
from mindspore_impl.genvs.denoiser import GeNVSDenoiserUNet
from mindspore_impl.genvs.edm import EDMPrecond, sample_edm
from mindspore_impl.genvs.encoder import FrustumEncoder
from mindspore_impl.genvs.field import ProjectedFeatureField
from mindspore_impl.genvs.renderer import FeatureRenderer, render_image, upsample_nearest2x
from neutral.config import ConfigError
from neutral.errors import MissingFileError
from neutral.genvs.denoiser_config import DenoiserConfig, denoiser_config
from neutral.genvs.edm import EDMSamplerConfig
from neutral.genvs.model_config import (EncoderConfig, FieldConfig, RendererConfig, check_model, parse_encoder,
                                        parse_field, parse_renderer)
from neutral.genvs.sampling import CONDITIONING_SEED, MAX_SOURCES, SHIPPED_MODEL, conditioning_set

MODEL_FILE = "model.ckpt"
CONFIG_FILE = "config.yaml"
EXPORT_HINT = ("export one by training: python scripts/make_genvs_dataset.py --out data/genvs_scenes --num_scenes "
               "1000 --size 32 --seed 0; python launch.py --config configs/demo-genvs.yaml --train (it writes "
               "outputs/demo-genvs/<trial>/save/it<step>-export/{model.ckpt,config.yaml}; give that folder to --ckpt)")
# k_pipeline.py samples between the model config's sigma_min and sigma_max (k_configs/config_128_*.json), the
# training sigmas' clip range (system.sigma_min / sigma_max); used when config.yaml does not carry them
DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX = 0.03, 50.0


# ----------------------------------------------------------------------------- the exported model


@dataclass
class ModelSettings:
    """config.yaml of an export."""
    image_size: int
    render_size: int
    sigma_data: float
    encoder: EncoderConfig
    field: FieldConfig
    renderer: RendererConfig
    denoiser: DenoiserConfig
    sigma_min: float = DEFAULT_SIGMA_MIN
    sigma_max: float = DEFAULT_SIGMA_MAX


def export_files(path: str) -> tuple:
    """(model.ckpt, config.yaml) of an export folder, or of a model.ckpt with config.yaml beside it.
    MissingFileError with the command that makes one when either is missing."""
    if not path:
        raise MissingFileError(f"no GeNVS model given (--ckpt); {EXPORT_HINT}")
    if os.path.isdir(path):
        ckpt, config = os.path.join(path, MODEL_FILE), os.path.join(path, CONFIG_FILE)
    else:
        ckpt, config = path, os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_FILE)
    if not os.path.isfile(ckpt):
        shipped = os.path.normpath(path) == os.path.normpath(SHIPPED_MODEL)
        hint = f"it ships with the repository: git checkout -- {SHIPPED_MODEL}" if shipped else EXPORT_HINT
        raise MissingFileError(f"GeNVS model not found: {ckpt}; {hint}")
    if not os.path.isfile(config):
        raise MissingFileError(f"{config} not found: an exported GeNVS model is model.ckpt with its config.yaml "
                               f"beside it; {EXPORT_HINT}")
    return ckpt, config


def read_settings(config_path: str) -> ModelSettings:
    """Parse and check an export's config.yaml; CheckpointError naming the file and the bad setting."""
    from omegaconf import OmegaConf
    try:
        raw = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    except Exception as exc:  # OmegaConf / YAML errors of many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read {config_path}: {reason}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path} must be a mapping of the model's settings (GeNVSSystem.export)")
    known = {"image_size", "render_size", "sigma_data", "encoder", "field", "renderer", "denoiser", "sigma_min",
             "sigma_max"}
    missing = sorted({"image_size", "render_size", "encoder", "field", "renderer", "denoiser"} - set(raw))
    unknown = sorted(set(raw) - known)
    if missing or unknown:
        raise CheckpointError(f"{config_path} is not a GeNVS export's config.yaml: missing {missing}, unknown "
                              f"{unknown}; {EXPORT_HINT}")
    try:
        enc, fld, rend = parse_encoder(raw["encoder"]), parse_field(raw["field"]), parse_renderer(raw["renderer"])
        check_model(enc, fld, rend)
        den = denoiser_config(raw["denoiser"], "denoiser")
    except ConfigError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    s = ModelSettings(int(raw["image_size"]), int(raw["render_size"]), float(raw.get("sigma_data", 0.5)), enc, fld,
                      rend, den, float(raw.get("sigma_min", DEFAULT_SIGMA_MIN)),
                      float(raw.get("sigma_max", DEFAULT_SIGMA_MAX)))
    if s.render_size * 2 != s.image_size or den.image_size != s.image_size:
        raise CheckpointError(f"{config_path}: render_size {s.render_size} must be half of image_size "
                              f"{s.image_size}, and denoiser.image_size ({den.image_size}) equal to it")
    return s


class GeNVSModel(nn.Cell):
    """The three models of an export under the names GeNVSSystem gives them: encoder (FrustumEncoder), renderer
    (FeatureRenderer with its field) and denoiser (EDMPrecond around GeNVSDenoiserUNet)."""

    def __init__(self, settings: ModelSettings):
        super().__init__()
        self.settings = settings
        self.encoder = FrustumEncoder(settings.encoder)
        self.renderer = FeatureRenderer(settings.renderer, ProjectedFeatureField(settings.field))
        self.denoiser = EDMPrecond(GeNVSDenoiserUNet(settings.denoiser), settings.sigma_data)


def load_genvs(path: str) -> GeNVSModel:
    """Build the model of an export (folder or model.ckpt) and load it strictly (exact names and shapes);
    eval mode."""
    ckpt, config = export_files(path)
    model = GeNVSModel(read_settings(config))
    load_state_dict(model, read_params(ckpt), "", strict=True, what=f"{ckpt} (GeNVS export)")
    model.set_train(False)
    return model


# ----------------------------------------------------------------------------- sampling


@dataclass
class SampledViews:
    """What NovelViewSampler.run gives back, per target view t (arrays over T targets)."""
    samples: np.ndarray                 # (T, H, W, 3) in [0, 1]
    renders: np.ndarray                 # (T, H, W, 3) the feature render's RGB, nearest x2, clipped to [0, 1]
    opacity: np.ndarray                 # (T, H, W) the render's opacity, nearest x2
    sources: List[List[int]] = field(default_factory=list)  # views (0 = input, i = target i - 1) per target


def _to_signed_chw(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (1, 3, H, W) float32 in [-1, 1]."""
    return np.ascontiguousarray((np.asarray(rgb, np.float32) * 2.0 - 1.0).transpose(2, 0, 1)[None])


def _up2(x: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(x, 2, axis=0), 2, axis=1)


class NovelViewSampler:
    """Sampling with an exported model: encode, render, denoise, with max_sources source slots (the field's masked
    mean over the ones in use). With jit each of the three calls compiles once (ms.jit), then runs per view."""

    def __init__(self, model: GeNVSModel, max_sources: int = MAX_SOURCES, jit: bool = True):
        if max_sources < 1:
            raise ValueError(f"NovelViewSampler: max_sources must be >= 1, got {max_sources}")
        self.model = model
        self.settings = model.settings
        self.max_sources = int(max_sources)
        self.size, self.render_size = self.settings.image_size, self.settings.render_size
        model.set_train(False)

        def encode(images):
            return model.encoder(images)

        def render(src_c2w, src_k, volumes, valid, c2w, k):
            h = self.render_size
            feat, opacity, _ = render_image(model.renderer, c2w, k, h, h, src_c2w, src_k, volumes, None, valid)
            return feat, opacity

        def denoise(x, sigma, cond):
            return model.denoiser(x, sigma, cond)[0]

        wrap = ms.jit if jit else (lambda f: f)
        self._encode, self._render, self._denoise = wrap(encode), wrap(render), wrap(denoise)

    # --- the three steps

    def encode(self, rgb: np.ndarray):
        """(H, W, 3) in [0, 1] -> its frustum volume (C, D, H, W) tensor."""
        return self._encode(ms.Tensor(_to_signed_chw(rgb)))[0]

    def render(self, volumes: Sequence, src_c2w: np.ndarray, intrinsics: np.ndarray, c2w: np.ndarray):
        """Feature render of camera c2w (4, 4) from len(volumes) <= max_sources source views with cameras src_c2w
        (n, 4, 4); intrinsics [fx, fy, cx, cy] in pixels of the images -> (features (1, F, h, w) tensor,
        rgb (h, w, 3), opacity (h, w) arrays)."""
        n, s = len(volumes), self.max_sources
        if not 1 <= n <= s:
            raise ValueError(f"render: need 1 to {s} source views, got {n}")
        vols = list(volumes) + [ops.zeros_like(volumes[0])] * (s - n)
        c2w_slots = np.tile(np.eye(4, dtype=np.float32), (s, 1, 1))
        c2w_slots[:n] = np.asarray(src_c2w, np.float32)
        valid = np.zeros((1, s), np.float32)
        valid[0, :n] = 1.0
        k = np.asarray(intrinsics, np.float32)
        feat, opacity = self._render(ms.Tensor(c2w_slots[None]), ms.Tensor(np.tile(k, (1, s, 1))),
                                     ops.stack(vols)[None], ms.Tensor(valid),
                                     ms.Tensor(np.asarray(c2w, np.float32)[None]), ms.Tensor(0.5 * k[None]))
        return feat, feat.asnumpy()[0, :3].transpose(1, 2, 0), opacity.asnumpy()[0, 0]

    def denoise_view(self, features, sampler: EDMSamplerConfig, rng: np.random.Generator,
                     callback: Optional[Callable] = None) -> np.ndarray:
        """An EDM sample conditioned on a feature render (1, F, h, w) -> (H, W, 3) in [0, 1]. The start noise and
        the churn noise come from rng."""
        cond = upsample_nearest2x(features)
        x_t = ms.Tensor(rng.standard_normal((1, self.settings.denoiser.image_channels, self.size, self.size))
                        .astype(np.float32))

        def denoise(x, sigma):
            return self._denoise(x, ms.Tensor(np.full((1,), sigma, np.float32)), cond)

        x = sample_edm(denoise, x_t, sampler.sigmas(), solver=sampler.solver, s_churn=sampler.s_churn,
                       s_noise=sampler.s_noise, s_tmin=sampler.s_tmin, s_tmax=sampler.s_tmax, rng=rng,
                       clip=sampler.clip, callback=callback)
        return np.clip(0.5 * (x.asnumpy()[0].transpose(1, 2, 0) + 1.0), 0.0, 1.0)

    def warm_up(self) -> float:
        """Run (so compile, with jit) the encoder, the render and one denoiser call once on a blank view; returns
        the seconds taken."""
        import time
        start = time.time()
        blank = np.ones((self.size, self.size, 3), np.float32)
        eye = np.eye(4)
        eye[2, 3] = 2.0  # a camera on the z axis, looking at the origin
        k = np.array([self.size, self.size, self.size / 2, self.size / 2], np.float64)
        feat, _, _ = self.render([self.encode(blank)], eye[None], k, eye)
        cond = upsample_nearest2x(feat)
        x = ms.Tensor(np.zeros((1, self.settings.denoiser.image_channels, self.size, self.size), np.float32))
        self._denoise(x, ms.Tensor(np.ones((1,), np.float32)), cond).asnumpy()
        return time.time() - start

    # --- views

    def run(self, image: np.ndarray, c2w0: np.ndarray, intrinsics: np.ndarray, targets: np.ndarray,
            sampler: EDMSamplerConfig, seed: int = 0, autoregressive: bool = True,
            cond_seed: int = CONDITIONING_SEED, sample: bool = True, progress: bool = False,
            desc: str = "views") -> SampledViews:
        """Sample the target cameras (T, 4, 4) in order from the input image (H, W, 3) in [0, 1] seen from c2w0
        (4, 4) with intrinsics [fx, fy, cx, cy] (pixels of the image).

        autoregressive: target t is conditioned on conditioning_set(t + 1) of [input, samples 0 .. t - 1] (random
        picks from random.Random(cond_seed)); else on the input alone. Target t's noise: Generator([seed, t]).
        sample False renders only (samples are then the renders)."""
        from tqdm import tqdm
        targets = np.asarray(targets, np.float64).reshape(-1, 4, 4)
        if tuple(np.shape(image)) != (self.size, self.size, 3):
            raise ValueError(f"run: the image must be ({self.size}, {self.size}, 3), got {np.shape(image)}")
        cameras = [np.asarray(c2w0, np.float64)]
        volumes = [self.encode(image)]
        views = [np.asarray(image, np.float32)]
        pick = random.Random(cond_seed)
        out = SampledViews([], [], [], [])
        bar = tqdm(total=len(targets), desc=desc, unit="view", disable=not progress)
        for t, c2w in enumerate(targets):
            src = conditioning_set(len(views), pick, self.max_sources) if autoregressive else [0]
            feat, rgb, opacity = self.render([volumes[i] for i in src], np.stack([cameras[i] for i in src]),
                                             intrinsics, c2w)
            render = np.clip(_up2(rgb), 0.0, 1.0)
            if sample:
                steps = tqdm(total=sampler.steps, desc=f"  {sampler.solver} steps", unit="step", leave=False,
                             disable=not progress)
                view = self.denoise_view(feat, sampler, np.random.default_rng([int(seed), t]),
                                         callback=lambda i, x: steps.update(1))
                steps.close()
            else:
                view = render
            out.samples.append(view)
            out.renders.append(render)
            out.opacity.append(np.clip(_up2(opacity[..., None])[..., 0], 0.0, 1.0))
            out.sources.append(src)
            if autoregressive and t < len(targets) - 1:
                cameras.append(c2w)
                volumes.append(self.encode(view))
                views.append(view)
            bar.update(1)
        bar.close()
        return SampledViews(np.stack(out.samples), np.stack(out.renders), np.stack(out.opacity), out.sources)
