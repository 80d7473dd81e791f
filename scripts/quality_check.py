#!/usr/bin/env python
"""Quality check of the demo text-to-3D: run configs/demo.yaml per prompt and score the result against the
true primitive of the procedural dataset (mindspore_impl/mvdream/data/primitives.py).

    python scripts/quality_check.py --ckpt pretrained/demo/model.ckpt --steps 300 --out outputs/quality
    python scripts/quality_check.py --trials outputs/demo/a_red_cube@... --out outputs/quality  # score finished runs
    python scripts/quality_check.py --images examples/images/*_rgba.png --out outputs/quality-image  # image to 3D

Image prompts run configs/demo-image-to-3d.yaml (the shipped Zero123 demo model) on each image; the object is
read from the file name (red_cube_rgba.png -> "a red cube") and scored the same way.

Per prompt ("a red cube" -> colour red, shape cube):
- vol_iou: volumetric IoU of the exported mesh against the primitive on a 64^3 grid over [-0.6, 0.6]^3,
  after normalising the mesh: its bounding-box centre is moved onto the primitive's bounding-box centre and
  it is scaled so its largest vertex distance from that centre equals the primitive's bounding radius
  (largest distance of the primitive's surface from its bounding-box centre). Occupancy of the mesh: ray
  parity along +z through every grid column (the mesh must be closed; marching-cubes meshes are).
- sil_iou: mean over the 4 canonical views (primitives.canonical_cameras: elevation 15, azimuth 0/90/180/270,
  fovy 40) of the IoU of the learned field's opacity > 0.5 against the primitive's silhouette > 0.5; no
  normalisation (the demo model was trained at the dataset's scale).
- colour_err: L2 distance (RGB in [0, 1]) between the mean rendered colour inside the field's silhouette and
  the expected shaded colour = palette albedo x mean shading of the true primitive in the same views (the
  dataset's Lambert + ambient shading); right_colour: whether the nearest shaded palette colour is the one named.
Writes <out>/quality.csv and <out>/quality.json and prints a table.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import sys
import time
from typing import Dict, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("GLOG_v", "3")  # as launch.py: MindSpore's own log stays quiet; set before it is imported

from neutral.errors import UserError, run_cli  # noqa: E402
from mindspore_impl.mvdream.data import primitives as P  # noqa: E402

DEFAULT_PROMPTS = ("a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "a purple torus")
DEFAULT_CONFIG = "configs/demo.yaml"
IMAGE_CONFIG = "configs/demo-image-to-3d.yaml"
MODEL_NAME = "demo-mvdream"
GRID_RES, GRID_BOUND = 64, 0.6
VIEW_SIZE = 64


class QualityCheckError(UserError, ValueError):
    """A missing checkpoint or an unusable prompt, found before any work starts."""


# ----------------------------------------------------------------------------- geometry metrics


def primitive_frame(shape: str, resolution: int = 128, bound: float = GRID_BOUND, n_dirs: int = 4000) -> tuple:
    """(bounding-box centre (3,), bounding radius) of a primitive. The centre comes from a fine occupancy grid;
    the radius is the largest distance from it of the surface points hit by sphere tracing inwards along
    n_dirs Fibonacci directions (or of an inside grid cell centre, where larger, e.g. near cube corners)."""
    pts = P.grid_points(resolution, bound)[P.occupancy_grid(shape, resolution, bound)]
    centre = 0.5 * (pts.min(0) + pts.max(0))
    k = np.arange(n_dirs) + 0.5
    z, phi = 1.0 - 2.0 * k / n_dirs, math.pi * (1.0 + 5.0 ** 0.5) * k
    dirs = np.stack([np.sqrt(1.0 - z * z) * np.cos(phi), np.sqrt(1.0 - z * z) * np.sin(phi), z], -1)
    hit, points = P.sphere_trace(P.SHAPES[shape], centre + 2.0 * dirs, -dirs)
    radius = np.linalg.norm(pts - centre, axis=-1).max()
    if hit.any():
        radius = max(radius, np.linalg.norm(points[hit] - centre, axis=-1).max())
    return centre, float(radius)


def normalise_mesh(verts: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Move the vertices' bounding-box centre to `centre` and scale so the farthest vertex is at `radius`."""
    verts = np.asarray(verts, np.float64)
    own = 0.5 * (verts.min(0) + verts.max(0))
    extent = np.linalg.norm(verts - own, axis=-1).max()
    if not extent > 0:
        raise ValueError("degenerate mesh: all vertices coincide")
    return (verts - own) * (radius / extent) + np.asarray(centre, np.float64)


