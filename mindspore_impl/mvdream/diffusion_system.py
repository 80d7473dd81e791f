"""Multiview diffusion training (the MVDream recipe) as a system of the project's trainer (core/trainer.py).

    python launch.py --config configs/demo-mvdiffusion.yaml --train      # the shipped demo model
    python launch.py --config configs/demo-mvdiffusion.yaml --train resume=outputs/<name>/<trial>/ckpts/last.ckpt
    python launch.py --config configs/demo-mvdiffusion.yaml --export resume=outputs/<name>/<trial>/ckpts/last.ckpt

The model is any original-format MVDream YAML (`system.model_config`: configs/demo-model.yaml,
configs/sd-v2-base.yaml): UNet + first stage (VAE or pixel space) + text tower, built by loading.py with
`init_weights` on top (or loaded from `init_checkpoint` to fine-tune). The loss is training.py's
MultiviewDiffusionLoss (eps-MSE over F views of each object with camera conditioning and classifier-free caption
dropout); forward, backward, gradient clip, AdamW and the EMA compile as one step (core/train_step.py, the EMA as
its `after_update`). The data module (mvdream/data/datamodule.py) draws every random number of a step (objects,
views, timesteps, dropout, noise); this system draws none, so its step is deterministic given the batch.

Checkpoints (core/train_state.py through the trainer): the three models (model.unet.*, model.first_stage.*,
model.text_encoder.*), the AdamW moments and step, and as extra state the EMA weights (extra.ema.<name>) and the
smoothed loss. Export (`export(out_dir)` -> out_dir/model.ckpt): the model alone, EMA weights in place of the
trained ones when ema_decay is set, under the original checkpoint prefixes (neutral/mvdream/checkpoint_layout.py),
the layout of pretrained/demo/model.ckpt: MVDreamPipeline.from_checkpoint, scripts/t2i.py and the SDS guidance of
configs/demo.yaml load it strictly. Validation images and the test video show F sampled views (DDIM, current
weights) of each of the data module's eval prompts.

Data parallel under msrun (core/distributed.py, README "Many cards (msrun)"): every rank builds the same initial
weights from the same seed and trains on its shard of the global batch (the data module slices it); the step
all-reduces the gradients and the loss to their means across ranks before clipping and AdamW
(core/train_step.py's grad_reducer), so every rank applies the same update and logs the global loss. Only rank 0
writes (trial folder, metrics, checkpoints, images, export: launch.py, core/trainer.py `writer`).

LoRA (`system.lora: {mode, rank, alpha}`, mvdream/lora.py; needs init_checkpoint and train_text_encoder: false):
the UNet's chosen Dense layers get adapters, every base weight is frozen, and only the adapters are optimised,
checkpointed (model.* holds them alone; the base comes from init_checkpoint again on resume) and exported
(out_dir/lora.safetensors with a record naming the base checkpoint; load with scripts/t2i.py --lora or
system.guidance.lora_path). Example: configs/demo-lora.yaml.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import mindspore as ms
import numpy as np

from mindspore_impl.core.ema import ema_weights
from mindspore_impl.core.checkpoint import CheckpointError, read_params
from mindspore_impl.core.diffusion_training import DiffusionTrainingSystem
from mindspore_impl.core.system import BaseSystemConfig
from mindspore_impl.mvdream import loading
from mindspore_impl.mvdream import lora as lora_lib
from mindspore_impl.mvdream.first_stage import latent_shape
from mindspore_impl.mvdream.schedule import NoiseSchedule
from mindspore_impl.mvdream.training import MultiviewDiffusionLoss, arrays_of, model_parameters, step_inputs
from neutral.config import ConfigError
from neutral.mvdream.first_stage import downsample_of
from neutral.mvdream.model_config import load_model_config
from neutral.mvdream.tokenizer import require_tokenizer
from neutral.registry import register

def init_weights(unet, text_encoder, seed: int, token_embedding_std: float = 0.02) -> None:
    """Upstream-like init on top of MindSpore's (torch-equal) Dense/Conv defaults: the layers the original
    zero-initialises (UNet out conv, ResBlock out_layers.3, transformer proj_out; bytedance/MVDream
    mvdream/ldm/modules/diffusionmodules/openaimodel.py and attention.py, `zero_module`) start at 0, and the
    text tower's embeddings get normal(token_embedding_std) (open_clip: 0.02) / normal(0.01)."""
    rng = np.random.default_rng(seed)
    for name, p in unet.parameters_and_names():
        if name.startswith("out.2.") or ".out_layers.3." in name or ".proj_out." in name:
            p.set_data(ms.Tensor(np.zeros(p.shape, np.float32), dtype=p.dtype))
    for name, p in text_encoder.parameters_and_names():
        if name == "token_embedding.embedding_table":
            p.set_data(ms.Tensor((token_embedding_std * rng.standard_normal(p.shape)).astype(np.float32)))
        elif name == "positional_embedding":
            p.set_data(ms.Tensor((0.01 * rng.standard_normal(p.shape)).astype(np.float32)))


