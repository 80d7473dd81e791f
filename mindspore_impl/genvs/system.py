"""GeNVS training (image to novel views; jfozard/genvs_unofficial) as a system of the project's trainer.

    python scripts/make_genvs_dataset.py --out data/genvs_scenes --num_scenes 1000 --size 32 --seed 0
    python launch.py --config configs/demo-genvs.yaml --train
    python launch.py --config configs/demo-genvs.yaml --train resume=outputs/demo-genvs/<trial>/ckpts/last.ckpt

One step (upstream genvs_model.py NerfDiffDLV3.forward with k_pipeline.py KPipeline.train_step): the data module
(neutral/genvs/srn_dataset.py, "srn-datamodule") gives B objects with N source views and a target view;
neutral/genvs/training.py step_arrays draws every random number of the step from this system's numpy Generator
(encoder input noise, ray uniforms, EDM sigmas and noise, conditioning dropout); training.py GeNVSLoss encodes the
sources into frustum volumes (encoder.py), renders the target (and source 0) at half resolution (renderer.py,
field.py: the mean over the valid source views), upsamples the feature render x2 (nearest) as the denoiser's
conditioning and adds the EDM learned-variance loss (edm.py, denoiser.py) to the render's RGB, opacity and depth
losses. Forward, backward, gradient clip and AdamW compile as one step (core/train_step.py).

Upstream facts kept (train.py, config/config_*_noise.yaml, genvs_model.py, k_configs/config_128_mid.json):
AdamW betas (0.9, 0.99), eps 1e-8, weight decay 1e-2, per-module learning rates encoder 1e-4 (input_unet),
renderer (NeRF field) 2e-4, denoiser 1e-5, global gradient-norm clip 1.0; 1 or 2 source views per step; loss
weights in neutral/genvs/training.py DEFAULT_LOSS_WEIGHTS. Left out: upstream's gradient accumulation (16 steps)
and cosine warm restarts (no lr schedulers here), the Karras augmentation pipeline, and the depth / opacity
consistency terms (off in upstream's training call). Differences: the denoiser learns images in [-1, 1] (upstream
feeds [0, 1] targets to an EDM built for sigma_data 0.5) and the conditioning dropout is drawn per sample
(upstream: one coin per batch).

Exact resume: the checkpoint holds the three models, the AdamW state and this system's Generator; the data module
draws from (seed, step). The denoiser's dropout (denoiser.dropout > 0, upstream 0.05) draws from MindSpore's own
generator, which a checkpoint does not hold: with it a resumed run differs from an uninterrupted one.

Validation (held-out objects of the data module): the feature render's RGB (the regression baseline) and a short
deterministic EDM sample of the target view (eval_sampler), side by side with the sources and the target; their
PSNRs are validation_metrics(). Export: model.ckpt (encoder.*, renderer.field.*, denoiser.net.*) and config.yaml
(the model's settings) for the sampling script.
"""
from __future__ import annotations

import math
import os
import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Optional

import mindspore as ms
import numpy as np

from mindspore_impl.core.checkpoint import save_params
from mindspore_impl.core.system import BaseSystem, BaseSystemConfig
from mindspore_impl.genvs.denoiser import GeNVSDenoiserUNet
from mindspore_impl.genvs.edm import EDMPrecond, sample_edm
from mindspore_impl.genvs.encoder import FrustumEncoder
from mindspore_impl.genvs.field import ProjectedFeatureField
from mindspore_impl.genvs.renderer import FeatureRenderer, upsample_nearest2x
from mindspore_impl.genvs.training import GeNVSLoss, training_forward
from neutral.config import ConfigError, to_container
from neutral.genvs.denoiser_config import denoiser_config
from neutral.genvs.edm import EDMSamplerConfig, check_edm_sampler
from neutral.genvs.model_config import (check_model, encoder_downsampling, parse_encoder, parse_field,
                                        parse_renderer)