def mesh_occupancy(verts: np.ndarray, faces: np.ndarray, resolution: int = GRID_RES, bound: float = GRID_BOUND,
                   chunk: int = 256) -> np.ndarray:
    """(R, R, R) bool occupancy of a closed triangle mesh at primitives.grid_points(R, bound), indexed [x, y, z]:
    for each (x, y) column, the z of every triangle crossing it; a cell centre is inside when an odd number
    of crossings lie above it."""
    c = (np.arange(resolution) + 0.5) / resolution * 2.0 * bound - bound
    cols = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    cols = cols + 1.234e-7  # keep columns off exact edges and vertices of symmetric meshes
    tri = np.asarray(verts, np.float64)[np.asarray(faces, np.int64)]  # (F, 3, 3)
    a, b, cc = tri[:, 0], tri[:, 1], tri[:, 2]
    e1, e2 = b[:, :2] - a[:, :2], cc[:, :2] - a[:, :2]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-14  # triangles seen edge-on from above cannot be crossed by a z column
    a, b, cc, e1, e2, det = a[ok], b[ok], cc[ok], e1[ok], e2[ok], det[ok]
    occ = np.zeros((cols.shape[0], resolution), dtype=bool)
    for s in range(0, cols.shape[0], chunk):
        d = cols[s:s + chunk, None, :] - a[None, :, :2]  # (P, F, 2)
        u = (d[..., 0] * e2[:, 1] - d[..., 1] * e2[:, 0]) / det
        v = (e1[:, 0] * d[..., 1] - e1[:, 1] * d[..., 0]) / det
        hit = (u >= 0) & (v >= 0) & (u + v <= 1)
        z = a[:, 2] + u * (b[:, 2] - a[:, 2]) + v * (cc[:, 2] - a[:, 2])
        for k in range(hit.shape[0]):
            zs = np.sort(z[k][hit[k]])
            above = zs.size - np.searchsorted(zs, c, side="right")
            occ[s + k] = (above % 2) == 1
    return occ.reshape(resolution, resolution, resolution)


def mesh_volume_iou(verts: np.ndarray, faces: np.ndarray, shape: str, normalise: bool = True,
                    resolution: int = GRID_RES) -> float:
    """Volumetric IoU of a mesh against a named primitive (normalised as in the module docstring)."""
    if normalise:
        centre, radius = primitive_frame(shape)
        verts = normalise_mesh(verts, centre, radius)
    return P.volume_iou(mesh_occupancy(verts, faces, resolution), shape, resolution, GRID_BOUND)


def silhouette_iou(pred: np.ndarray, target: np.ndarray) -> tuple:
    """(mean, per-view list) IoU of (V, H, W) soft masks thresholded at 0.5."""
    per_view = [P.iou(p, t) for p, t in zip(np.asarray(pred), np.asarray(target))]
    return float(np.mean(per_view)), per_view


# ----------------------------------------------------------------------------- colour metrics