def _default_optimizer() -> dict:
    return {"name": "AdamW", "args": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}}


@dataclass
class MultiviewDiffusionSystemConfig(BaseSystemConfig):
    optimizer: dict = field(default_factory=_default_optimizer)
    grad_clip: Optional[float] = 1.0
    model_config: str = "configs/demo-model.yaml"  # original-format model YAML
    tokenizer: str = "pretrained/demo/tokenizer"
    # a converted .ckpt / .safetensors (the three prefixes) to fine-tune from; null: init_weights
    init_checkpoint: Optional[str] = None
    num_frames: int = field(default=4, metadata={"min": 1})  # views per object, attended jointly
    train_text_encoder: bool = True
    # open_clip's init; a frozen random text tower needs ~1 to tell words apart
    token_embedding_std: float = field(default=0.02, metadata={"min": 0.0})
    # EMA of the trained weights (exported in their place); null: off
    ema_decay: Optional[float] = field(default=None, metadata={"min": 0.0, "max": 1.0})
    # compile forward + backward + update with ms.jit in either context mode (false: follow --mode)
    jit: bool = True
    # validation / test sampling of the eval prompts (DDIM, classifier-free guidance, "" as negative prompt)
    eval_steps: int = field(default=20, metadata={"min": 1})
    eval_guidance_scale: float = 5.0
    eval_elevation: float = 15.0
    eval_seed: int = 0
    # LoRA fine-tuning of the UNet: {mode: all | self_attn | qk | cross_view, rank, alpha}; null: off
    lora: Optional[dict] = None


