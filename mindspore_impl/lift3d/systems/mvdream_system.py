"""The MVDream text-to-3D system ("mvdream-system"): render multiview batches of a NeRF and distil the
frozen multiview diffusion model into it with score distillation (MVDream-threestudio's MVDreamSystem).
Geometry, material, background, renderer, evaluation and export come from the 3D base (systems/base.py); this
system adds what is MVDream's: the prompt processor, the guidance, its loss weights (losses in lift3d/losses.py),
mixed precision and the deferred (ray-chunked) backward.

One training step (MVDream-threestudio, threestudio/systems/mvdream.py upstream: training_step):
    host:  every random number of the step from self.rng (renderer jitter, background colour
           augmentation, shading mode and light mix, guidance timestep and noises) + text embeddings
    graph: render (B,H,W) -> comp_rgb -> guidance loss_sds -> + regularisers (orient, sparsity, opaque,
           z_variance) weighted by scheduled lambdas -> core/train_step.py (backward, clip, AdamW update)
The graph part is one function (`forward`) with tensor inputs only, so `--mode graph` compiles the whole
step once per shading mode; the loss weights enter as a tensor so their schedules never recompile it.

Module construction, in order, so that every config problem (unknown type or key, empty prompt, missing
checkpoint or tokenizer) is reported before the diffusion model is built or a trial folder written:
types -> sub-configs -> losses -> prompt -> checkpoint files -> 3D modules -> text embeddings (cached) -> guidance.
Twin (one training step with the torch_ref modules): torch_ref/lift3d/systems/mvdream_system.py.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import ops

from mindspore_impl.core.checkpoint import CheckpointError
from mindspore_impl.core.train_step import apply_gradients
from mindspore_impl.lift3d.guidance.multiview_diffusion_guidance import surrogate_loss
from mindspore_impl.lift3d.losses import (REGULARIZERS, composite_background, image_regularizers, lit_pixel_count,
                                          orient_sum, regularizer_losses)
from mindspore_impl.lift3d.systems.base import BaseLift3DSystem, BaseLift3DSystemConfig
from neutral import registry
from neutral.config import ConfigError, to_container
from neutral.lift3d.multiview_diffusion_guidance import GuidanceError
from neutral.lift3d.prompt_processor import PromptError, check_prompt

# loss terms in the order of the loss-weight tensor and of the aux output
LOSS_TERMS = ("sds",) + REGULARIZERS
AMP_LEVELS = ("O0", "O2")
AMP_DTYPES = {"float16": ms.float16, "bfloat16": ms.bfloat16}


def _default_loss() -> dict:
    return {"lambda_sds": 1.0, "lambda_orient": 0.0, "lambda_sparsity": 0.0, "lambda_opaque": 0.0,
            "lambda_z_variance": 0.0}


@dataclass
class MVDreamSystemConfig(BaseLift3DSystemConfig):
    prompt_processor_type: str = "mvdream-prompt-processor"
    prompt_processor: dict = field(default_factory=dict)
    guidance_type: str = "multiview-diffusion-guidance"
    guidance: dict = field(default_factory=dict)
    loss: dict = field(default_factory=_default_loss)
    # O0: everything fp32; O2: the frozen UNet's Dense/Conv weights and math in amp_dtype (norms, VAE,
    # 3D field, losses and optimizer fp32)
    amp_level: str = "O0"
    # float16 runs on every device (CPU included); bfloat16 on Ascend (Atlas A2 or later) only: elsewhere
    # configure() stops with one line before any model is built (core/device.py check_precision)
    amp_dtype: str = "float16"
    # 0: render, guidance, backward and update in one graph. N > 0: deferred backpropagation over fixed
    # chunks of N rays (render without a graph, d loss / d image through VAE and UNet, then re-render each
    # chunk with gradients): activation memory is bounded at any resolution; the renderer runs twice.
    render_chunk_rays: int = 0
    # the guidance pass of a deferred step (VAE encode with gradient, UNet) compiled as one graph (true) or run
    # op by op in PyNative (false). None: PyNative on CPU, where MindSpore's graph runtime keeps every kernel
    # output of a graph alive for the graph's lifetime (the stage-1 UNet forward alone passed 17 GB), while
    # PyNative frees each tensor after its last use; compiled elsewhere.
    guidance_graph: Optional[bool] = None


# a deferred step picks the next step's compaction bucket for 1.3x the occupied samples it saw
BUCKET_HEADROOM = 1.3

# per-pixel maps a deferred step keeps between its passes, with their channel counts
DEFERRED_MAPS = (("comp_rgb_fg", 3), ("comp_rgb_bg", 3), ("opacity", 1), ("z_variance", 1))


def split_maps(maps) -> dict:
    """(..., 8) stacked maps -> {name: (..., channels)} in DEFERRED_MAPS order."""
    out, start = {}, 0
    for key, width in DEFERRED_MAPS:
        out[key] = maps[..., start:start + width]
        start += width
    return out


# ----------------------------------------------------------------------------- config helpers


# ----------------------------------------------------------------------------- the system


@registry.register("mvdream-system")
class MVDreamSystem(BaseLift3DSystem):
    Config = MVDreamSystemConfig

    # ----- construction

    def configure(self) -> None:
        cfg = self.cfg
        classes = self.find_classes(("prompt_processor", "guidance"))
        sub = self.parse_sub_configs(classes, raw=self._linked_configs())
        self.loss_active = self.check_losses(sub, LOSS_TERMS)
        self._check_amp()
        try:
            check_prompt(getattr(sub["prompt_processor"], "prompt", None))
        except PromptError as exc:
            raise ConfigError(str(exc)) from None
        self._check_checkpoint(classes["guidance"], sub["guidance"])

        # the 3D modules before the text embeddings: building the text encoder (only on a cache miss) draws from
        # the global RNG, so the other order made the initial field depend on the cache. Text embeddings before
        # the diffusion model: a missing tokenizer is reported before that is loaded.
        self.build_3d(classes, sub)
        self.prompt_processor, self.prompt_output = self._text_embeddings(classes["prompt_processor"],
                                                                          sub["prompt_processor"])
        self.guidance = self._build_guidance(classes["guidance"], sub["guidance"])
        if cfg.use_recompute:
            self.apply_recompute()
        self._steps: dict[str, Any] = {}
        # compaction bucket of the next deferred step: the smallest until a step has measured (the grid is pruned
        # before the first step; an overflow renders again with a bucket that holds the samples)
        self._bucket_index = 0
        self._overflow_reported, self._rerendered = False, 0.0
        self.step_seconds: dict[str, float] = {}  # the last deferred step's sections (host time; for benchmarks)

    def _linked_prompt_config(self) -> dict:
        """The prompt processor reads the text encoder from the guidance's checkpoint unless told otherwise."""
        pp = dict(to_container(self.cfg.prompt_processor) or {})
        guidance = to_container(self.cfg.guidance) or {}
        for key in ("ckpt_path", "config_path", "model_name"):
            if pp.get(key) is None and guidance.get(key) is not None:
                pp[key] = guidance[key]
        if "prompt" in pp and pp["prompt"] is None:  # `prompt=` on the command line: the empty-prompt error
            pp["prompt"] = ""
        return pp

    def _linked_configs(self) -> dict:
        """The sections as the modules get them: the prompt processor linked to the guidance's checkpoint, and
        half-precision UNet weights for O2 float16."""
        raw = {"prompt_processor": self._linked_prompt_config()}
        if self.cfg.amp_level == "O2" and self.cfg.amp_dtype == "float16":
            raw["guidance"] = {**(to_container(self.cfg.guidance) or {}), "half_precision_weights": True}
        return raw

    def _check_amp(self) -> None:
        """amp_level, amp_dtype and the guidance's half precision, before any model is built: known values, no
        two settings asking for different UNet dtypes, and a dtype the current device runs
        (mindspore_impl/core/device.py check_precision: float16 anywhere, bfloat16 on Ascend only), so an
        unsupported combination is one line here instead of a kernel crash in the first step."""
        import os

        from mindspore_impl.core.device import check_precision
        from neutral.lift3d.multiview_diffusion_guidance import DEFAULT_MODEL_CONFIGS, Config, unet_precision
        from neutral.mvdream.model_config import load_model_config

        cfg = self.cfg
        if cfg.amp_level not in AMP_LEVELS:
            raise ConfigError(f"system.amp_level must be one of {AMP_LEVELS}, got {cfg.amp_level!r}")
        if cfg.amp_dtype not in AMP_DTYPES:
            raise ConfigError(f"system.amp_dtype must be one of {sorted(AMP_DTYPES)}, got {cfg.amp_dtype!r}")
        if cfg.render_chunk_rays < 0:
            raise ConfigError(f"system.render_chunk_rays must be >= 0 (0: one graph), got {cfg.render_chunk_rays}")
        guidance = to_container(cfg.guidance) or {}
        half = bool(guidance.get("half_precision_weights", False))
        if cfg.amp_level == "O2" and cfg.amp_dtype == "bfloat16":
            if half:  # _build_guidance casts the fp16 build to bfloat16: the fp16 request would be lost silently
                raise ConfigError("system.guidance.half_precision_weights=true (float16 UNet weights) conflicts "
                                  "with system.amp_level=O2 amp_dtype=bfloat16; remove half_precision_weights "
                                  "(O2 sets the UNet's dtype) or use amp_dtype=float16")
            check_precision("bfloat16", setting="system.amp_dtype=bfloat16 (system.amp_level=O2)",
                            instead="system.amp_dtype=float16 or system.amp_level=O0")
            return
        # O0, or O2 float16 (_linked_configs sets half_precision_weights): the model YAML's use_fp16 / use_bf16
        # count too. A missing YAML is left to _check_checkpoint, which names how to get it.
        o2 = cfg.amp_level == "O2"
        model_name = guidance.get("model_name") or Config.model_name
        path = guidance.get("config_path") or DEFAULT_MODEL_CONFIGS.get(model_name)
        unet_params = None
        if path and os.path.isfile(path):
            unet_params = (load_model_config(path).get("unet_config") or {}).get("params")
        try:
            dtype, setting = unet_precision(half or o2, unet_params)
        except GuidanceError as exc:
            where = "system.amp_level=O2 amp_dtype=float16 (float16 UNet weights)" if o2 else "system.guidance"
            raise ConfigError(f"{where}: {exc} ({path})") from None
        if o2:
            setting = "system.amp_dtype=float16 (system.amp_level=O2)"
        elif half:
            setting = f"system.guidance.{setting}"
        else:
            setting = f"{setting.replace('the model config', path)}"
        check_precision(dtype, setting=setting, instead=f"float32 (remove use_bf16 from {path}) or float16 "
                                                         f"(use_fp16: true there instead)")

    @staticmethod
    def _check_checkpoint(guidance_cls: type, g_cfg) -> None:
        """The frozen diffusion model must exist before anything is built (download + convert hint)."""
        check = getattr(guidance_cls, "check_files", None)
        if check is None:
            return
        try:
            check(g_cfg)
        except GuidanceError as exc:
            raise CheckpointError(str(exc)) from None

    @staticmethod
    def _text_embeddings(cls: type, pp_cfg):
        """(processor, its output); setup problems (tokenizer files) become one-line launch errors."""
        try:
            processor = cls(pp_cfg)
            return processor, processor()
        except PromptError as exc:
            raise ConfigError(str(exc)) from None
        except FileNotFoundError as exc:
            raise CheckpointError(str(exc)) from None

    def _build_guidance(self, cls: type, g_cfg):
        guidance = cls.from_config(g_cfg) if hasattr(cls, "from_config") else cls(g_cfg)
        if self.cfg.amp_level == "O2" and self.cfg.amp_dtype == "bfloat16":
            # half_precision_weights gives fp16; bf16 keeps fp32's exponent range (Ascend)
            guidance.set_weights_dtype(ms.bfloat16)
        return guidance

    def recompute_cells(self) -> list:
        """The 3D field's cells and the diffusion model's."""
        return super().recompute_cells() + [self.guidance.vae, self.guidance.unet]

    # ----- per-step host work

    def extra_state(self):
        """The compaction bucket of the next step, so a resumed run evaluates the same buffers."""
        return {}, {"compaction_bucket": self._bucket_index}

    def load_extra_state(self, arrays, meta) -> None:
        super().load_extra_state(arrays, {k: v for k, v in meta.items() if k != "compaction_bucket"})
        self._bucket_index = int(meta.get("compaction_bucket", self._bucket_index))

    def loss_weight_values(self) -> np.ndarray:
        return np.array([float(self.C(self.loss_weights[t])) for t in LOSS_TERMS], np.float32)

    def draw_step_inputs(self, batch: dict) -> dict:
        """Every input of one training step as numpy arrays, plus the shading mode (a str).

        The order of the draws from self.rng is fixed: jitter, background, shading, guidance.
        """
        rays_o = np.asarray(batch["rays_o"], np.float32)
        b, h, w, _ = rays_o.shape
        jitter = self.rng.random((b, h, w, self.renderer.jitter_samples), dtype=np.float32)
        bg_color, bg_mask = self.draw_background(b)
        shading = self.material.draw_shading(self.rng, training=True)
        ambient, diffuse = self.light_colors(shading)
        g = self.guidance.sample_inputs(self.rng, b)
        text = self.prompt_output.get_text_embeddings(
            batch["elevation"], batch["azimuth"], batch.get("camera_distances"),
            view_dependent_prompting=bool(getattr(self.guidance.cfg, "view_dependent_prompting", False)))
        return {"shading": shading["shading"], "rays_o": rays_o, "rays_d": np.asarray(batch["rays_d"], np.float32),
                "light_positions": np.asarray(batch["light_positions"], np.float32),
                "c2w": np.asarray(batch["c2w"], np.float32), "jitter": jitter, "bg_color": bg_color,
                "bg_mask": bg_mask, "ambient_color": ambient, "diffuse_color": diffuse,
                "text_embeddings": text, "t": g["t"], "noise": g["noise"], "vae_noise": g["vae_noise"],
                "loss_weights": self.loss_weight_values()}

    # ----- the step (graph part)

    STEP_INPUTS = ("rays_o", "rays_d", "light_positions", "c2w", "jitter", "bg_color", "bg_mask", "ambient_color",
                   "diffuse_color", "text_embeddings", "t", "noise", "vae_noise", "loss_weights")

    def forward(self, shading, rays_o, rays_d, light_positions, c2w, jitter, bg_color, bg_mask, ambient_color,
                diffuse_color, text_embeddings, t, noise, vae_noise, loss_weights):
        """-> (loss, aux (7,)): aux = [loss, sds, orient, sparsity, opaque, z_variance, guidance grad norm]."""
        out = self.renderer(rays_o, rays_d, light_positions, jitter, None, shading, ambient_color, diffuse_color)
        rgb = composite_background(out, bg_color, bg_mask)
        loss_sds, grad_norm = self.guidance(rgb, c2w, text_embeddings, t, noise, vae_noise)
        terms = [loss_sds] + regularizer_losses(out, self.loss_active)
        loss = terms[0] * loss_weights[0]
        for i in range(1, len(terms)):
            loss = loss + terms[i] * loss_weights[i]
        aux = ops.stack([loss] + terms + [grad_norm])
        return loss, aux

    def _step_fn(self, shading: str):
        """The compiled (or PyNative) step for one shading mode, built on first use."""
        if shading not in self._steps:
            def forward_fn(*inputs):
                return self.forward(shading, *inputs)
            self._steps[shading] = self.make_train_step(forward_fn)
        return self._steps[shading]

    # ----- the step with deferred backpropagation (render_chunk_rays > 0)

    def chunk_maps(self, shading, bucket, rays_o, rays_d, light_positions, jitter, ambient_color, diffuse_color,
                   valid):
        """One chunk of flat rays (C,...) -> (maps (C, 8) stacked in DEFERRED_MAPS order, orient sum over the
        chunk's valid rays, occupied sample counts (2,)); `valid` (C,) is 0 for the rays that pad the last chunk;
        bucket: the renderer's compaction buffer sizes ((0, 0): dense)."""
        out = self.renderer.render_ray_chunk(rays_o, rays_d, light_positions, jitter, None, shading, ambient_color,
                                             diffuse_color, bucket)
        maps = ops.concat([out[key] for key, _ in DEFERRED_MAPS], -1)
        if not self.loss_active["orient"]:
            return maps, ops.zeros((), ms.float32), out["occupied"]
        n = rays_o.shape[0]
        weights = (out["weights"].reshape(n, -1) * valid.reshape(n, 1)).reshape(-1, 1)
        return maps, orient_sum(weights, out["normal"], out["t_dirs"]), out["occupied"]

    def maps_objective(self, maps, bg_color, bg_mask, d_rgb, loss_sds, grad_norm, loss_weights, orient_total):
        """The image-level part of forward()'s loss as a function of the stacked maps (B,H,W,8), given the
        guidance's gradient d loss_sds / d rgb -> (surrogate, aux (8,)). The surrogate's gradient w.r.t. the maps
        is that of the weighted loss without its orient term (whose gradient comes from the chunk pass); aux is
        forward()'s plus the orient weight / lit-pixel count, the factor of the orient sum in the chunk pass."""
        out = split_maps(maps)
        rgb = composite_background(out, bg_color, bg_mask)
        count = lit_pixel_count(out["opacity"])
        terms = [loss_sds, orient_total / count] + image_regularizers(out, self.loss_active)
        loss = terms[0] * loss_weights[0]
        surrogate = (rgb * d_rgb).sum() * loss_weights[0]
        for i in range(1, len(terms)):
            loss = loss + terms[i] * loss_weights[i]
            if i >= 2:
                surrogate = surrogate + terms[i] * loss_weights[i]
        return surrogate, ops.stack([loss] + terms + [grad_norm, loss_weights[1] / count])

    def _chunk_fns(self, shading: str, bucket: tuple) -> dict:
        """The per-chunk pieces of a deferred step for one shading mode and compaction bucket, built on first use:
        render (no graph) and accumulate (the chunk's parameter gradients added to the running sum)."""
        key = ("chunk", shading, bucket)
        if key in self._steps:
            return self._steps[key]
        if self.optimizer is None:
            self.configure_optimizers()
        compile_fn = ms.jit if ms.get_context("mode") == ms.GRAPH_MODE else (lambda fn: fn)

        def render(*chunk):
            maps, osum, occupied = self.chunk_maps(shading, bucket, *chunk)
            return ops.stop_gradient(maps), ops.stop_gradient(osum), occupied

        def chunk_objective(rays_o, rays_d, light_positions, jitter, ambient, diffuse, valid, d_maps, orient_scale):
            maps, osum, _ = self.chunk_maps(shading, bucket, rays_o, rays_d, light_positions, jitter, ambient,
                                            diffuse, valid)
            return (maps * d_maps).sum() + orient_scale * osum

        chunk_grad = ms.grad(chunk_objective, None, self.optimizer.parameters)

        def accumulate(acc, *chunk):
            return tuple(a + g for a, g in zip(acc, chunk_grad(*chunk)))

        self._steps[key] = {"render": compile_fn(render), "accumulate": compile_fn(accumulate)}
        return self._steps[key]

    def _deferred_fns(self) -> dict:
        """The image-level pieces of a deferred step, built on first use: rgb (composite), encode (VAE, no
        gradient), latent_grad (the guidance loss and its gradient w.r.t. the latents; the UNet runs without
        gradient), encode_vjp (d rgb from d latents, one view at a time), maps_grad (d loss / d maps) and
        update (the optimizer). The VAE runs one view at a time, so its activations are one view's."""
        key = "deferred"
        if key in self._steps:
            return self._steps[key]
        if self.optimizer is None:
            self.configure_optimizers()
        opt, clip, scale = self.optimizer, self.cfg.grad_clip, float(self.cfg.loss_scale)
        compile_fn = ms.jit if ms.get_context("mode") == ms.GRAPH_MODE else (lambda fn: fn)
        guidance_compile = (lambda fn: fn) if self._eager_guidance() else compile_fn
        guidance = self.guidance

        def rgb(maps, bg_color, bg_mask):
            return ops.stop_gradient(composite_background(split_maps(maps), bg_color, bg_mask))

        def encode(rgb_view, vae_noise):
            return ops.stop_gradient(guidance.encode_images(rgb_view, vae_noise))

        def encode_projection(rgb_view, vae_noise, d_latents):
            return (guidance.encode_images(rgb_view, vae_noise) * d_latents).sum()

        def scaled_maps_objective(*inputs):
            surrogate, aux = self.maps_objective(*inputs)
            return surrogate * scale, aux

        def latent_grad(latents, c2w, text_embeddings, t, noise):
            # the surrogate's gradient in closed form, so the UNet never runs under a gradient tape (in PyNative a
            # value_and_grad call kept the UNet's activations: out of memory at stage 1 of mvdream-sd21.yaml)
            grad, grad_norm = guidance.distillation_grad(latents, c2w, text_embeddings, t, noise)
            b = latents.shape[0]
            d_latents = (latents - ops.stop_gradient(latents - grad)) / b
            return (surrogate_loss(latents, grad, b), grad_norm), d_latents

        def update(grads, loss):
            return apply_gradients(opt, grads, loss, clip, scale)

        self._steps[key] = {
            "rgb": compile_fn(rgb), "encode": guidance_compile(encode),
            "latent_grad": guidance_compile(latent_grad),
            "encode_vjp": guidance_compile(ms.grad(encode_projection, 0)),
            "maps_grad": compile_fn(ms.value_and_grad(scaled_maps_objective, 0, None, has_aux=True)),
            "update": compile_fn(update)}
        return self._steps[key]

    def _eager_guidance(self) -> bool:
        if self.cfg.guidance_graph is None:
            return ms.get_context("device_target") == "CPU"
        return not self.cfg.guidance_graph

    @contextlib.contextmanager
    def _guidance_mode(self):
        """PyNative while the guidance pass runs eagerly in a GRAPH-mode process (restored afterwards)."""
        mode = ms.get_context("mode")
        switch = self._eager_guidance() and mode != ms.PYNATIVE_MODE
        if switch:
            ms.set_context(mode=ms.PYNATIVE_MODE)
        try:
            yield
        finally:
            if switch:
                ms.set_context(mode=mode)

    def _image_pass(self, inputs: dict, maps: np.ndarray, orient_total) -> tuple:
        """d loss / d maps for the stacked maps (B,H,W,8): the guidance's gradient through the VAE one view at a
        time, then through the compositing and the image regularisers -> (aux, d_maps (B,H,W,8), scaled)."""
        fns = self._deferred_fns()
        x = {k: ms.Tensor(inputs[k]) for k in ("bg_color", "bg_mask", "c2w", "text_embeddings", "t", "noise",
                                                "vae_noise", "loss_weights")}
        maps = ms.Tensor(maps)
        rgb = fns["rgb"](maps, x["bg_color"], x["bg_mask"])
        views = range(rgb.shape[0])
        with self._guidance_mode():
            latents = ops.concat([fns["encode"](rgb[i:i + 1], x["vae_noise"][i:i + 1]) for i in views], 0)
            (loss_sds, grad_norm), d_latents = fns["latent_grad"](latents, x["c2w"], x["text_embeddings"], x["t"],
                                                                   x["noise"])
            d_rgb = ops.concat([fns["encode_vjp"](rgb[i:i + 1], x["vae_noise"][i:i + 1], d_latents[i:i + 1])
                                for i in views], 0)
        (_, aux), d_maps = fns["maps_grad"](maps, x["bg_color"], x["bg_mask"], d_rgb, loss_sds, grad_norm,
                                            x["loss_weights"], ms.Tensor(orient_total))
        return aux.asnumpy(), d_maps.asnumpy()

    def _bucket(self, index: int) -> tuple:
        """Compaction buffer sizes (fine, coarse) of bucket `index` for one ray chunk; (0, 0) when off."""
        fractions = self.renderer.cfg.compaction_buckets
        if not fractions:
            return 0, 0
        return self.renderer.bucket_sizes(int(self.cfg.render_chunk_rays), float(fractions[index]))

    def _smallest_bucket(self, occupied: np.ndarray, headroom: float = 1.0) -> int:
        """The first bucket whose buffers hold the most occupied samples (fine, coarse) of any chunk, times
        `headroom`."""
        for i in range(len(self.renderer.cfg.compaction_buckets)):
            if np.all(np.ceil(occupied * headroom) <= np.asarray(self._bucket(i))):
                return i
        return len(self.renderer.cfg.compaction_buckets) - 1

    def _render_chunks(self, shading: str, chunks: list) -> tuple:
        """The no-graph render pass: every chunk in the current bucket; when a chunk's occupied samples overflow
        it, all chunks again in the smallest bucket that holds them (nothing is dropped). Picks the next step's
        bucket. -> (maps per chunk, orient sum, occupied counts per chunk (n_chunks, 2), the bucket used)."""
        index = self._bucket_index
        while True:
            fns = self._chunk_fns(shading, self._bucket(index))
            results = [[x.asnumpy() for x in fns["render"](*args)] for args, _ in chunks]
            occupied = np.stack([r[2] for r in results])
            needed = self._smallest_bucket(occupied.max(0)) if self.renderer.cfg.compaction_buckets else index
            if needed <= index:
                break
            if not self._overflow_reported:  # once: it recurs while the object grows (metrics: rerendered)
                print(f"[compaction] {int(occupied.max(0)[0])} occupied samples (coarse {int(occupied.max(0)[1])}) "
                      f"in a chunk overflow the buffer of {self._bucket(index)}; rendering again with "
                      f"{self._bucket(needed)} (this happens while the object grows; counted in metrics.csv as "
                      "'rerendered')", flush=True)
                self._overflow_reported = True
            self._rerendered = 1.0
            index = needed
        # the next step's bucket leaves room for the object to grow, so overflows (a second render) stay rare
        if self.renderer.cfg.compaction_buckets:
            self._bucket_index = self._smallest_bucket(occupied.max(0), BUCKET_HEADROOM)
        maps = [r[0] for r in results]
        return maps, np.float32(sum(r[1] for r in results)), occupied, index

    def _ray_chunks(self, inputs: dict, shuffle: bool = True) -> tuple:
        """The step's rays in chunks of render_chunk_rays, the last padded with copies of the last ray (valid 0)
        -> (chunks: [(renderer arguments, start)], per_ray: (B,H,W,k) -> (n + pad, k) in chunk order, ray_order:
        its inverse, (n + pad, k) -> (n, k)). `shuffle`: the rays in a fixed shuffled order, so each chunk samples
        the whole batch and its occupied samples stay near the mean; the compaction bucket, sized for the fullest
        chunk, then follows the mean rather than the chunks through the object's centre (image order: 1.9x the
        mean, tests/test_renderer_compaction.py)."""
        b, h, w, _ = inputs["rays_o"].shape
        n, chunk = b * h * w, int(self.cfg.render_chunk_rays)
        pad = (-n) % chunk
        order = np.random.default_rng(0).permutation(n + pad) if shuffle else np.arange(n + pad)

        def per_ray(x, fill=None):
            x = np.asarray(x, np.float32).reshape(n, -1)
            tail = np.repeat(x[-1:], pad, 0) if fill is None else np.full((pad, x.shape[1]), fill, np.float32)
            return np.concatenate([x, tail], 0)[order]

        def ray_order(x):
            out = np.empty_like(x)
            out[order] = x
            return out[:n]

        light = np.broadcast_to(inputs["light_positions"][:, None, :], (b, h * w, 3))
        rays = [per_ray(inputs["rays_o"]), per_ray(inputs["rays_d"]), per_ray(light), per_ray(inputs["jitter"])]
        colors = [ms.Tensor(inputs["ambient_color"]), ms.Tensor(inputs["diffuse_color"])]
        valid = per_ray(np.ones(n, np.float32), fill=0.0).reshape(-1)
        chunks = [([ms.Tensor(r[s:s + chunk]) for r in rays] + colors + [ms.Tensor(valid[s:s + chunk])], s)
                  for s in range(0, n + pad, chunk)]
        return chunks, per_ray, ray_order

    def _deferred_step(self, inputs: dict) -> tuple[np.ndarray, dict]:
        """Forward + backward + update in fixed chunks of render_chunk_rays rays -> (forward()'s aux, render
        metrics: fraction of samples occupied and fraction evaluated). Leaves the host seconds of its sections
        (render, image, backward, update) in `step_seconds`."""
        fns = self._deferred_fns()
        b, h, w, _ = inputs["rays_o"].shape
        chunk = int(self.cfg.render_chunk_rays)
        t0 = time.perf_counter()
        chunks, per_ray, ray_order = self._ray_chunks(inputs)
        self._rerendered = 0.0
        maps, orient_total, occupied, index = self._render_chunks(inputs["shading"], chunks)
        maps = ray_order(np.concatenate(maps, 0)).reshape(b, h, w, -1)
        t1 = time.perf_counter()
        aux, d_maps = self._image_pass(inputs, maps, orient_total)
        d_maps = per_ray(d_maps, fill=0.0)
        t2 = time.perf_counter()
        orient_scale = ms.Tensor(np.float32(aux[-1] * float(self.cfg.loss_scale)))
        grads = ms.mutable(tuple(ops.zeros_like(p) for p in self.optimizer.parameters))  # an input, not a constant
        accumulate = self._chunk_fns(inputs["shading"], self._bucket(index))["accumulate"]
        for args, s in chunks:
            grads = ms.mutable(accumulate(grads, *args, ms.Tensor(d_maps[s:s + chunk]), orient_scale))
        t3 = time.perf_counter()
        fns["update"](grads, ms.Tensor(np.float32(aux[0])))
        self.step_seconds = {"render": t1 - t0, "image": t2 - t1, "backward": t3 - t2,
                             "update": time.perf_counter() - t3}
        samples = len(chunks) * chunk * self.renderer.jitter_samples
        evaluated = self._bucket(index)[0] * len(chunks) if self.renderer.cfg.compaction_buckets else samples
        return aux[:-1], {"occupied_fraction": float(occupied[:, 0].sum()) / samples,
                          "evaluated_fraction": evaluated / samples, "rerendered": self._rerendered}

    def run_step(self, inputs: dict) -> dict[str, float]:
        """Forward + backward + AdamW update on inputs from draw_step_inputs; returns float metrics."""
        render_metrics = {}
        if self.cfg.render_chunk_rays > 0:
            aux, render_metrics = self._deferred_step(inputs)
        else:
            _, aux = self._step_fn(inputs["shading"])(*[ms.Tensor(inputs[k]) for k in self.STEP_INPUTS])
            aux = aux.asnumpy()
        metrics = {"loss": float(aux[0]), **render_metrics}
        metrics.update({f"loss_{t}": float(aux[1 + i]) for i, t in enumerate(LOSS_TERMS) if self.loss_active[t]})
        metrics["grad_norm_sds"] = float(aux[-1])
        metrics.update({f"lambda_{t}": float(w) for t, w in zip(LOSS_TERMS, inputs["loss_weights"])})
        metrics.update({"t": int(inputs["t"][0]), "min_step": self.guidance.min_step,
                        "max_step": self.guidance.max_step})
        return metrics

    def training_step(self, batch: dict, global_step: int) -> dict[str, float]:
        return self.run_step(self.draw_step_inputs(batch))