def mean_shading(shape: str, size: int = VIEW_SIZE) -> np.ndarray:
    """Mean (3,) shading factor of a primitive in the canonical views: a white-albedo render on a black
    background averaged over its silhouette (> 0.5)."""
    cams = P.canonical_cameras(size)
    out = P.render(P.SHAPES[shape], cams["c2w"], cams["fovy"], size, albedo=(1.0, 1.0, 1.0), background=(0.0, 0.0, 0.0))
    mask = out["alpha"] > 0.5
    return out["rgb"][mask].mean(0) / np.maximum(out["alpha"][mask].mean(), 1e-6)


def colour_metrics(rgb: np.ndarray, mask: np.ndarray, colour: str, shading: np.ndarray) -> Dict:
    """Mean colour of rgb (..., 3) over mask (...) > 0.5 vs each palette colour x shading.
    -> {mean_rgb, colour_err (L2 to the named colour), nearest, right_colour}; an empty mask scores nan/False."""
    m = np.asarray(mask) > 0.5
    if not m.any():
        return {"mean_rgb": [float("nan")] * 3, "colour_err": float("nan"), "nearest": None, "right_colour": False}
    mean = np.asarray(rgb, np.float64)[m].mean(0)
    refs = {name: np.asarray(alb) * shading for name, alb in P.COLORS.items()}
    dists = {name: float(np.linalg.norm(mean - ref)) for name, ref in refs.items()}
    nearest = min(dists, key=dists.get)
    return {"mean_rgb": [float(x) for x in mean], "colour_err": dists[colour], "nearest": nearest,
            "right_colour": nearest == colour}


# ----------------------------------------------------------------------------- running the demo


def check_checkpoint(path: Optional[str], image: bool = False) -> str:
    """The demo checkpoint must exist; otherwise the guidance's message (how to get it)."""
    if path and os.path.isfile(path):
        return path
    if image:
        from neutral.lift3d.zero123_guidance import missing_checkpoint_message
        raise QualityCheckError(missing_checkpoint_message(path))
    from neutral.lift3d.multiview_diffusion_guidance import missing_checkpoint_message
    raise QualityCheckError(missing_checkpoint_message(path, MODEL_NAME))


def check_prompt(prompt: str) -> tuple:
    colour, shape = P.parse_prompt(prompt)
    if colour is None or shape is None:
        raise QualityCheckError(f"prompt {prompt!r} must name a colour ({', '.join(P.COLORS)}) and a shape "
                                f"({', '.join(P.SHAPES)})")
    return colour, shape


def image_prompt(path: str) -> str:
    """The object an example image shows, from its file name: '.../red_cube_rgba.png' -> 'a red cube'."""
    if not os.path.isfile(path):
        raise QualityCheckError(f"image {path!r} does not exist (the examples are examples/images/*_rgba.png)")
    words = os.path.splitext(os.path.basename(path))[0].replace("-", "_").split("_")
    colour, shape = P.parse_prompt(" ".join(words))
    if colour is None or shape is None:
        raise QualityCheckError(f"image {path!r}: its file name must name a colour ({', '.join(P.COLORS)}) and a "
                                f"shape ({', '.join(P.SHAPES)}), e.g. red_cube_rgba.png, to score it")
    return f"a {colour} {shape}"


def canonical_batch(size: int = VIEW_SIZE) -> Dict[str, np.ndarray]:
    """The canonical views as an eval batch for system.render_eval (light at the camera, as the test orbit)."""
    cams = P.canonical_cameras(size)
    rays_o, rays_d = P.camera_rays(cams["c2w"], cams["fovy"], size)
    return {"rays_o": rays_o.astype(np.float32), "rays_d": rays_d.astype(np.float32),
            "light_positions": cams["c2w"][:, :3, 3].astype(np.float32)}


