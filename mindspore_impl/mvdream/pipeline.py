"""Text-to-multiview images with MVDream in MindSpore: prompt -> F views (uint8, F x H x W x 3).

    pipe = MVDreamPipeline.from_checkpoint("mvdream-sd21.ckpt", "configs/sd-v2-base.yaml", "tokenizer/")
    images = pipe("an astronaut riding a horse, 3d asset", num_frames=4, steps=50, scale=10, seed=23)

Up to `joint_views` (4, what the model was trained with) views attend to each other jointly in one
UNet call; more views use the sliding-window scheme of sliding_window.py, so any num_frames works
with memory bounded by the window.
"""
from __future__ import annotations

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import ops

from mindspore_impl.mvdream import loading, samplers
from mindspore_impl.mvdream.cameras import get_camera
from mindspore_impl.mvdream.schedule import schedule_from_config
from mindspore_impl.mvdream.sliding_window import DEFAULT_WINDOW, sliding_window_eps_fn
from neutral.errors import UserError
from neutral.mvdream.model_config import load_model_config
from neutral.mvdream.tokenizer import require_tokenizer

_DTYPES = {"fp32": ms.float32, "float32": ms.float32, "fp16": ms.float16, "float16": ms.float16}


def _check_dtype(dtype: str) -> None:
    if dtype not in _DTYPES:
        raise SamplingError(f"dtype must be fp32 or fp16, got {dtype!r}")


def check_dtype(dtype: str, model_params: Optional[dict] = None, device: Optional[str] = None,
                setting: Optional[str] = None) -> str:
    """Before any model is built: a known dtype name, no clash with the model YAML's use_bf16, and a UNet
    dtype the device runs (mindspore_impl/core/device.py check_precision, the one device rule). Returns the
    UNet's dtype (float32 / float16 / bfloat16). device None: the current target; setting: how the user asked
    (scripts/t2i.py passes "--fp16")."""
    from mindspore_impl.core.device import check_precision
    _check_dtype(dtype)
    unet = dict((model_params or {}).get("unet_config", {}).get("params") or {})
    if _DTYPES[dtype] == ms.float16:
        if unet.get("use_bf16"):  # build passes use_fp16=True: the UNet would get both
            raise SamplingError(f"{setting or f'dtype={dtype!r}'} (float16 UNet weights) conflicts with use_bf16: "
                                f"true in the model config; drop one")
        return check_precision("float16", device, setting or f"dtype={dtype!r}")
    # fp32 passes use_fp16=False, which overrides the YAML's use_fp16 but not its use_bf16
    if unet.get("use_bf16"):
        return check_precision("bfloat16", device, "use_bf16: true in the model config (unet_config.params)",
                               instead="float32 (remove use_bf16) or float16 (--fp16 / dtype='fp16')")
    return "float32"


def latent_downsample(first_stage_entry: dict) -> int:
    """Pixels per latent cell: 2 ** (levels - 1) of the VAE (8 for SD); 1 in pixel space (target identity)."""
    from mindspore_impl.mvdream.first_stage import downsample_of
    return downsample_of(first_stage_entry)


class SamplingError(UserError, ValueError):
    """Sampling arguments the model cannot run with (sizes, step counts, guidance scale)."""


def image_multiple(model_params: dict) -> int:
    """Image height/width must be multiples of this: the VAE's downsampling times the UNet's (one factor 2
    per level but the last), else the UNet's skip connections do not line up."""
    levels = len(model_params["unet_config"]["params"].get("channel_mult", (1, 2, 4, 8)))
    return latent_downsample(model_params["first_stage_config"]) * 2 ** (levels - 1)


