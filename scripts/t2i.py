"""MVDream text-to-multiview sampling (MindSpore), with the flags and defaults of the original
scripts/t2i.py: 50 DDIM steps, guidance 10, eta 0, 256 px, 4 views at elevation 15 starting at
azimuth 90 over 360 degrees, seed 23, prompt suffix ", 3d asset", 3 samples in one grid PNG.

    python scripts/t2i.py --text "an astronaut riding a horse" --ckpt mvdream-sd21.ckpt --tokenizer tokenizer/
    python scripts/t2i.py --text "a bulldozer" --num_frames 16 --sampler dpmpp2m --steps 20 ...
    python scripts/t2i.py --text "a bulldozer" --sampler unipc --unipc-order 2 --unipc-variant bh2 --steps 15 ...
    python scripts/t2i.py "a pink cube" --ckpt pretrained/demo/model.ckpt --lora lora.safetensors ...   # LoRA

Writes OUTDIR/grid.png (one row per sample, views left to right) and OUTDIR/sample{i}_view{j}.png.
--num_frames above 4 uses the sliding-window scheme (mindspore_impl/mvdream/sliding_window.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from neutral.mvdream.samplers import SAMPLERS, UNIPC_ORDERS, UNIPC_VARIANTS  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt_pos", nargs="?", default=None, metavar="PROMPT", help="prompt (or use --text)")
    ap.add_argument("--text", "--prompt", dest="text", default="an astronaut riding a horse")
    ap.add_argument("--negative_prompt", default="")
    ap.add_argument("--suffix", default=", 3d asset")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--num_frames", type=int, default=4, help="views to generate (any number)")
    ap.add_argument("--use_camera", type=int, default=1, help="0: independent views (same as --single_view)")
    ap.add_argument("--single_view", action="store_true", help="independent images, no camera (gradio mode)")
    ap.add_argument("--camera_elev", type=float, default=15)
    ap.add_argument("--camera_azim", type=float, default=90)
    ap.add_argument("--camera_azim_span", type=float, default=360)
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--sampler", choices=list(SAMPLERS), default="ddim",
                    help="ddim (eta allowed), dpmpp2m (DPM-Solver++ 2M) or unipc (UniPC multistep); the last two "
                         "are deterministic (--eta 0)")
    ap.add_argument("--karras", action="store_true", help="Karras sigmas for dpmpp2m and unipc")
    ap.add_argument("--unipc-order", "--unipc_order", dest="unipc_order", type=int, choices=list(UNIPC_ORDERS),
                    default=2, help="UniPC solver order (default 2); the last steps drop to lower orders")
    ap.add_argument("--unipc-variant", "--unipc_variant", dest="unipc_variant", choices=list(UNIPC_VARIANTS),
                    default="bh2", help="UniPC B(h): bh1 (B = h) or bh2 (B = e^h - 1, default)")
    ap.add_argument("--n_samples", type=int, default=3, help="rows of the grid (the original draws 3)")
    ap.add_argument("--window", type=int, default=3, help="sliding-window size when num_frames > 4")
    ap.add_argument("--windows_per_call", type=int, default=1,
                    help="sliding windows batched per UNet call (faster, memory x this)")
    ap.add_argument("--fp16", action="store_true", help="UNet weights in float16 (norms/softmax float32)")
    ap.add_argument("--ckpt", "--ckpt_path", dest="ckpt", default="mvdream-sd21.ckpt",
                    help="converted checkpoint (.ckpt or .safetensors)")
    ap.add_argument("--config", "--config_path", dest="config", default=os.path.join(ROOT, "configs", "sd-v2-base.yaml"))
    ap.add_argument("--tokenizer", default="tokenizer", help="folder with the CLIP BPE tokenizer files")
    ap.add_argument("--lora", default=None, metavar="PATH",
                    help="LoRA adapters (a run's lora.safetensors export) folded into the UNet before sampling")
    ap.add_argument("--outdir", default="outputs/t2i")
    ap.add_argument("--device", default="CPU", choices=["CPU", "Ascend", "GPU"])
    return ap.parse_args(argv)


def make_grid(rows: list[np.ndarray]) -> np.ndarray:
    """[n_samples of (F, H, W, 3)] -> (n_samples*H, F*W, 3)."""
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def check_args(args) -> None:
    """Every argument that can be checked before the model loads; one-line SamplingError otherwise."""
    from mindspore_impl.mvdream.pipeline import SamplingError, check_sampling_args

    if args.sampler != "ddim" and args.eta != 0.0:
        raise SamplingError(f"--eta must be 0 with --sampler {args.sampler} (a deterministic sampler), got {args.eta}")
    if args.n_samples < 1:
        raise SamplingError(f"--n_samples must be >= 1, got {args.n_samples}")
    if args.size < 1:
        raise SamplingError(f"--size must be a positive multiple of the model's downsampling factor, got {args.size}")
    check_sampling_args(1, args.num_frames, args.steps, args.scale, args.size, args.size, args.eta,
                        args.window if args.num_frames > 4 else None, args.windows_per_call, prefix="--")


def run(args) -> int:
    """Sample; raises UserError subclasses (printed as `error: ...`, exit 2, by main) on bad input."""
    check_args(args)
    from mindspore_impl.core.device import check_device
    check_device(args.device)
    from mindspore_impl.mvdream.pipeline import check_dtype, check_sampling_args, image_multiple
    from neutral.mvdream.model_config import load_model_config

    model_params = load_model_config(args.config)
    multiple = image_multiple(model_params)
    # the UNet dtype this device runs (core/device.py check_precision), before anything is loaded
    check_dtype("fp16" if args.fp16 else "fp32", model_params, device=args.device, setting="--fp16")
    check_sampling_args(multiple, args.num_frames, args.steps, args.scale, args.size, args.size, args.eta,
                        prefix="--")

    import imageio.v3 as iio

    from mindspore_impl.core.device import setup
    from mindspore_impl.mvdream.pipeline import MVDreamPipeline

    setup(args.device, "pynative")
    prompt = (args.prompt_pos if args.prompt_pos is not None else args.text) + args.suffix
    pipe = MVDreamPipeline.from_checkpoint(args.ckpt, args.config, args.tokenizer,
                                           dtype="fp16" if args.fp16 else "fp32", lora_path=args.lora)
    if args.lora:
        print(f"LoRA adapters {args.lora} folded into the UNet")
    rng = np.random.RandomState(args.seed)
    os.makedirs(args.outdir, exist_ok=True)
    rows = []
    for i in range(args.n_samples):
        t0 = time.time()
        images = pipe(prompt, args.negative_prompt, num_frames=args.num_frames, elevation=args.camera_elev,
                      azimuth_start=args.camera_azim, azimuth_span=args.camera_azim_span, steps=args.steps,
                      scale=args.scale, eta=args.eta, sampler=args.sampler, height=args.size, width=args.size,
                      single_view=args.single_view or not args.use_camera, karras=args.karras,
                      window=args.window, windows_per_call=args.windows_per_call, rng=rng,
                      progress=True, unipc_order=args.unipc_order, unipc_variant=args.unipc_variant)
        print(f"sample {i}: {len(images)} views in {time.time() - t0:.1f}s")
        for j, img in enumerate(images):
            iio.imwrite(os.path.join(args.outdir, f"sample{i}_view{j}.png"), img)
        rows.append(images)
    grid_path = os.path.join(args.outdir, "grid.png")
    iio.imwrite(grid_path, make_grid(rows))
    print(f"wrote {grid_path}")
    return 0


def main(argv=None) -> int:
    """The exit code: 0, or 2 after one line `error: ...` on stderr for bad input (argparse errors exit 2 too)."""
    from neutral.errors import report
    return report(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