def prompt_keys(config) -> tuple:
    """(prompt key, checkpoint key) of a config: the SDS system's, the generated-views data module's
    (configs/demo-views2nerf.yaml: generate, then reconstruct), or the image-to-3D config's (the prompt is the
    image path). `config` is a path or a loaded config."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(config) if isinstance(config, str) else config
    if cfg.get("data_type") == "generated-views-datamodule":
        return "data.prompt", "data.ckpt_path"
    if cfg.get("data_type") == "single-image-datamodule":
        return "data.image_path", "system.guidance.pretrained_model_name_or_path"
    return "system.prompt_processor.prompt", "system.guidance.ckpt_path"


def train_prompt(prompt: str, ckpt: str, steps: Optional[int], out: str, seed: int, config: str, mode: str,
                 overrides: Sequence[str] = ()):
    """launch.py --train in this process -> (trainer, seconds). `prompt` is the text, or the image path of an
    image-to-3D config; steps None keeps the config's."""
    import launch
    prompt_key, ckpt_key = prompt_keys(config)
    argv = ["--config", config, "--train", "--mode", mode, "--seed", str(seed),
            f"{prompt_key}={prompt}", f"{ckpt_key}={ckpt}", f"exp_root_dir={out}"]
    if steps is not None:
        argv += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(steps, 1)}"]
    argv += list(overrides)
    start = time.time()
    trainer = launch.main(argv)
    return trainer, time.time() - start


def evaluate(trainer, prompt: str) -> Dict:
    colour, shape = check_prompt(prompt)
    row: Dict = {"prompt": prompt, "trial": trainer.trial.root}
    meshes = sorted(glob.glob(os.path.join(trainer.trial.root, "save", "*-export", "*.obj")))
    if meshes:
        import trimesh
        mesh = trimesh.load(meshes[-1], force="mesh", process=False)
        row["mesh"], row["mesh_faces"] = meshes[-1], int(len(mesh.faces))
        row["vol_iou"] = mesh_volume_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), shape)
    else:
        row["mesh"], row["mesh_faces"], row["vol_iou"] = None, 0, 0.0
    render = trainer.system.render_eval(canonical_batch())
    opacity, rgb = render["opacity"][..., 0], np.clip(render["comp_rgb"], 0.0, 1.0)
    row["sil_iou"], views = silhouette_iou(opacity, P.render_silhouettes(shape, VIEW_SIZE))
    row["sil_iou_views"] = [round(v, 4) for v in views]
    row.update(colour_metrics(rgb, opacity, colour, mean_shading(shape)))
    return row


def run(prompts: Sequence[str], ckpt: str, steps: Optional[int], out: str, seed: int, config: str = DEFAULT_CONFIG,
        mode: str = "graph", overrides: Sequence[str] = (), images: Sequence[str] = ()) -> list:
    """Train and score each prompt, or each image with an image-to-3D config (then `prompts` is unused)."""
    check_checkpoint(ckpt, image=bool(images))
    jobs = [(image_prompt(path), path) for path in images] if images else [(p, p) for p in prompts]
    for prompt, _ in jobs:
        check_prompt(prompt)
    rows = []
    for prompt, value in jobs:
        try:
            trainer, seconds = train_prompt(value, ckpt, steps, out, seed, config, mode, overrides)
        except ValueError as exc:  # e.g. export found no surface: the run is scored as a failure
            print(f"[{prompt}] failed: {exc}")
            rows.append({"prompt": prompt, "error": str(exc), "vol_iou": 0.0, "sil_iou": 0.0,
                         "colour_err": float("nan"), "right_colour": False})
            continue
        row = evaluate(trainer, prompt)
        if images:
            row["image"] = value
        row["seconds"] = round(seconds, 1)
        losses = trainer_losses(trainer.trial.root)
        if losses:
            row["loss_first"], row["loss_last"] = losses[0], losses[-1]
        rows.append(row)
        write_results(rows, out)  # partial results survive an interrupted run
    return rows


