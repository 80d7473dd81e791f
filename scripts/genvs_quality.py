"""GeNVS quality, measured: PSNR, SSIM and silhouette IoU of novel views against the ground truth on held-out
scenes of an SRN folder, for the denoiser's samples (single-view and autoregressive) and the feature render's RGB
(the regression baseline).

    python scripts/genvs_quality.py --data data/genvs_scenes --objects 8     # the shipped model (pretrained/demo-genvs)
    python scripts/genvs_quality.py --ckpt outputs/demo-genvs/<trial>/save/it800-export --data data/genvs_scenes \
        --objects 8 --out outputs/genvs_quality/demo.json

Objects: the last --objects object folders of --data (sorted by name): the ones the data module holds out when
data.val_objects is at least that many (configs/demo-genvs.yaml holds out 8). Per object, view 0 (file order) is
the input and every other view a target, scored at the model's resolution (images of an integer multiple of it
are box-averaged down, as the data module does):
- "sample, single view": the EDM sample of each target conditioned on the feature render from the input alone;
- "sample, autoregressive": the targets sampled in file order, each conditioned on the input, up to 4 random
  earlier samples and the last one (neutral/genvs/sampling.py conditioning_set, upstream's rule);
- "feature render RGB": the render's first 3 channels from the input alone, upsampled x2 (nearest): what the
  denoiser is conditioned on, a regression to the mean view;
- "blank white image": a reference, not a method: the scenes are small objects on white, so an image that draws
  nothing already scores about 15 dB PSNR (and silhouette IoU 0).
Target t gets the same noise (Generator([seed, t])) in both sampled rows; the sampler is scripts/nvs.py's
(--sampler, --steps, --churn; default 40 Heun steps with upstream's churn gamma 0.4).

Metrics (images in [0, 1]): PSNR (dB) from the MSE over pixels and channels; SSIM of Wang et al. 2004 with an
11 x 11 Gaussian window of sigma 1.5, K1 0.01, K2 0.03, per channel then averaged (scikit-image's
structural_similarity with gaussian_weights, use_sample_covariance False, as in the paper); silhouette IoU of the
foregrounds, a pixel being foreground when some channel is below 1 - --white_tol (the scenes are on white; the
sampled backgrounds are noisy, hence a tolerance of 0.1 rather than the data's 2/255). Means over all scored views.

Prints a markdown table and writes JSON (settings, the table, per-object and per-view numbers) and, per object, a
contact sheet beside it (rows: ground truth, single-view samples, autoregressive samples, feature renders).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from neutral.errors import run_cli  # noqa: E402
from neutral.genvs.sampling import MAX_SOURCES, SHIPPED_MODEL, SamplingInputError, foreground_mask  # noqa: E402

METHODS = (("single", "sample, single view"), ("autoregressive", "sample, autoregressive"),
           ("render", "feature render RGB (regression)"), ("white", "blank white image (reference)"))
SSIM_WINDOW_SIGMA = 1.5  # Wang et al.: an 11 x 11 Gaussian window (scikit-image: 2 * int(3.5 sigma + 0.5) + 1)


# ----------------------------------------------------------------------------- metrics


def psnr(image: np.ndarray, target: np.ndarray) -> float:
    """PSNR (dB) of images in [0, 1] (capped at 100 dB for identical images)."""
    mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(target, np.float64)) ** 2))
    return min(100.0, -10.0 * np.log10(max(mse, 1e-10)))


def ssim(image: np.ndarray, target: np.ndarray) -> float:
    """SSIM of (H, W, 3) images in [0, 1] (Gaussian 11 x 11 window, sigma 1.5; mean over channels)."""
    from skimage.metrics import structural_similarity
    a, b = np.asarray(image, np.float64), np.asarray(target, np.float64)
    if min(a.shape[:2]) < 11:
        raise SamplingInputError(f"SSIM needs images of at least 11x11 pixels (its window), got {a.shape[1]}x"
                                 f"{a.shape[0]}")
    return float(structural_similarity(a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                       sigma=SSIM_WINDOW_SIGMA, use_sample_covariance=False))


def silhouette_iou(image: np.ndarray, target: np.ndarray, white_tol: float = 0.1) -> float:
    """IoU of the foregrounds (not near-white) of two images on white; 1 when both are empty."""
    a, b = foreground_mask(image, white_tol), foreground_mask(target, white_tol)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def scores(image: np.ndarray, target: np.ndarray, white_tol: float) -> dict:
    return {"psnr": psnr(image, target), "ssim": ssim(image, target),
            "iou": silhouette_iou(image, target, white_tol)}


# ----------------------------------------------------------------------------- data


def held_out_objects(root: str, n: int) -> list:
    """The last n object folders of an SRN root."""
    from neutral.genvs.srn_dataset import list_srn_objects
    folders = list_srn_objects(root)
    if not 1 <= n <= len(folders):
        raise SamplingInputError(f"--objects {n}: {root} has {len(folders)} objects; give 1 to {len(folders)}")
    return folders[-n:]


def read_object(folder: str, size: int) -> dict:
    """An SRN object at the model's size: rgb (V, size, size, 3) on white, c2w (V, 4, 4), intrinsics (4,)."""
    from neutral.genvs.srn_dataset import read_srn_object
    obj = read_srn_object(folder)
    h, w = obj["height"], obj["width"]
    if h != w or h % size:
        raise SamplingInputError(f"{folder}: images are {w}x{h}; the model takes {size}x{size} (or an integer "
                                 "multiple, box-averaged down)")
    k = h // size
    rgb = obj["rgb"].reshape(-1, size, k, size, k, 3).mean(axis=(2, 4))
    if len(rgb) < 2:
        raise SamplingInputError(f"{folder} has {len(rgb)} view; need an input and at least one target")
    intr = np.array([obj["focal"], obj["focal"], obj["cx"], obj["cy"]], np.float64) / k
    return {"name": os.path.basename(folder), "rgb": rgb.astype(np.float32), "c2w": obj["c2w"], "intrinsics": intr}


