"""Novel views from one image with a GeNVS model: an orbit sampled autoregressively (jfozard/genvs_unofficial
sample_ar.py), written as frames, mp4, gif and a contact sheet.

    python scripts/nvs.py --out outputs/nvs/orbit.mp4        # the shipped model (pretrained/demo-genvs) and example
    python scripts/nvs.py --ckpt outputs/demo-genvs/<trial>/save/it800-export --out outputs/nvs/orbit.mp4
    python scripts/nvs.py --image my.png --camera 20,0,2.2,40 --ckpt EXPORT --views 16 --sampler euler --steps 250
    python scripts/nvs.py --image data/genvs_scenes/scene_00999/rgb/000000.png --ckpt EXPORT     # SRN pose beside it

--ckpt: an export of `launch.py --config configs/demo-genvs.yaml --train` (save/it<step>-export/: model.ckpt and
config.yaml), loaded strictly; default: the shipped one, pretrained/demo-genvs. --image: RGB on white or RGBA
(composited on white), square, the model's size or an integer multiple of it (box-averaged down); without it,
examples/images/genvs_scene.png (see --write_example).
--camera: the input's camera as elevation,azimuth,distance[,fovy] in degrees (looking at the origin, z up), or a
pose file in the SRN layout (camera-to-world, OpenCV axes; inside an SRN object folder with its intrinsics).
Default: the pose beside an image of an SRN folder (<object>/rgb/<name>.png -> <object>/pose/<name>.txt), else the
procedural scenes' camera at their middle elevation: 15,0,2.2,40 (neutral/genvs/sampling.py DEFAULT_CAMERA).

The orbit: --views cameras 360 / views degrees apart about the world's z axis through the input camera; view 0 is
the input, views 1 .. N-1 are sampled in order. View n is conditioned on the feature render of (upstream's rule,
neutral/genvs/sampling.py conditioning_set): [input] for the first, [input, view 1] for the second, then the input,
up to 4 random earlier views and the last one (at most 6; --max_sources caps it; --single_view uses the input
alone). Each view: the EDM sampler (mindspore_impl/genvs/edm.py): Karras sigmas (rho 7) in [sigma_min, sigma_max]
(the model's training range, 0.03 and 50), Euler or Heun, churn S_churn with gamma = min(S_churn / steps,
sqrt 2 - 1) and s_noise 1.003. Upstream samples 250 Euler steps with S_churn = 0.4 x steps (gamma 0.4); the
defaults here are 40 Heun steps (79 denoiser calls per view) with the same gamma; --churn 0 is deterministic.

Writes, for --out DIR/NAME.mp4: NAME.mp4, NAME.gif (frames upscaled --scale times, nearest), NAME_sheet.png (row 1:
the input and the samples; row 2: the input and each view's feature render RGB, the regression baseline),
NAME_frames/view_NNN.png (the model's resolution) and NAME.json (cameras, conditioning sets, settings, times).

    python scripts/nvs.py --write_example examples/images/genvs_scene.png
renders the shipped example: procedural scene 0 of seed 2 (mindspore_impl/genvs/data/procedural_scenes.py; the
training scenes use seed 0) from DEFAULT_CAMERA at 32x32, supersampled 2x2, on white.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from neutral.errors import run_cli  # noqa: E402
from neutral.genvs.sampling import (DEFAULT_CAMERA, MAX_SOURCES, SHIPPED_MODEL, SamplingInputError,  # noqa: E402
                                    camera_from_pose_file, intrinsics_from_fovy, orbit_c2w, parse_camera,
                                    read_input_image, sources_label, srn_pose_for_image)

EXAMPLE_IMAGE = os.path.join(ROOT, "examples", "images", "genvs_scene.png")
EXAMPLE_SEED, EXAMPLE_INDEX, EXAMPLE_SIZE, EXAMPLE_SUPERSAMPLE = 2, 0, 32, 2
UPSTREAM_CHURN_GAMMA = 0.4  # k_pipeline.py: s_churn = 0.4 N, so gamma = min(0.4 N / N, sqrt 2 - 1) = 0.4


def example_image(size: int = EXAMPLE_SIZE) -> np.ndarray:
    """The shipped example: procedural scene EXAMPLE_INDEX of seed EXAMPLE_SEED seen from DEFAULT_CAMERA,
    (size, size, 3) float64 in [0, 1] on white."""
    from mindspore_impl.genvs.data import procedural_scenes as S
    scene = S.sample_scene(np.random.default_rng([EXAMPLE_SEED, EXAMPLE_INDEX]))
    out = S.render_scene(scene, DEFAULT_CAMERA.c2w()[None], DEFAULT_CAMERA.fovy, size, EXAMPLE_SUPERSAMPLE)
    return out["rgb"][0]


def write_example(path: str, size: int = EXAMPLE_SIZE) -> str:
    from mindspore_impl.core.media import save_image
    return save_image(path, example_image(size))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=None, help="input view (RGB on white or RGBA); default: the shipped example")
    ap.add_argument("--camera", default=None,
                    help="elevation,azimuth,distance[,fovy] in degrees, or an SRN pose file (default: see above)")
    ap.add_argument("--ckpt", default=SHIPPED_MODEL,
                    help=f"an exported GeNVS model: its folder or its model.ckpt (default: {SHIPPED_MODEL})")
    ap.add_argument("--out", default=os.path.join("outputs", "nvs", "orbit.mp4"), help="the video's path (.mp4)")
    ap.add_argument("--views", type=int, default=16, help="cameras on the orbit, the input's included")
    ap.add_argument("--sampler", choices=("euler", "heun"), default="heun")
    ap.add_argument("--steps", type=int, default=40, help="sampler steps per view (upstream: 250 Euler)")
    ap.add_argument("--churn", type=float, default=None,
                    help=f"S_churn (default {UPSTREAM_CHURN_GAMMA} x steps, upstream's; 0: deterministic)")
    ap.add_argument("--s_noise", type=float, default=1.003)
    ap.add_argument("--sigma_min", type=float, default=None, help="default: the model's (0.03)")
    ap.add_argument("--sigma_max", type=float, default=None, help="default: the model's (50)")
    ap.add_argument("--seed", type=int, default=0, help="noise of view n: Generator([seed, n - 1])")
    ap.add_argument("--cond_seed", type=int, default=123, help="random.Random seed of the conditioning picks "
                                                                "(upstream: random.seed(123))")
    ap.add_argument("--max_sources", type=int, default=MAX_SOURCES,
                    help=f"views per conditioning set (default {MAX_SOURCES}: input + 4 random + last)")
    ap.add_argument("--single_view", action="store_true", help="condition every view on the input alone")
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--scale", type=int, default=None, help="upscale of video and sheet (default: to >= 128 px)")
    ap.add_argument("--no_jit", action="store_true", help="run PyNative (no ms.jit compile)")
    ap.add_argument("--device", default="CPU", choices=["CPU", "Ascend", "GPU"])
    ap.add_argument("--write_example", metavar="PATH", default=None,
                    help="render the example input to PATH and exit")
    return ap.parse_args(argv)


def sampler_config(args, settings):
    """The EDM sampler of the arguments (model defaults for the sigma range); SamplingInputError when invalid."""
    from neutral.genvs.edm import EDMSamplerConfig, check_edm_sampler
    churn = UPSTREAM_CHURN_GAMMA * args.steps if args.churn is None else args.churn
    cfg = EDMSamplerConfig(steps=args.steps, solver=args.sampler, s_churn=float(churn), s_noise=args.s_noise,
                           sigma_min=settings.sigma_min if args.sigma_min is None else args.sigma_min,
                           sigma_max=settings.sigma_max if args.sigma_max is None else args.sigma_max,
                           sigma_data=settings.sigma_data)
    try:
        return check_edm_sampler(cfg)
    except ValueError as exc:
        raise SamplingInputError(f"sampler settings: {exc}") from None


def check_args(args) -> str:
    """Checks that need no model; returns the output stem (the --out path without .mp4)."""
    if args.views < 2:
        raise SamplingInputError(f"--views must be >= 2 (the input and at least one new view), got {args.views}")
    if args.steps < 1:
        raise SamplingInputError(f"--steps must be >= 1, got {args.steps}")
    if args.max_sources < 1:
        raise SamplingInputError(f"--max_sources must be >= 1, got {args.max_sources}")
    if args.fps < 1 or (args.scale is not None and args.scale < 1):
        raise SamplingInputError("--fps and --scale must be >= 1")
    stem, ext = os.path.splitext(args.out)
    if ext.lower() != ".mp4":
        raise SamplingInputError(f"--out {args.out!r} must name an .mp4 file (the gif, sheet and frames go beside it)")
    return stem


def input_camera(args, image_path: str, size: int):
    """(c2w (4, 4), intrinsics [fx, fy, cx, cy] in pixels of the size x size model image, description)."""
    pose = args.camera if args.camera is not None and os.path.splitext(args.camera)[1] == ".txt" else None
    if args.camera is None:
        pose = srn_pose_for_image(image_path)
    if pose is not None:
        c2w, k, height = camera_from_pose_file(pose)
        if k is None:
            return c2w, intrinsics_from_fovy(DEFAULT_CAMERA.fovy, size), f"pose {pose}, fovy {DEFAULT_CAMERA.fovy:g}"
        return c2w, k * (size / float(height)), f"pose {pose} with its object's intrinsics"
    cam = DEFAULT_CAMERA if args.camera is None else parse_camera(args.camera)
    what = "default" if args.camera is None else "--camera"
    return cam.c2w(), intrinsics_from_fovy(cam.fovy, size), (
        f"{what}: elevation {cam.elevation:g}, azimuth {cam.azimuth:g}, distance {cam.distance:g}, fovy {cam.fovy:g}")


def _upscale(img: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def run(args) -> int:
    if args.write_example:
        print(f"wrote {write_example(args.write_example)}")
        return 0
    stem = check_args(args)
    image_path = args.image or EXAMPLE_IMAGE
    from mindspore_impl.core.device import check_device
    check_device(args.device)
    from mindspore_impl.genvs.sampling import export_files, read_settings
    _, config_path = export_files(args.ckpt)  # a missing model fails before anything is read
    settings = read_settings(config_path)
    size = settings.image_size
    image = read_input_image(image_path, size)
    c2w0, intrinsics, camera_text = input_camera(args, image_path, size)
    sampler = sampler_config(args, settings)

    from mindspore_impl.core.device import setup
    from mindspore_impl.core.media import contact_sheet, save_image, save_video
    from mindspore_impl.genvs.sampling import NovelViewSampler, load_genvs
    setup(args.device, "pynative")
    start = time.time()
    model = load_genvs(args.ckpt)
    sampler_obj = NovelViewSampler(model, max_sources=args.max_sources, jit=not args.no_jit)
    compile_seconds = sampler_obj.warm_up()
    cameras = orbit_c2w(c2w0, args.views)
    t_sample = time.time()
    out = sampler_obj.run(image, c2w0, intrinsics, cameras[1:], sampler, seed=args.seed,
                          autoregressive=not args.single_view, cond_seed=args.cond_seed, progress=True,
                          desc="orbit")
    t_done = time.time()

    frames = [image] + list(out.samples)
    renders = [image] + list(out.renders)
    scale = args.scale or max(1, math.ceil(128 / size))
    frame_dir = stem + "_frames"
    os.makedirs(frame_dir, exist_ok=True)
    frame_paths = [save_image(os.path.join(frame_dir, f"view_{i:03d}.png"), f) for i, f in enumerate(frames)]
    videos = save_video([_upscale(f, scale) for f in frames], stem, fps=args.fps)
    sheet = save_image(stem + "_sheet.png", contact_sheet([[_upscale(f, scale) for f in frames],
                                                           [_upscale(r, scale) for r in renders]]))
    record = {
        "image": os.path.abspath(image_path), "ckpt": os.path.abspath(args.ckpt), "camera": camera_text,
        "intrinsics": [float(v) for v in intrinsics], "image_size": size, "views": args.views,
        "mode": "single_view" if args.single_view else "autoregressive", "max_sources": args.max_sources,
        "sampler": {"solver": sampler.solver, "steps": sampler.steps, "s_churn": sampler.s_churn,
                    "s_noise": sampler.s_noise, "sigma_min": sampler.sigma_min, "sigma_max": sampler.sigma_max,
                    "rho": sampler.rho},
        "seed": args.seed, "cond_seed": args.cond_seed,
        "cameras_c2w": cameras.tolist(), "sources": [[0]] + out.sources,
        "seconds": {"load_build_compile": round(t_sample - start, 3), "compile": round(compile_seconds, 3),
                    "sampling": round(t_done - t_sample, 3),
                    "per_view": round((t_done - t_sample) / (args.views - 1), 3)},
        "frames": frame_paths, "videos": videos, "sheet": sheet,
    }
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    sets = "; ".join(f"{i + 1}: [{sources_label(s)}]" for i, s in enumerate(out.sources))
    print(f"input {image_path} ({size}x{size}), camera {camera_text}")
    print(f"sampled {args.views - 1} views ({record['mode']}, {sampler.solver} {sampler.steps} steps, "
          f"S_churn {sampler.s_churn:g}, seed {args.seed}) in {t_done - t_sample:.1f} s "
          f"({record['seconds']['per_view']:.2f} s per view; before that, loading and compiling {t_sample - start:.1f} s)")
    print(f"conditioning sets (0 = input): {sets}")
    print(f"wrote {', '.join(videos)}, {sheet}, {len(frame_paths)} frames in {frame_dir}, {stem}.json "
          f"(total {time.time() - start:.1f} s)")
    return 0


def main(argv=None) -> int:
    """Raises UserError subclasses on bad input (`error: ...`, exit 2 from the command line)."""
    return run(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