def evaluate_trials(trials: Sequence[str], out: str, mode: str = "graph") -> list:
    """Score finished launch.py runs (trial folders with configs/parsed.yaml and ckpts/last.ckpt) without
    training again: launch.py --export resume=... rebuilds the field, then the same metrics."""
    import launch
    from omegaconf import OmegaConf
    rows = []
    for trial in trials:
        parsed, last = os.path.join(trial, "configs", "parsed.yaml"), os.path.join(trial, "ckpts", "last.ckpt")
        if not (os.path.isfile(parsed) and os.path.isfile(last)):
            raise QualityCheckError(f"{trial} is not a finished trial folder (needs configs/parsed.yaml and ckpts/last.ckpt)")
        cfg = OmegaConf.load(parsed)
        prompt = str(OmegaConf.select(cfg, prompt_keys(cfg)[0]))
        if cfg.get("data_type") == "single-image-datamodule":
            prompt = image_prompt(prompt)
        check_prompt(prompt)
        trainer = launch.main(["--config", parsed, "--export", "--mode", mode, f"resume={last}", f"exp_root_dir={out}"])
        row = evaluate(trainer, prompt)
        row["source_trial"] = trial
        losses = trainer_losses(trial)
        if losses:
            row["loss_first"], row["loss_last"] = losses[0], losses[-1]
        rows.append(row)
        write_results(rows, out)
    return rows


def trainer_losses(trial_root: str) -> list:
    path = os.path.join(trial_root, "metrics.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


COLUMNS = ("prompt", "vol_iou", "sil_iou", "colour_err", "nearest", "right_colour", "seconds")


def write_results(rows: list, out: str) -> tuple:
    os.makedirs(out, exist_ok=True)
    csv_path, json_path = os.path.join(out, "quality.csv"), os.path.join(out, "quality.json")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})
    with open(json_path, "w") as f:
        json.dump(rows, f, indent=1, default=str)
    return csv_path, json_path


def format_table(rows: list) -> str:
    lines = [f"{'prompt':<20} {'vol_iou':>7} {'sil_iou':>7} {'col_err':>7} {'nearest':>8} {'right':>5}"]
    for r in rows:
        lines.append(f"{r['prompt']:<20} {r.get('vol_iou', 0.0):7.3f} {r.get('sil_iou', 0.0):7.3f} "
                     f"{r.get('colour_err', float('nan')):7.3f} {str(r.get('nearest')):>8} "
                     f"{str(bool(r.get('right_colour'))):>5}")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> list:
    p = argparse.ArgumentParser(description="score demo text-to-3D results against the true primitives")
    p.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    p.add_argument("--images", nargs="+", default=None,
                   help="image to 3D instead: RGBA images named <colour>_<shape>..., e.g. examples/images/*_rgba.png "
                        f"(default config {IMAGE_CONFIG}, default model the shipped demo Zero123)")
    p.add_argument("--ckpt", default=None,
                   help="the demo model: pretrained/demo/model.ckpt (text), pretrained/demo-zero123/model.ckpt (images)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 300 for text, the config's for images)")
    p.add_argument("--out", default="outputs/quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help=f"default {DEFAULT_CONFIG}, or {IMAGE_CONFIG} with --images")
    p.add_argument("--mode", default="graph", choices=("graph", "pynative"))
    p.add_argument("--trials", nargs="+", default=None,
                   help="score these finished launch.py trial folders instead of training (prompts from their configs)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra launch.py config overrides, e.g. system.guidance.guidance_scale=20")
    args = p.parse_args(argv)
    if args.trials:
        rows = evaluate_trials(args.trials, args.out, args.mode)
    elif args.images:
        from neutral.lift3d.zero123_guidance import DEMO_CHECKPOINT
        rows = run((), args.ckpt or DEMO_CHECKPOINT, args.steps, args.out, args.seed, args.config or IMAGE_CONFIG,
                   args.mode, args.set, images=args.images)
    else:
        rows = run(args.prompts, args.ckpt or "pretrained/demo/model.ckpt", 300 if args.steps is None else args.steps,
                   args.out, args.seed, args.config or DEFAULT_CONFIG, args.mode, args.set)
    print(format_table(rows))
    for path in write_results(rows, args.out):
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    run_cli(main)