from neutral.genvs.training import DEFAULT_LOSS_WEIGHTS, LOSS_TERMS, STEP_INPUTS, batch_intrinsics, step_arrays
from neutral.registry import register


def _default_optimizer() -> dict:
    # train.py: AdamW([input_unet lr_in, nerf lr_nerf, ddpm_pipeline lr_diff], betas=(0.9, 0.99), eps=1e-8,
    # weight_decay=1e-2) with lr_in 1e-4, lr_nerf 2e-4, lr_diff 1e-5 (config/config_{high,low}_noise.yaml)
    return {"name": "AdamW", "args": {"lr": 1e-4, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.01},
            "params": {"encoder": {"lr": 1e-4}, "renderer": {"lr": 2e-4}, "denoiser": {"lr": 1e-5}}}


def _default_eval_sampler() -> dict:
    # k_pipeline.py samples between the model config's sigma_min 0.03 and sigma_max 50 (not EDM's 0.002 / 80)
    return {"steps": 10, "solver": "heun", "sigma_min": 0.03, "sigma_max": 50.0, "s_churn": 0.0}


@dataclass
class GeNVSSystemConfig(BaseSystemConfig):
    optimizer: dict = dataclasses.field(default_factory=_default_optimizer)
    grad_clip: Optional[float] = 1.0
    # loss weights (scheduled scalars), keys lambda_<term> of neutral/genvs/training.py LOSS_TERMS
    loss: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    image_size: int = dataclasses.field(default=128, metadata={"min": 2})  # the data's side (data.image_size)
    render_size: int = dataclasses.field(default=64, metadata={"min": 1})  # the feature render's side: image_size / 2
    encoder: dict = dataclasses.field(default_factory=dict)   # neutral/genvs/model_config.py EncoderConfig
    field: dict = dataclasses.field(default_factory=dict)     # FieldConfig
    renderer: dict = dataclasses.field(default_factory=dict)  # RendererConfig
    denoiser: dict = dataclasses.field(default_factory=dict)  # neutral/genvs/denoiser_config.py DenoiserConfig
    # also render source view 0 (upstream's Q = 2): its RGB loss (lambda_rgb_source) and its opacity and depth
    render_source: bool = True
    sigma_data: float = dataclasses.field(default=0.5, metadata={"min": 0.0})
    # training sigmas: exp(N(p_mean, p_std^2)) clipped to [sigma_min, sigma_max] (k_configs/config_128_mid.json)
    sigma_p_mean: float = 0.5
    sigma_p_std: float = dataclasses.field(default=1.4, metadata={"min": 0.0})
    sigma_min: float = dataclasses.field(default=0.03, metadata={"min": 0.0})
    sigma_max: float = dataclasses.field(default=50.0, metadata={"min": 0.0})
    # the conditioning is replaced by uniform noise with this probability (genvs_model.py no_cond_prob)
    cond_drop_prob: float = dataclasses.field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    # compile forward + backward + update with ms.jit in either context mode (false: follow --mode)
    jit: bool = True
    # validation / test: a deterministic EDM sample of the target view (neutral/genvs/edm.py EDMSamplerConfig)
    eval_sampler: dict = dataclasses.field(default_factory=_default_eval_sampler)
    eval_seed: int = 0
    test_sample: bool = True  # the test orbit shows samples too (false: the feature render only)