def check_sampling_args(multiple: int, num_frames: int = 4, steps: int = 50, scale: float = 10.0,
                        height: int = 256, width: int = 256, eta: float = 0.0, window: Optional[int] = None,
                        windows_per_call: int = 1, prefix: str = "") -> None:
    """SamplingError (one line, naming the argument and valid values) before any sampling work.
    `prefix` is put before argument names ("--" for the t2i command line)."""
    import math

    def bad(name, msg):
        raise SamplingError(f"{prefix}{name} {msg}")

    if num_frames < 1:
        bad("num_frames", f"must be >= 1, got {num_frames}")
    if steps < 1:
        bad("steps", f"must be >= 1, got {steps}")
    if not math.isfinite(scale) or scale < 0:
        bad("scale", f"must be a finite number >= 0 (1: no classifier-free guidance), got {scale}")
    if not math.isfinite(eta) or not 0.0 <= eta <= 1.0:
        bad("eta", f"must be in [0, 1], got {eta}")
    for name, size in (("height", height), ("width", width)):
        if size < 1 or size % multiple:
            lo = max(multiple, size // multiple * multiple)
            near = sorted({lo, lo + multiple} if size % multiple else {multiple})
            label = "size" if prefix and height == width else name
            bad(label, f"must be a positive multiple of {multiple} (the model downsamples by {multiple}), "
                       f"got {size}; use {' or '.join(map(str, near))}")
    if window is not None and window < 1:
        bad("window", f"must be >= 1, got {window}")
    if windows_per_call < 1:
        bad("windows_per_call", f"must be >= 1, got {windows_per_call}")


class _UNetCall(ms.nn.Cell):
    """The UNet with num_frames positional: the function MVDreamPipeline.compile hands to ms.jit."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def construct(self, x, t, context, camera, num_frames):
        return self.unet(x, t, context, camera, num_frames=num_frames)


class MVDreamPipeline:
    """Holds the UNet, VAE, text encoder and tokenizer; see the module docstring."""

    def __init__(self, unet, vae, text_encoder, tokenizer, model_params: dict, dtype: str = "fp32"):
        _check_dtype(dtype)
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.alphas_cumprod = schedule_from_config(model_params)
        self.scale_factor = float(model_params.get("scale_factor", 0.18215))
        self.downsample = latent_downsample(model_params["first_stage_config"])
        self.image_multiple = image_multiple(model_params)
        # pixel space: x0 predictions are images in [-1, 1] (times scale_factor); clip them while sampling
        from mindspore_impl.mvdream.first_stage import is_identity
        self.clip_x0 = self.scale_factor if is_identity(model_params["first_stage_config"]) else None
        self.latent_channels = int(model_params["unet_config"]["params"].get("in_channels", 4))
        self.dtype = _DTYPES[dtype]
        for cell in (unet, vae, text_encoder):
            cell.set_train(False)
        self._compiled_unet = None

    def compile(self) -> "MVDreamPipeline":
        """Run the UNet as a compiled graph (ms.jit): one compile per batch size and view count, then ~8x faster
        steps than PyNative for the small demo model on CPU. Returns self."""
        self._compiled_unet = ms.jit(_UNetCall(self.unet).construct)
        return self

    # ------------------------------------------------------------------ loading
    @classmethod
    def build(cls, model_params: dict, tokenizer, dtype: str = "fp32") -> "MVDreamPipeline":
        """Models with fresh (random) weights from an original config's model.params (loading.build_models).

        fp16 puts the UNet's Dense/Conv weights in float16 (its use_fp16 switch: norms and softmax
        stay float32); the VAE and text encoder, run once per image, stay float32.
        """
        check_dtype(dtype, model_params)
        models = loading.build_models(model_params, use_fp16=_DTYPES[dtype] == ms.float16)
        return cls(models["unet"], models["vae"], models["text_encoder"], tokenizer, model_params, dtype)

    @classmethod
    def from_checkpoint(cls, ckpt_path: str, config_path: str, tokenizer_dir: str,
                        dtype: str = "fp32", lora_path: Optional[str] = None) -> "MVDreamPipeline":
        """Load a converted MVDream checkpoint (.ckpt / .safetensors, MindSpore names) strictly (loading.py).

        Checked in this order, before any model is built: the checkpoint file, the adapter file (lora_path:
        LoRA adapters from mvdream/lora.py, folded into the UNet), the tokenizer, the model YAML, the dtype on
        this device (check_dtype)."""
        _check_dtype(dtype)
        loading.check_checkpoint_file(ckpt_path)
        if lora_path is not None:
            from mindspore_impl.mvdream.lora import read_lora
            read_lora(lora_path)
        tokenizer = require_tokenizer(tokenizer_dir)
        model_params = load_model_config(config_path)
        check_dtype(dtype, model_params)
        models = loading.load_models(ckpt_path, model_params, use_fp16=_DTYPES[dtype] == ms.float16)
        pipe = cls(models["unet"], models["vae"], models["text_encoder"], tokenizer, model_params, dtype)
        if lora_path is not None:
            pipe.load_lora(lora_path)
        return pipe

    def load_lora(self, path: str) -> dict:
        """Fold the LoRA adapters of `path` into the UNet's weights (mvdream/lora.py load_lora); before
        compile(). Returns the file's record (mode, rank, alpha, base_checkpoint, ...)."""
        from mindspore_impl.mvdream.lora import load_lora
        return load_lora(self.unet, path)

    # ------------------------------------------------------------------ pieces
    def encode_text(self, prompts: list[str]):
        """[B] prompts -> [B, 77, C] float32 embeddings (penultimate OpenCLIP layer)."""
        tokens = ms.Tensor(np.asarray(self.tokenizer(prompts), dtype=np.int32))
        return self.text_encoder(tokens).astype(ms.float32)

    def model_fn(self, x, t, context, camera, num_frames: int):
        """UNet eps (float32; the UNet casts its inputs to its own dtype)."""
        if self._compiled_unet is not None:
            return self._compiled_unet(x, t, context, camera, num_frames)
        return self.unet(x, t, context, camera, num_frames=num_frames)

    def decode(self, latents, batch: int = 4) -> np.ndarray:
        """(F, 4, h, w) latents -> uint8 (F, H, W, 3), decoded `batch` views at a time."""
        out = []
        for i in range(0, latents.shape[0], batch):
            img = self.vae.decode(latents[i:i + batch] / self.scale_factor).asnumpy()
            img = np.clip((img + 1.0) / 2.0, 0.0, 1.0)
            out.append((255.0 * img.transpose(0, 2, 3, 1)).astype(np.uint8))
        return np.concatenate(out, 0)

    def eps_fn(self, context, uncontext, camera, num_frames: int, scale: float, single_view: bool,
               joint_views: int, window: Optional[int], windows_per_call: int):
        """The guided eps over all views: joint (<= joint_views), independent, or sliding window."""
        if single_view:
            rep = lambda c: ops.tile(c, (num_frames, 1, 1))  # noqa: E731
            return samplers.guided_eps_fn(self.model_fn, rep(context), rep(uncontext), scale, None, 1)
        if num_frames <= joint_views:
            rep = lambda c: ops.tile(c, (num_frames, 1, 1))  # noqa: E731
            return samplers.guided_eps_fn(self.model_fn, rep(context), rep(uncontext), scale, camera, num_frames)
        return sliding_window_eps_fn(self.model_fn, context, uncontext, camera, scale, window, windows_per_call)

    # ------------------------------------------------------------------ sampling
    def __call__(self, prompt: str, negative_prompt: str = "", num_frames: int = 4, elevation: float = 15,
                 azimuth_start: float = 90, azimuth_span: float = 360, steps: int = 50, scale: float = 10.0,
                 eta: float = 0.0, sampler: str = "ddim", seed: int = 23, height: int = 256, width: int = 256,
                 single_view: bool = False, karras: bool = False, joint_views: int = 4,
                 window: Optional[int] = DEFAULT_WINDOW, windows_per_call: int = 1,
                 rng: Optional[np.random.RandomState] = None, progress: bool = False,
                 return_latents: bool = False, unipc_order: int = 2, unipc_variant: str = "bh2",
                 camera: Optional[np.ndarray] = None):
        """-> uint8 images (num_frames, height, width, 3) (and the latents if asked).

        The start noise and the DDIM eta noise come from `rng` (default RandomState(seed)).
        single_view: every view is an independent image (no camera, num_frames 1 per image).
        camera: (num_frames, 16) camera conditions to use instead of the orbit from elevation / azimuth_* (for
        example `normalize_camera(c2w)` of renderer cameras, what the SDS guidance feeds the model).
        unipc_order (1-3) / unipc_variant ("bh1", "bh2"): UniPC's; karras: Karras sigmas for dpmpp2m and unipc.
        """
        check_sampling_args(self.image_multiple, num_frames, steps, scale, height, width, eta,
                            window if num_frames > joint_views and not single_view else None, windows_per_call)
        if camera is not None and tuple(np.shape(camera)) != (num_frames, 16):
            raise SamplingError(f"camera must be ({num_frames}, 16) for {num_frames} views, got {np.shape(camera)}")
        f = self.downsample
        rng = np.random.RandomState(seed) if rng is None else rng
        context = self.encode_text([prompt])
        uncontext = self.encode_text([negative_prompt])
        if single_view:
            camera = None
        elif camera is None:
            camera = ms.Tensor(get_camera(num_frames, elevation, azimuth_start, azimuth_span))
        else:
            camera = ms.Tensor(np.asarray(camera, dtype=np.float32))
        eps_fn = self.eps_fn(context, uncontext, camera, num_frames, scale, single_view, joint_views,
                             window, windows_per_call)
        shape = (num_frames, self.latent_channels, height // f, width // f)
        x_T = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        latents = samplers.sample(sampler, eps_fn, x_T, self.alphas_cumprod, steps, eta=eta, rng=rng,
                                  karras=karras, progress=progress, clip_x0=self.clip_x0, order=unipc_order,
                                  variant=unipc_variant)
        images = self.decode(latents)
        return (images, latents) if return_latents else images
