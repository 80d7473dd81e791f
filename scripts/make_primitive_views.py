"""Write posed views of one procedural primitive as a transforms.json folder (the reconstruction systems' input).

    python scripts/make_primitive_views.py --out data/torus_views --shape torus --views 20 --size 32

View i sits at azimuth 7 + i * 360 / views degrees and elevation elevations[i mod len(elevations)], at distance
0.9 / tan(fovy / 2), looking at the origin (z up; mindspore_impl/mvdream/data/primitives.py make_cameras).
Colour: an albedo that varies with the position (0.5 + 0.9 p, clipped) under a Lambertian light fixed in the world,
so the appearance is view-independent and a held-out view is predictable from the others. RGBA, anti-aliased
(supersample^2 rays per pixel), straight alpha. With the reconstruction configs' data.holdout_every=5, 20 views give
16 training views and 4 held-out ones (frames 0, 5, 10, 15).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mindspore_impl.mvdream.data import primitives as P  # noqa: E402
from neutral.errors import run_cli  # noqa: E402
from neutral.lift3d.transforms_dataset import write_transforms  # noqa: E402

LIGHT = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])


def render_views(shape: str, c2w: np.ndarray, fovy_deg: float, size: int, supersample: int = 2) -> np.ndarray:
    """RGBA float (N, size, size, 4) in [0, 1] of the named primitive from cameras c2w (N, 4, 4)."""
    if shape not in P.SHAPES:
        raise P.DatasetError(f"unknown shape '{shape}'; known: {', '.join(P.SHAPES)}")
    sdf = P.SHAPES[shape]
    n, s = c2w.shape[0], size * supersample
    rays_o, rays_d = P.camera_rays(c2w, np.full(n, fovy_deg), s)
    hit, points = P.sphere_trace(sdf, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
    p = points[hit]
    shade = 0.4 + 0.6 * np.clip(P.sdf_normals(sdf, p) @ LIGHT, 0.0, 1.0)
    rgb = np.zeros((hit.size, 3))
    rgb[hit] = np.clip(0.5 + 0.9 * p, 0.05, 1.0) * shade[:, None]
    rgb = rgb.reshape(n, size, supersample, size, supersample, 3).mean((2, 4))
    alpha = hit.astype(np.float64).reshape(n, size, supersample, size, supersample).mean((2, 4))
    rgb = np.where(alpha[..., None] > 0, rgb / np.maximum(alpha[..., None], 1e-9), 0.0)
    return np.concatenate([rgb, alpha[..., None]], -1)


def orbit_cameras(views: int, size: int, fovy_deg: float = 40.0, elevations=(0.0, 20.0, 40.0, -15.0)) -> np.ndarray:
    """c2w (views, 4, 4) of the orbit described in the module doc."""
    elevation = np.resize(np.asarray(elevations, np.float64), views)
    azimuth = np.arange(views) * (360.0 / views) + 7.0
    distance = np.full(views, 0.9 / np.tan(np.radians(fovy_deg / 2)))
    return P.make_cameras(elevation, azimuth, distance, np.full(views, fovy_deg), size)["c2w"]


def write_primitive_views(root: str, shape: str = "torus", views: int = 20, size: int = 32, fovy_deg: float = 40.0,
                          supersample: int = 2, elevations=(0.0, 20.0, 40.0, -15.0)) -> str:
    """Render and write the folder; returns its transforms.json path."""
    c2w = orbit_cameras(views, size, fovy_deg, elevations)
    return write_transforms(root, render_views(shape, c2w, fovy_deg, size, supersample), c2w, fovy_deg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write (transforms.json + images/)")
    ap.add_argument("--shape", default="torus", help=f"one of {list(P.SHAPES)}")
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--size", type=int, default=32, help="image height = width in pixels")
    ap.add_argument("--fovy", type=float, default=40.0, help="vertical field of view in degrees")
    ap.add_argument("--supersample", type=int, default=2)
    ap.add_argument("--elevations", type=float, nargs="+", default=[0.0, 20.0, 40.0, -15.0])
    args = ap.parse_args(argv)
    path = write_primitive_views(args.out, args.shape, args.views, args.size, args.fovy, args.supersample,
                                 args.elevations)
    print(f"wrote {path}: {args.views} views of a {args.shape} at {args.size}x{args.size}")
    return 0


if __name__ == "__main__":
    run_cli(main)