@register("mvdream-diffusion-system")
class MultiviewDiffusionSystem(DiffusionTrainingSystem):
    Config = MultiviewDiffusionSystemConfig
    # launch.py: under msrun without a prompt list this system trains in data parallel
    data_parallel = True

    def configure(self) -> None:
        cfg = self.cfg
        self.check_ema_decay()
        self.model_params = load_model_config(cfg.model_config)
        self.tokenizer = require_tokenizer(cfg.tokenizer)
        ms.set_seed(self.seed)  # the initial weights depend on the seed alone, not on what ran before
        models = loading.build_models(self.model_params)
        # attribute order = checkpoint and optimizer order
        self.unet, self.first_stage, self.text_encoder = models["unet"], models["vae"], models["text_encoder"]
        init_weights(self.unet, self.text_encoder, self.seed, cfg.token_embedding_std)
        self._check_tokenizer()
        if cfg.init_checkpoint:
            # before the cells are wrapped: loading.py matches Parameter.name, which wrapping prefixes
            loading.check_checkpoint_file(cfg.init_checkpoint)
            loading.load_weights(models, read_params(cfg.init_checkpoint),
                                 f"system.init_checkpoint {cfg.init_checkpoint}")
        self.lora_cfg = self._configure_lora()
        # original-format names (prefix + path inside each model) -> Parameter, for export and the EMA's keys
        self.named = model_parameters(self.unet, self.first_stage, self.text_encoder)
        unet_size = int(self.model_params["unet_config"]["params"]["image_size"])
        self.image_size = unet_size * downsample_of(self.model_params["first_stage_config"])
        self.latent_shape = latent_shape(self.first_stage, self.image_size)
        self.loss_cell = MultiviewDiffusionLoss(
            self.unet, self.first_stage, self.text_encoder, NoiseSchedule.from_config(self.model_params),
            self.tokenizer([""]), cfg.num_frames, float(self.model_params.get("scale_factor", 0.18215)),
            cfg.train_text_encoder)
        for p in self.first_stage.get_parameters():
            p.requires_grad = False
        if not cfg.train_text_encoder:
            for p in self.text_encoder.get_parameters():
                p.requires_grad = False
        self.trainable_keys = [k for k, p in self.named.items() if p.requires_grad]
        self.start_training_state()
        self._tokens: dict[str, np.ndarray] = {}
        self._sampler = None

    def _configure_lora(self) -> Optional[lora_lib.LoRAConfig]:
        """Adapters on the UNet (base weights frozen) when system.lora is set."""
        cfg = self.cfg
        if cfg.lora is None:
            return None
        lcfg = lora_lib.parse_config(cfg.lora)
        if not cfg.init_checkpoint:
            raise ConfigError("system.lora fine-tunes a trained model: set system.init_checkpoint to its .ckpt")
        if cfg.train_text_encoder:
            raise ConfigError("system.lora trains the UNet's adapters only: set system.train_text_encoder=false")
        lora_lib.apply_lora(self.unet, lcfg.mode, lcfg.rank, lcfg.alpha, seed=self.seed)
        return lcfg

    def lora_record(self) -> dict[str, Any]:
        lcfg = self.lora_cfg
        return {"mode": lcfg.mode, "rank": lcfg.rank, "alpha": lcfg.alpha, "base_checkpoint": self.cfg.init_checkpoint,
                "model_config": self.cfg.model_config, "step": self.global_step}

    def model_parameters(self) -> dict[str, ms.Parameter]:
        """With LoRA, the adapters alone (what the optimizer and checkpoints hold); else every parameter."""
        params = super().model_parameters()
        if self.lora_cfg is None:
            return params
        return {k: p for k, p in params.items() if k.endswith((f".{lora_lib.DOWN}", f".{lora_lib.UP}"))}

    def _check_tokenizer(self) -> None:
        arch = self.text_encoder.arch
        if max(self.tokenizer.sot_id, self.tokenizer.eot_id) >= arch.vocab_size:
            raise ConfigError(f"system.tokenizer {self.cfg.tokenizer} has ids up to {self.tokenizer.eot_id}, more "
                              f"than the text encoder's vocab_size {arch.vocab_size}")
        if arch.context_length != self.tokenizer.context_length:
            raise ConfigError(f"the text encoder's context_length {arch.context_length} differs from the "
                              f"tokenizer's ({self.tokenizer.context_length})")

    # ----- training

    def tokens(self, captions: list[str]) -> np.ndarray:
        for c in captions:
            if c not in self._tokens:
                self._tokens[c] = self.tokenizer([c])[0]
        return np.stack([self._tokens[c] for c in captions]).astype(np.int32)

    def step_tensors(self, batch: dict) -> tuple:
        """A data-module batch -> the loss cell's inputs; ConfigError when it does not fit this model."""
        f, n = self.cfg.num_frames, len(batch["captions"])
        if batch["camera"].shape[0] != n * f or tuple(batch["noise"].shape[1:]) != tuple(self.latent_shape):
            raise ConfigError(
                f"the data module's batch ({n} objects, {batch['camera'].shape[0]} views, noise "
                f"{tuple(batch['noise'].shape[1:])}) does not fit the model ({f} views per object, latents "
                f"{tuple(self.latent_shape)}): set data.num_frames and data.model_config to system.num_frames "
                f"and system.model_config")
        return step_inputs({**batch, "tokens": self.tokens(batch["captions"])})

    # ----- evaluation: F sampled views of a prompt, side by side

    def sample_views(self, prompt: str, index: int) -> np.ndarray:
        """uint8 (F, H, W, 3): DDIM samples of `prompt` with the current (not EMA) weights."""
        if self._sampler is None:
            from mindspore_impl.mvdream.pipeline import MVDreamPipeline
            self._sampler = MVDreamPipeline(self.unet, self.first_stage, self.text_encoder, self.tokenizer,
                                            self.model_params)
        cfg = self.cfg
        return self._sampler(prompt, num_frames=cfg.num_frames, steps=cfg.eval_steps, scale=cfg.eval_guidance_scale,
                             elevation=cfg.eval_elevation, seed=cfg.eval_seed + index, height=self.image_size,
                             width=self.image_size)

    def validation_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        views = self.sample_views(batch["prompt"], index)
        return {f"view{i}": v.astype(np.float32) / 255.0 for i, v in enumerate(views)}

    def test_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        return self.validation_step(batch, index)

    # ----- export and state

    def export(self, out_dir: str) -> list[str]:
        """model.ckpt (the base class); with LoRA the adapters alone (lora.safetensors with their record)."""
        if self.lora_cfg is None:
            return super().export(out_dir)
        path = os.path.join(out_dir, "lora.safetensors")
        adapters = {k: p for k, p in self.named.items() if k in set(self.trainable_keys)}
        arrays = arrays_of(adapters)
        arrays.update(ema_weights(self.ema, self.trainable_keys))
        lora_lib.save_lora(path, arrays, self.lora_record())
        return [path]

    def extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().extra_state()
        if self.lora_cfg is not None:
            meta["lora"] = {k: v for k, v in self.lora_record().items() if k != "step"}
        return arrays, meta

    def load_extra_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        super().load_extra_state(arrays, meta)
        if self.lora_cfg is not None or meta.get("lora") is not None:
            mine = None if self.lora_cfg is None else \
                {k: v for k, v in self.lora_record().items() if k in ("mode", "rank", "alpha")}
            theirs = meta.get("lora") and {k: meta["lora"][k] for k in ("mode", "rank", "alpha")}
            if mine != theirs:
                raise CheckpointError(f"the checkpoint's LoRA settings {theirs} differ from system.lora {mine}")