def check_settings(cfg: GeNVSSystemConfig) -> tuple:
    """Every check of a parsed system config, before anything is built -> the (encoder, field, renderer, denoiser,
    eval sampler) configs. ConfigError names the first bad setting."""
    enc, fld, rend = parse_encoder(cfg.encoder), parse_field(cfg.field), parse_renderer(cfg.renderer)
    check_model(enc, fld, rend)
    if cfg.render_size * 2 != cfg.image_size:
        raise ConfigError(f"system.render_size ({cfg.render_size}) must be half of system.image_size "
                          f"({cfg.image_size}): the feature render is upsampled x2 (nearest) for the denoiser")
    multiple = 2 * encoder_downsampling(enc)
    if cfg.image_size % multiple:
        raise ConfigError(f"system.image_size ({cfg.image_size}) must be a multiple of {multiple} (twice the "
                          f"encoder's downsampling, {len(enc.channel_mult)} levels)")
    if fld.out_features < 3:
        raise ConfigError(f"system.field.out_features ({fld.out_features}) must be >= 3: the first 3 feature "
                          "channels are the render's RGB")
    den = dict(to_container(cfg.denoiser) or {})
    den.setdefault("image_size", cfg.image_size)
    den.setdefault("cond_channels", fld.out_features)
    den = denoiser_config(den, "system.denoiser")
    if den.image_size != cfg.image_size:
        raise ConfigError(f"system.denoiser.image_size ({den.image_size}) must equal system.image_size "
                          f"({cfg.image_size}); leave it out to take that")
    if den.cond_channels != fld.out_features:
        raise ConfigError(f"system.denoiser.cond_channels ({den.cond_channels}) must equal "
                          f"system.field.out_features ({fld.out_features}): the denoiser is conditioned on the "
                          "feature render")
    if den.image_channels != enc.in_channels:
        raise ConfigError(f"system.denoiser.image_channels ({den.image_channels}) must equal "
                          f"system.encoder.in_channels ({enc.in_channels})")
    unknown = sorted(set(to_container(cfg.loss) or {}) - set(DEFAULT_LOSS_WEIGHTS))
    if unknown:
        raise ConfigError(f"system.loss: unknown weights {unknown}; known: {sorted(DEFAULT_LOSS_WEIGHTS)}")
    if not 0 < cfg.sigma_min <= cfg.sigma_max:
        raise ConfigError(f"system: need 0 < sigma_min <= sigma_max, got {cfg.sigma_min} and {cfg.sigma_max}")
    if not cfg.sigma_data > 0:
        raise ConfigError(f"system.sigma_data must be > 0, got {cfg.sigma_data}")
    spec = dict(to_container(cfg.eval_sampler) or {})
    known = {f.name for f in dataclasses.fields(EDMSamplerConfig)} - {"sigma_data"}
    if set(spec) - known:
        raise ConfigError(f"system.eval_sampler: unknown keys {sorted(set(spec) - known)}; known: {sorted(known)}")
    try:
        sampler = check_edm_sampler(EDMSamplerConfig(**spec, sigma_data=cfg.sigma_data))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"system.eval_sampler: {exc}") from None
    return enc, fld, rend, den, sampler


