"""Train (or fine-tune) a multiview diffusion model (MVDream recipe) in MindSpore.

    python scripts/train_mvdiffusion.py --config configs/demo-mvdiffusion.yaml [key=value ...]
    python scripts/train_mvdiffusion.py --config configs/demo-mvdiffusion.yaml resume=outputs/demo-train/ckpts

Data: a multiview .npz (scripts/make_primitives_dataset.py): images uint8 (N, V, H, W, 3), cameras (N, V, 16)
(normalize_camera(c2w) flattened), captions (N,). Each sample is F views of one object (V = F, or V a multiple
of F: F evenly spaced views with a random offset). The model is any original-format MVDream YAML
(configs/demo-model.yaml, configs/sd-v2-base.yaml): UNet + first stage (VAE or pixel space) + text tower.

Writes to output_dir:
  model.ckpt          the model alone (EMA weights when ema_decay is set), MindSpore names under the original
                      prefixes: MVDreamPipeline.from_checkpoint and the SDS guidance load it strictly
  ckpts/last.ckpt     training state (model, AdamW moments and step, EMA) + last.json (step, RNG, config);
  ckpts/stepNNNNNN.*  every save_every steps (keep_checkpoints newest kept); `resume=` continues exactly
  loss.csv            step, loss, smoothed loss, steps/s, elapsed seconds
  config.yaml         the resolved training config
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from neutral.config import ConfigError, parse_structured  # noqa: E402
from neutral.errors import MissingFileError, report  # noqa: E402

DATASET_HINT = ("make one with: python scripts/make_primitives_dataset.py --out data/primitives_32.npz "
                "(see its --help), or point dataset= at your multiview .npz")


@dataclass
class TrainConfig:
    model_config: str = "configs/demo-model.yaml"
    init_checkpoint: Optional[str] = None  # converted .ckpt/.safetensors (three prefixes) to fine-tune from
    dataset: str = "data/primitives_32.npz"
    tokenizer: str = "pretrained/demo/tokenizer"
    output_dir: str = "outputs/demo-train"
    resume: Optional[str] = None  # a ckpts folder or a .ckpt written by this script
    seed: int = 0
    num_frames: int = 4
    batch_size: int = 8  # objects per step (batch_size x num_frames images)
    max_steps: int = 1000
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: Optional[float] = 1.0
    cfg_drop_prob: float = 0.1  # caption -> "" with this probability (classifier-free guidance)
    timestep_sharing: str = "object"  # "object": one t per object for its F views; "view": one per view
    train_text_encoder: bool = True
    token_embedding_std: float = 0.02  # open_clip's init; a frozen random text tower needs ~1 to tell words apart
    ema_decay: Optional[float] = None
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    jit: bool = True
    progress: bool = True


def load_config(path: Optional[str], overrides: List[str]) -> TrainConfig:
    """YAML file (optional) + key=value overrides -> TrainConfig; unknown keys raise ConfigError."""
    from omegaconf import OmegaConf
    base = OmegaConf.load(path) if path else OmegaConf.create({})
    if path and not os.path.isfile(path):
        raise MissingFileError(f"training config not found: {path}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    cfg = parse_structured(TrainConfig, merged, "train_mvdiffusion")
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    from neutral.mvdream.training import TIMESTEP_SHARING
    if cfg.timestep_sharing not in TIMESTEP_SHARING:
        raise ConfigError(f"timestep_sharing must be one of {TIMESTEP_SHARING}, got {cfg.timestep_sharing!r}")
    if cfg.batch_size < 1 or cfg.num_frames < 1 or cfg.max_steps < 0:
        raise ConfigError("batch_size and num_frames must be >= 1 and max_steps >= 0")
    if not 0.0 <= cfg.cfg_drop_prob <= 1.0:
        raise ConfigError(f"cfg_drop_prob must be in [0, 1], got {cfg.cfg_drop_prob}")
    if len(cfg.betas) != 2:
        raise ConfigError(f"betas needs two values, got {cfg.betas}")


# ---------------------------------------------------------------- data

def load_data(path: str) -> dict:
    """images (N, V, H, W, 3) uint8, cameras (N, V, 16) float32, captions (N,) str from a multiview .npz."""
    if not path or not os.path.isfile(path):
        raise MissingFileError(f"dataset file not found: {path!r}; {DATASET_HINT}")
    from mindspore_impl.mvdream.data.primitives import load_dataset
    data = load_dataset(path)
    return {"images": data["images"], "cameras": data["cameras"].astype(np.float32),
            "captions": [str(c) for c in data["captions"]]}


def check_data(data: dict, num_frames: int, image_size: int) -> None:
    images, cameras, captions = data["images"], data["cameras"], data["captions"]
    if images.ndim != 5 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ConfigError(f"dataset images must be uint8 (N, V, H, W, 3), got {images.dtype} {images.shape}")
    n, v, h, w, _ = images.shape
    if cameras.shape != (n, v, 16):
        raise ConfigError(f"dataset cameras must be (N, V, 16) = {(n, v, 16)}, got {cameras.shape}")
    if len(captions) != n:
        raise ConfigError(f"dataset has {n} objects but {len(captions)} captions")
    if v % num_frames:
        raise ConfigError(f"dataset has {v} views per object; num_frames {num_frames} must divide it")
    if h != image_size or w != image_size:
        raise ConfigError(f"dataset images are {h}x{w} but the model is trained at {image_size}x{image_size}")


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


# ---------------------------------------------------------------- model

def init_weights(unet, text_encoder, seed: int, token_embedding_std: float = 0.02) -> None:
    """Upstream-like init on top of MindSpore's (torch-equal) Dense/Conv defaults: the layers the original
    zero-initialises (UNet out conv, ResBlock out_layers.3, transformer proj_out) start at 0, and the
    text tower's embeddings get normal(token_embedding_std) (open_clip: 0.02) / normal(0.01)."""
    import mindspore as ms
    rng = np.random.default_rng(seed)
    for name, p in unet.parameters_and_names():
        if name.startswith(("out.2.", )) or ".out_layers.3." in name or ".proj_out." in name:
            p.set_data(ms.Tensor(np.zeros(p.shape, np.float32), dtype=p.dtype))
    for name, p in text_encoder.parameters_and_names():
        if name == "token_embedding.embedding_table":
            p.set_data(ms.Tensor((token_embedding_std * rng.standard_normal(p.shape)).astype(np.float32)))
        elif name == "positional_embedding":
            p.set_data(ms.Tensor((0.01 * rng.standard_normal(p.shape)).astype(np.float32)))


