"""Zero-1-to-3 training (cvlab-columbia/zero123's recipe) as a system of the project's trainer (core/trainer.py).

    python launch.py --config configs/demo-zero123-training.yaml --train      # the shipped demo model
    python launch.py --config configs/demo-zero123-training.yaml --train resume=outputs/<name>/<trial>/ckpts/last.ckpt
    python launch.py --config configs/demo-zero123-training.yaml --export resume=outputs/<name>/<trial>/ckpts/last.ckpt

The model is any Zero123 model YAML (`system.model_config`: configs/demo-zero123-model.yaml, pixel space with the CLIP
ViT tower at toy size, or upstream's configs/sd-objaverse-finetune-c_concat-256.yaml), built by model.py with
training.py's `init_weights` on top (upstream's zero_module layers, identity cc_projection, CLIP's embedding init),
or loaded from `init_checkpoint` (a converted checkpoint) to fine-tune. The loss is training.py's
Zero123DiffusionLoss: eps-MSE on the target view with the noisy target concatenated with the condition's first-stage
mode (pixel space: the condition image itself) and cross-attention on cc_projection([image embedding, T]), with
upstream's condition dropout (the data module draws it). Forward, backward, gradient clip, AdamW and the EMA compile
as one step (core/train_step.py, the EMA as its `after_update`). The first stage is frozen; the image encoder trains
when the model YAML says `cond_stage_trainable: true` (upstream: false, CLIP is frozen; the demo's toy tower starts
from random weights and trains). Per-module learning rates go through `system.optimizer.params` with the model's
attribute paths (upstream: the UNet at lr, cc_projection at 10 lr):
    optimizer: {name: AdamW, args: {lr: 1e-3}, params: {model.model: {lr: 1e-3}, model.cc_projection: {lr: 1e-2},
                model.cond_stage_model: {lr: 1e-3}}}

Checkpoints (core/train_state.py through the trainer): the model under `model.<its parameter path>`, the AdamW
moments and step, the EMA weights (extra.ema.<name>) and the smoothed loss; the data module's random stream. Export
(`export(out_dir)` -> out_dir/model.ckpt): the model alone under its checkpoint names (neutral/zero123/
checkpoint_layout.py prefixes, converted names), EMA weights in place of the trained ones when ema_decay is set:
what `mindspore_impl/zero123/loading.py load_zero123` loads strictly and zero123-guidance takes as
`pretrained_model_name_or_path` (configs/demo-image-to-3d.yaml). Validation images: for each eval pair the condition,
the target and a sample (pipeline.py: DDIM with classifier-free guidance on zero conditions, current weights); the
test video: an azimuth orbit sampled from the first eval pair's condition.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import mindspore as ms
import numpy as np

import mindspore_impl.zero123.data  # noqa: F401  (registers zero123-view-pairs-datamodule)
from mindspore_impl.core.checkpoint import read_params
from mindspore_impl.core.diffusion_training import DiffusionTrainingSystem
from mindspore_impl.core.system import BaseSystemConfig
from mindspore_impl.mvdream.first_stage import latent_shape
from mindspore_impl.mvdream.schedule import NoiseSchedule
from mindspore_impl.zero123 import loading
from mindspore_impl.zero123.model import Zero123
from mindspore_impl.zero123.training import Zero123DiffusionLoss, init_weights, model_parameters, step_inputs
from neutral.config import ConfigError
from neutral.mvdream.first_stage import downsample_of
from neutral.mvdream.model_config import load_model_config
from neutral.mvdream.samplers import check_sampler
from neutral.registry import register
from neutral.zero123.model_config import first_stage_entry
from neutral.zero123.training import NULL_CROSSATTN

def _default_optimizer() -> dict:
    # upstream's base_learning_rate 1e-4, every trained parameter at it; upstream's cc_projection at 10x is a
    # `params` group in a config (configs/demo-zero123-training.yaml): a default `params` here would be merged
    # into every config's groups
    return {"name": "AdamW", "args": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}}


@dataclass
class Zero123DiffusionSystemConfig(BaseSystemConfig):
    optimizer: dict = field(default_factory=_default_optimizer)
    grad_clip: Optional[float] = 1.0
    model_config: str = "configs/demo-zero123-model.yaml"  # original-format Zero123 model YAML
    # a converted .ckpt / .safetensors (loading.py) to fine-tune from; null: init_weights
    init_checkpoint: Optional[str] = None
    # a dropped image embedding: "embedding" (upstream: zeros before cc_projection, T kept) or "projected" (the
    # whole cross-attention token zeros: the unconditional branch of the sampler and of zero123-guidance)
    null_crossattn: str = "embedding"
    # EMA of the trained weights (exported in their place); null: off
    ema_decay: Optional[float] = field(default=None, metadata={"min": 0.0, "max": 1.0})
    # compile forward + backward + update (and the sampler's UNet call) with ms.jit in either context mode
    jit: bool = True
    # validation / test sampling (pipeline.py)
    eval_sampler: str = "ddim"
    eval_steps: int = field(default=20, metadata={"min": 1})
    eval_guidance_scale: float = 3.0
    eval_seed: int = 0


@register("zero123-diffusion-system")
class Zero123DiffusionSystem(DiffusionTrainingSystem):
    Config = Zero123DiffusionSystemConfig

    def configure(self) -> None:
        cfg = self.cfg
        self.check_ema_decay()
        if cfg.null_crossattn not in NULL_CROSSATTN:
            raise ConfigError(f"system.null_crossattn must be one of {NULL_CROSSATTN}, got {cfg.null_crossattn!r}")
        try:
            check_sampler(cfg.eval_sampler, 0.0)
        except ValueError as exc:
            raise ConfigError(f"system.eval_sampler: {exc}") from None
        if cfg.init_checkpoint:
            loading.check_checkpoint_file(cfg.init_checkpoint)
        self.model_params = load_model_config(cfg.model_config)
        ms.set_seed(self.seed)  # the initial weights depend on the seed alone, not on what ran before
        self.model = Zero123(self.model_params)
        init_weights(self.model, self.seed)
        if cfg.init_checkpoint:
            # before the cells are renamed by the system: loading.py matches the model's own parameter paths
            loading.load_weights(self.model, read_params(cfg.init_checkpoint),
                                 f"system.init_checkpoint {cfg.init_checkpoint}")
        self.named = model_parameters(self.model)
        unet_size = int(self.model_params["unet_config"]["params"]["image_size"])
        self.image_size = unet_size * downsample_of(first_stage_entry(self.model_params))
        self.latent_shape = latent_shape(self.model.first_stage_model, self.image_size)
        train_encoder = bool(self.model_params.get("cond_stage_trainable", False))
        for p in self.model.first_stage_model.get_parameters():
            p.requires_grad = False
        if not train_encoder:
            for p in self.model.cond_stage_model.get_parameters():
                p.requires_grad = False
        self.loss_cell = Zero123DiffusionLoss(self.model, NoiseSchedule.from_config(self.model_params),
                                              cfg.null_crossattn, train_encoder)
        self.trainable_keys = [k for k, p in self.named.items() if p.requires_grad]
        self.start_training_state()
        self._sampler = None

    def configure_optimizers(self):
        """The base optimizer, and a ConfigError when `optimizer.params` leaves a trained module out (its weights
        would silently stay at their init: e.g. the toy image tower of a cond_stage_trainable model)."""
        optimizer = super().configure_optimizers()
        grouped = {id(p) for group in self.parameter_groups() for p in group["params"]}
        left = sorted({k.split(".")[0] for k in self.trainable_keys if id(self.named[k]) not in grouped})
        if left:
            paths = {"model": "model.model", "cond_stage_model": "model.cond_stage_model",
                     "cc_projection": "model.cc_projection"}
            raise ConfigError(f"system.optimizer.params leaves trained parts of the model out: "
                              f"{[paths.get(k, 'model.' + k) for k in left]}; give each a group (e.g. "
                              f"{paths.get(left[0], 'model.' + left[0])}: {{lr: 1.0e-4}})")
        return optimizer

    # ----- training

    def step_tensors(self, batch: dict) -> tuple:
        """A data-module batch -> the loss cell's inputs; ConfigError when it does not fit this model."""
        if tuple(batch["noise"].shape[1:]) != tuple(self.latent_shape) or \
                tuple(batch["cond"].shape[2:]) != (self.image_size, self.image_size):
            raise ConfigError(f"the data module's batch (images {tuple(batch['cond'].shape[2:])}, noise "
                              f"{tuple(batch['noise'].shape[1:])}) does not fit the model (images "
                              f"{self.image_size}x{self.image_size}, latents {tuple(self.latent_shape)}): set "
                              f"data.model_config to system.model_config")
        return step_inputs(batch)

    # ----- evaluation

    def sample(self, cond: np.ndarray, T: np.ndarray, index: int) -> np.ndarray:
        """uint8 (N, H, W, 3) samples of the target views (current, not EMA, weights)."""
        if self._sampler is None:
            from mindspore_impl.zero123.pipeline import Zero123Sampler
            self._sampler = Zero123Sampler(self.model, self.model_params, compile=self.cfg.jit)
        cfg = self.cfg
        return self._sampler(cond, T, steps=cfg.eval_steps, scale=cfg.eval_guidance_scale, sampler=cfg.eval_sampler,
                             seed=cfg.eval_seed + index)

    @staticmethod
    def _image(x: np.ndarray) -> np.ndarray:
        """(1, 3, H, W) in [-1, 1] -> (H, W, 3) in [0, 1]."""
        return np.clip((np.asarray(x[0], np.float32).transpose(1, 2, 0) + 1.0) * 0.5, 0.0, 1.0)

    def validation_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        sample = self.sample(batch["cond"], batch["T"], index)[0]
        return {"condition": self._image(batch["cond"]), "target": self._image(batch["target"]),
                "sample": sample.astype(np.float32) / 255.0}

    def test_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        sample = self.sample(batch["cond"], batch["T"], 0)[0]  # one seed for the whole orbit
        return {"condition": self._image(batch["cond"]), "sample": sample.astype(np.float32) / 255.0}