def psnr(image: np.ndarray, target: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1]."""
    mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(target, np.float64)) ** 2))
    return -10.0 * math.log10(max(mse, 1e-10))


def _up2(image: np.ndarray) -> np.ndarray:
    """(h, w, C) -> (2h, 2w, C), nearest (what the denoiser sees of the render)."""
    return np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)


@register("genvs-system")
class GeNVSSystem(BaseSystem):
    Config = GeNVSSystemConfig
    unsaved_modules = ("loss_cell",)  # it holds the three models, saved under their own names

    def configure(self) -> None:
        cfg = self.cfg
        enc_cfg, field_cfg, rend_cfg, den_cfg, self.sampler_cfg = check_settings(cfg)
        self.model_cfgs = (enc_cfg, field_cfg, rend_cfg, den_cfg)
        ms.set_seed(self.seed)  # the initial weights depend on the seed alone
        # attribute order = checkpoint and optimizer order
        self.encoder = FrustumEncoder(enc_cfg)
        self.renderer = FeatureRenderer(rend_cfg, ProjectedFeatureField(field_cfg))
        self.denoiser = EDMPrecond(GeNVSDenoiserUNet(den_cfg), cfg.sigma_data)
        self.loss_cell = GeNVSLoss(self.encoder, self.renderer, self.denoiser)
        self.train_dropout = den_cfg.dropout > 0  # MindSpore's dropout acts only in training mode
        self.val_psnrs: dict[str, list[float]] = {"render": [], "sample": []}
        self._step = None
        self._eval_fns: dict[str, Any] = {}

    # ----- training

    def loss_weights(self) -> dict[str, float]:
        return {k: self.C(v) for k, v in (to_container(self.cfg.loss) or {}).items()}

    def check_batch(self, batch: dict) -> None:
        h, w = np.asarray(batch["src_rgb"]).shape[2:4]
        if (h, w) != (self.cfg.image_size, self.cfg.image_size):
            raise ConfigError(f"the data module's images are {w}x{h} but system.image_size is {self.cfg.image_size}; "
                              f"set data.image_size to {self.cfg.image_size} (or system.image_size to {h})")

    def step_arrays(self, batch: dict) -> dict[str, np.ndarray]:
        """The step's inputs (neutral/genvs/training.py STEP_INPUTS) with this step's draws from self.rng."""
        self.check_batch(batch)
        cfg = self.cfg
        return step_arrays(batch, self.rng, n_uniforms=self.renderer.n_uniforms,
                           cond_channels=self.model_cfgs[3].cond_channels, render_source=cfg.render_source,
                           loss_weights=self.loss_weights(), sigma_p_mean=cfg.sigma_p_mean,
                           sigma_p_std=cfg.sigma_p_std, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
                           cond_drop_prob=cfg.cond_drop_prob)

    def _set_train(self, mode: bool) -> None:
        self.denoiser.set_train(mode and self.train_dropout)

    def run_step(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """One optimizer step on prepared inputs (step_arrays) -> metrics: the loss and each unweighted term."""
        if self._step is None:
            self._step = self.make_train_step(training_forward(self.loss_cell), jit=True if self.cfg.jit else None)
        self._set_train(True)  # a no-op without dropout; with it, only a validation switches it off
        loss, terms = self._step(*(ms.Tensor(arrays[k]) for k in STEP_INPUTS))
        metrics = {"loss": float(loss.asnumpy())}
        metrics.update({f"loss_{t}": float(v) for t, v in zip(LOSS_TERMS, terms.asnumpy())})
        metrics["n_source_views"] = float(arrays["src_valid"].sum(axis=1).mean())
        return metrics

    def training_step(self, batch: dict, global_step: int) -> dict[str, Any]:
        return self.run_step(self.step_arrays(batch))

    # ----- evaluation

    def render_view(self, batch: dict):
        """The target view's feature render (deterministic ray samples) -> (features (1, F, h, w) tensor,
        rgb (h, w, 3) and opacity (h, w, 1) arrays). Batches of one object (val_batch, test_batch)."""
        self.check_batch(batch)
        src_rgb = np.asarray(batch["src_rgb"], np.float32)
        b, n = src_rgb.shape[:2]
        k = batch_intrinsics(batch)
        valid = batch.get("src_valid", np.ones((b, n), np.float32))
        src_k = np.ascontiguousarray(np.broadcast_to(k[:, None], (b, n, 4)))
        t = ms.Tensor
        feat, opacity = self._eval_fn("render")(
            t(np.ascontiguousarray(np.moveaxis(src_rgb * 2.0 - 1.0, -1, -3))),
            t(np.asarray(batch["src_c2w"], np.float32)), t(src_k), t(np.asarray(valid, np.float32)),
            t(np.asarray(batch["tgt_c2w"], np.float32)[:, None]), t(0.5 * k[:, None]))
        return feat, feat.asnumpy()[0, :3].transpose(1, 2, 0), opacity.asnumpy()[0].transpose(1, 2, 0)

    def _eval_fn(self, name: str):
        """The evaluation's render (target camera, deterministic ray samples, no input noise) and denoiser call,
        compiled with ms.jit when system.jit (one compile each; per view they then run in milliseconds)."""
        if name not in self._eval_fns:
            h = self.cfg.render_size

            def render(src_images, src_c2w, src_k, valid, c2w, k):
                feat, opacity, _ = self.loss_cell.render(src_images, None, src_c2w, src_k, valid, c2w, k, None, h, h)
                return feat[:, 0], opacity[:, 0]

            def denoise(x, sigma, cond):
                return self.denoiser(x, sigma, cond)[0]

            fn = {"render": render, "denoise": denoise}[name]
            self._eval_fns[name] = ms.jit(fn) if self.cfg.jit else fn
        return self._eval_fns[name]

    def sample_view(self, features, index: int) -> np.ndarray:
        """A deterministic EDM sample of the view conditioned on its feature render -> (H, W, 3) in [0, 1]."""
        s = self.sampler_cfg
        cond = upsample_nearest2x(features)
        size = self.cfg.image_size
        rng = np.random.default_rng([self.cfg.eval_seed, index])
        x_t = ms.Tensor(rng.standard_normal((1, 3, size, size)).astype(np.float32))

        fn = self._eval_fn("denoise")

        def denoise(x, sigma):
            return fn(x, ms.Tensor(np.full((1,), sigma, np.float32)), cond)

        x = sample_edm(denoise, x_t, s.sigmas(), solver=s.solver, s_churn=s.s_churn, s_noise=s.s_noise,
                       s_tmin=s.s_tmin, s_tmax=s.s_tmax, rng=rng, clip=s.clip)
        return np.clip(0.5 * (x.asnumpy()[0].transpose(1, 2, 0) + 1.0), 0.0, 1.0)

    def view_images(self, batch: dict, index: int, sample: bool = True) -> tuple[dict, dict]:
        """Images {sources..., target, render, sample, opacity} of one view and their PSNRs against the target."""
        self._set_train(False)
        features, rgb, opacity = self.render_view(batch)
        target = np.asarray(batch["tgt_rgb"], np.float32)[0]
        images = {f"source{i}": np.asarray(batch["src_rgb"], np.float32)[0, i]
                  for i in range(np.asarray(batch["src_rgb"]).shape[1])}
        images["target"] = target
        images["render"] = np.clip(_up2(rgb), 0.0, 1.0)
        scores = {"render": psnr(images["render"], target)}
        if sample:
            images["sample"] = self.sample_view(features, index)
            scores["sample"] = psnr(images["sample"], target)
        images["opacity"] = np.clip(_up2(opacity), 0.0, 1.0)
        return images, scores

    def validation_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        images, scores = self.view_images(batch, index)
        if index == 0:
            self.val_psnrs = {"render": [], "sample": []}
        for k, v in scores.items():
            self.val_psnrs[k].append(v)
        return images

    def validation_metrics(self) -> dict[str, float]:
        """Mean PSNR (dB) over the held-out views of the latest validation: the feature render's RGB (nearest x2)
        and the EDM sample, each against the target."""
        return {f"val_psnr_{k}": float(np.mean(v)) for k, v in self.val_psnrs.items() if v}

    def test_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        return self.view_images(batch, index, sample=self.cfg.test_sample)[0]

    # ----- export

    def export(self, out_dir: str) -> list[str]:
        """model.ckpt (the three models by parameter name) and config.yaml (sizes and sub-configs)."""
        from omegaconf import OmegaConf

        from neutral.files import write_atomically
        enc, fld, rend, den = self.model_cfgs
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "model.ckpt")
        save_params({k: p.asnumpy() for k, p in self.model_parameters().items()}, path)
        settings = {"image_size": self.cfg.image_size, "render_size": self.cfg.render_size,
                    "sigma_data": self.cfg.sigma_data, "encoder": asdict(enc), "field": asdict(fld),
                    "renderer": asdict(rend), "denoiser": asdict(den)}
        text = OmegaConf.to_yaml(OmegaConf.create(settings))
        yaml_path = write_atomically(os.path.join(out_dir, "config.yaml"), lambda f: f.write(text), binary=False)
        return [path, yaml_path]