class Trainer:
    """Builds the model, optimizer and compiled step from a TrainConfig; `fit()` runs the loop."""

    def __init__(self, cfg: TrainConfig, data: Optional[dict] = None, log=print):
        import mindspore as ms

        from neutral.mvdream.model_config import load_model_config
        from mindspore_impl.core.checkpoint import read_params
        from mindspore_impl.core.optim import build_optimizer
        from mindspore_impl.mvdream import first_stage, text_encoder, unet
        from mindspore_impl.mvdream.schedule import NoiseSchedule
        from neutral.mvdream.tokenizer import load_tokenizer
        from mindspore_impl.mvdream.training import EMA, MultiviewDiffusionLoss, load_named, make_train_step, \
            model_parameters

        self.cfg, self.log = cfg, log
        if not os.path.isfile(cfg.model_config):
            raise MissingFileError(f"model config not found: {cfg.model_config}")
        self.model_params = load_model_config(cfg.model_config)
        mp = self.model_params
        self.data = data if data is not None else load_data(cfg.dataset)
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        ms.set_seed(cfg.seed)
        self.unet = unet.build_from_config(dict(mp["unet_config"]["params"]))
        self.first_stage = first_stage.build_first_stage(dict(mp["first_stage_config"]))
        self.text_encoder = text_encoder.build_from_config(dict(mp["cond_stage_config"]["params"]))
        init_weights(self.unet, self.text_encoder, cfg.seed, cfg.token_embedding_std)
        vocab = self.text_encoder.arch.vocab_size
        if max(self.tokenizer.sot_id, self.tokenizer.eot_id) >= vocab:
            raise ConfigError(f"tokenizer {cfg.tokenizer} has ids up to {self.tokenizer.eot_id}, more than the "
                             f"text encoder's vocab_size {vocab}")
        if self.text_encoder.arch.context_length != self.tokenizer.context_length:
            raise ConfigError("the text encoder's context_length differs from the tokenizer's (77)")
        # names before the cells are wrapped (wrapping prefixes Parameter.name, not these keys)
        self.params = model_parameters(self.unet, self.first_stage, self.text_encoder)
        if cfg.init_checkpoint:
            load_named(self.params, read_params(cfg.init_checkpoint), f"init_checkpoint {cfg.init_checkpoint}")
        fs_down = first_stage.downsample_of(mp["first_stage_config"])
        self.image_size = int(mp["unet_config"]["params"]["image_size"]) * fs_down
        self.latent_shape = first_stage.latent_shape(self.first_stage, self.image_size)
        check_data(self.data, cfg.num_frames, self.image_size)
        self.schedule = NoiseSchedule.from_config(mp)
        empty = self.tokenizer([""])
        self.loss_cell = MultiviewDiffusionLoss(self.unet, self.first_stage, self.text_encoder, self.schedule, empty,
                                                cfg.num_frames, float(mp.get("scale_factor", 0.18215)),
                                                cfg.train_text_encoder)
        for p in self.first_stage.get_parameters():
            p.requires_grad = False
        if not cfg.train_text_encoder:
            for p in self.text_encoder.get_parameters():
                p.requires_grad = False
        trainable = [p for k, p in self.params.items() if p.requires_grad]
        self.trainable_keys = [k for k, p in self.params.items() if p.requires_grad]
        self.optimizer = build_optimizer("AdamW", [{"params": trainable, "name": "model"}],
                                         {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps,
                                          "weight_decay": cfg.weight_decay})
        self.ema = EMA(trainable, cfg.ema_decay) if cfg.ema_decay else None
        self.step_fn = make_train_step(self.loss_cell, self.optimizer, self.ema, jit=cfg.jit, grad_clip=cfg.grad_clip)
        self.rng = np.random.default_rng(cfg.seed)
        self.step = 0
        self._token_cache: dict[str, np.ndarray] = {}
        n_par = sum(int(np.prod(p.shape)) for p in self.params.values())
        log(f"model: {n_par / 1e6:.2f}M parameters ({len(trainable)} trainable tensors), images "
            f"{self.image_size}x{self.image_size} x {cfg.num_frames} views, latents {self.latent_shape}, "
            f"{len(self.data['captions'])} objects")

    # -- batches
    def tokens(self, captions: list[str]) -> np.ndarray:
        for c in captions:
            if c not in self._token_cache:
                self._token_cache[c] = self.tokenizer([c])[0]
        return np.stack([self._token_cache[c] for c in captions]).astype(np.int32)

    def next_batch(self) -> dict:
        """Every random number of one step from self.rng: objects, views, then t / drop / noise."""
        from mindspore_impl.mvdream.training import images_to_model, sample_step_noise
        cfg = self.cfg
        objs = sample_objects(self.rng, self.data, cfg.batch_size, cfg.num_frames)
        batch = {"images": images_to_model(objs["images"]), "camera": objs["camera"],
                 "tokens": self.tokens(objs["captions"])}
        batch.update(sample_step_noise(self.rng, cfg.batch_size, cfg.num_frames, self.latent_shape,
                                       self.schedule.num_timesteps, cfg.cfg_drop_prob, cfg.timestep_sharing))
        return batch

    def train_step(self) -> float:
        from mindspore_impl.mvdream.training import step_inputs
        loss = self.step_fn(*step_inputs(self.next_batch()))
        self.step += 1
        return float(loss.asnumpy())

    # -- checkpoints
    def state_arrays(self) -> dict[str, np.ndarray]:
        from mindspore_impl.mvdream.training import arrays_of
        out = arrays_of(self.params)
        out.update({"optimizer." + k: v for k, v in self.optimizer.state_arrays().items()})
        if self.ema is not None:
            out.update({"ema." + k: p.asnumpy() for k, p in zip(self.trainable_keys, self.ema.shadow)})
        return out

    def export_arrays(self) -> dict[str, np.ndarray]:
        """The model alone (three original prefixes); EMA weights in place of the trained ones when on."""
        from mindspore_impl.mvdream.training import arrays_of
        out = arrays_of(self.params)
        if self.ema is not None:
            out.update({k: p.asnumpy() for k, p in zip(self.trainable_keys, self.ema.shadow)})
        return out

    def save(self) -> str:
        from mindspore_impl.core.checkpoint import save_params
        from mindspore_impl.core.train_state import copy_training_state, prune_step_checkpoints, \
            save_training_state, step_name
        ckpt_dir = os.path.join(self.cfg.output_dir, "ckpts")
        meta = {"step": self.step, "rng": self.rng.bit_generator.state, "config": asdict(self.cfg),
                "model_config": self.model_params}
        path = save_training_state(ckpt_dir, step_name(self.step), self.state_arrays(), meta)
        copy_training_state(path, "last")
        prune_step_checkpoints(ckpt_dir, self.cfg.keep_checkpoints)
        save_params(self.export_arrays(), os.path.join(self.cfg.output_dir, "model.ckpt"))
        return path

    def restore(self, path: str) -> int:
        from mindspore_impl.core.checkpoint import CheckpointError
        from mindspore_impl.core.train_state import load_training_state
        from mindspore_impl.mvdream.training import load_named
        arrays, meta = load_training_state(path)
        model = {k: v for k, v in arrays.items() if not k.startswith(("optimizer.", "ema."))}
        load_named(self.params, model, f"resume checkpoint {path} (model)")
        opt_state = {k[len("optimizer."):]: v for k, v in arrays.items() if k.startswith("optimizer.")}
        load_named(self.optimizer.state_parameters(), opt_state, f"resume checkpoint {path} (optimizer)")
        if self.ema is not None:
            ema = {k[len("ema."):]: v for k, v in arrays.items() if k.startswith("ema.")}
            if not ema:
                raise CheckpointError(f"{path} has no EMA weights but ema_decay is set")
            load_named(dict(zip(self.trainable_keys, self.ema.shadow)), ema, f"resume checkpoint {path} (EMA)")
        self.rng.bit_generator.state = meta["rng"]
        self.step = int(meta["step"])
        return self.step

    # -- loop
    def fit(self) -> list[float]:
        cfg = self.cfg
        os.makedirs(cfg.output_dir, exist_ok=True)
        if cfg.resume:
            self.log(f"resumed from {cfg.resume} at step {self.restore(cfg.resume)}")
        from omegaconf import OmegaConf
        OmegaConf.save(OmegaConf.structured(cfg), os.path.join(cfg.output_dir, "config.yaml"))
        csv_path = os.path.join(cfg.output_dir, "loss.csv")
        rows = _read_csv_upto(csv_path, self.step)
        f = open(csv_path, "w", newline="")
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "loss_smooth", "steps_per_s", "elapsed_s"])
        writer.writerows(rows)
        smooth = float(rows[-1][2]) if rows else None
        bar = None
        if cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        losses, t_start, t_last, s_last = [], time.time(), time.time(), self.step
        try:
            while self.step < cfg.max_steps:
                loss = self.train_step()
                losses.append(loss)
                smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
                now = time.time()
                sps = (self.step - s_last) / max(now - t_last, 1e-9)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", smooth=f"{smooth:.4f}", sps=f"{sps:.2f}")
                if self.step % max(cfg.log_every, 1) == 0 or self.step == cfg.max_steps:
                    writer.writerow([self.step, f"{loss:.6f}", f"{smooth:.6f}", f"{sps:.4f}", f"{now - t_start:.1f}"])
                    f.flush()
                    t_last, s_last = now, self.step
                if (cfg.save_every > 0 and self.step % cfg.save_every == 0) or self.step == cfg.max_steps:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            f.close()
        return losses


def _read_csv_upto(path: str, step: int) -> list[list[str]]:
    """Rows of an earlier loss.csv up to `step` (a resumed run rewrites what came after)."""
    if not os.path.isfile(path) or step == 0:
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if r and int(r[0]) <= step]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="training YAML (keys of TrainConfig)")
    ap.add_argument("--mode", choices=["graph", "pynative"], default="pynative",
                    help="MindSpore context mode; the train step is compiled with ms.jit either way (jit=true)")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. max_steps=100 batch_size=4")
    args = ap.parse_args(argv)
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    return report(_train, args)


def _train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg)
    trainer.fit()
    print(f"done: step {trainer.step}; model {os.path.join(cfg.output_dir, 'model.ckpt')}; "
          f"log {os.path.join(cfg.output_dir, 'loss.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