# ----------------------------------------------------------------------------- report


def summarize(per_view: dict) -> dict:
    """{method: [scores per view]} -> {method: {psnr, ssim, iou, views}} (means)."""
    out = {}
    for key, _ in METHODS:
        rows = per_view[key]
        out[key] = {m: float(np.mean([r[m] for r in rows])) for m in ("psnr", "ssim", "iou")}
        out[key]["views"] = len(rows)
    return out


def markdown_table(summary: dict, seconds: dict) -> str:
    lines = ["| method | PSNR (dB) | SSIM | silhouette IoU | views | s per view |",
             "|---|---|---|---|---|---|"]
    for key, label in METHODS:
        s = summary[key]
        lines.append(f"| {label} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['iou']:.3f} | {s['views']} | "
                     f"{seconds[key]:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=SHIPPED_MODEL,
                    help=f"an exported GeNVS model: its folder or its model.ckpt (default: {SHIPPED_MODEL})")
    ap.add_argument("--data", required=True, help="an SRN folder (e.g. data/genvs_scenes)")
    ap.add_argument("--objects", type=int, default=8, help="score the last N objects (the held-out ones)")
    ap.add_argument("--out", default=os.path.join("outputs", "genvs_quality", "quality.json"))
    ap.add_argument("--sampler", choices=("euler", "heun"), default="heun")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--churn", type=float, default=None, help="S_churn (default 0.4 x steps, upstream's)")
    ap.add_argument("--s_noise", type=float, default=1.003)
    ap.add_argument("--sigma_min", type=float, default=None)
    ap.add_argument("--sigma_max", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cond_seed", type=int, default=123)
    ap.add_argument("--max_sources", type=int, default=MAX_SOURCES)
    ap.add_argument("--white_tol", type=float, default=0.1, help="foreground: some channel below 1 - this")
    ap.add_argument("--no_sheets", action="store_true", help="skip the per-object contact sheets")
    ap.add_argument("--no_jit", action="store_true")
    ap.add_argument("--device", default="CPU", choices=["CPU", "Ascend", "GPU"])
    return ap.parse_args(argv)


def run(args) -> int:
    from scripts.nvs import sampler_config
    if args.steps < 1 or args.max_sources < 1:
        raise SamplingInputError("--steps and --max_sources must be >= 1")
    if not 0.0 < args.white_tol < 1.0:
        raise SamplingInputError(f"--white_tol must lie in (0, 1), got {args.white_tol}")
    if not args.out.endswith(".json"):
        raise SamplingInputError(f"--out {args.out!r} must name a .json file")
    from mindspore_impl.core.device import check_device
    check_device(args.device)
    from mindspore_impl.genvs.sampling import export_files, read_settings
    _, config_path = export_files(args.ckpt)
    settings = read_settings(config_path)
    sampler = sampler_config(args, settings)
    objects = [read_object(f, settings.image_size) for f in held_out_objects(args.data, args.objects)]

    from mindspore_impl.core.device import setup
    from mindspore_impl.core.media import contact_sheet, save_image
    from mindspore_impl.genvs.sampling import NovelViewSampler, load_genvs
    setup(args.device, "pynative")
    model = load_genvs(args.ckpt)
    nvs = NovelViewSampler(model, max_sources=args.max_sources, jit=not args.no_jit)
    compile_seconds = nvs.warm_up()  # so the times per view below do not include the compiles
    per_view = {key: [] for key, _ in METHODS}
    seconds = {key: 0.0 for key, _ in METHODS}
    per_object, sheets = [], []
    stem = args.out[:-len(".json")]
    for j, obj in enumerate(objects):
        image, targets, truth = obj["rgb"][0], obj["c2w"][1:], obj["rgb"][1:]
        tag = f"{j + 1}/{len(objects)} {obj['name']}"
        t0 = time.time()
        single = nvs.run(image, obj["c2w"][0], obj["intrinsics"], targets, sampler, seed=args.seed,
                         autoregressive=False, progress=True, desc=f"{tag} single")
        t1 = time.time()
        ar = nvs.run(image, obj["c2w"][0], obj["intrinsics"], targets, sampler, seed=args.seed,
                     autoregressive=True, cond_seed=args.cond_seed, progress=True, desc=f"{tag} autoregressive")
        t2 = time.time()
        render = nvs.run(image, obj["c2w"][0], obj["intrinsics"], targets, sampler, autoregressive=False,
                         sample=False)
        t3 = time.time()
        n = len(targets)
        for key, dt in (("single", t1 - t0), ("autoregressive", t2 - t1), ("render", t3 - t2)):
            seconds[key] += dt
        images = {"single": single.samples, "autoregressive": ar.samples, "render": render.renders,
                  "white": np.ones_like(truth)}
        rows = {key: [dict(scores(images[key][t], truth[t], args.white_tol), view=t + 1) for t in range(n)]
                for key, _ in METHODS}
        for key, _ in METHODS:
            per_view[key] += rows[key]
        per_object.append({"object": obj["name"], "views": n, "sources": ar.sources, **rows})
        if not args.no_sheets:
            sheets.append(save_image(f"{stem}_{obj['name']}.png", contact_sheet(
                [[image] + list(truth), [image] + list(single.samples), [image] + list(ar.samples),
                 [image] + list(single.renders)])))
    n_views = max(1, len(per_view["single"]))
    per_view_seconds = {key: seconds[key] / n_views for key in seconds}
    summary = summarize(per_view)
    table = markdown_table(summary, per_view_seconds)
    record = {"ckpt": os.path.abspath(args.ckpt), "data": os.path.abspath(args.data),
              "objects": [o["name"] for o in objects], "input_view": 0, "image_size": settings.image_size,
              "sampler": {"solver": sampler.solver, "steps": sampler.steps, "s_churn": sampler.s_churn,
                          "s_noise": sampler.s_noise, "sigma_min": sampler.sigma_min, "sigma_max": sampler.sigma_max},
              "seed": args.seed, "cond_seed": args.cond_seed, "max_sources": args.max_sources,
              "white_tol": args.white_tol, "summary": summary, "seconds_per_view": per_view_seconds,
              "compile_seconds": compile_seconds,
              "table": table, "per_object": per_object, "sheets": sheets}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"{len(objects)} held-out objects of {args.data} ({n_views} target views, input view 0), "
          f"{sampler.solver} {sampler.steps} steps, S_churn {sampler.s_churn:g}, seed {args.seed}")
    print(table)
    print(f"wrote {args.out}" + (f" and {len(sheets)} sheets ({stem}_<object>.png)" if sheets else ""))
    return 0


def main(argv=None) -> int:
    """Raises UserError subclasses on bad input (`error: ...`, exit 2 from the command line)."""
    return run(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
