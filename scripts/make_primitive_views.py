"""Write posed views of one procedural primitive as a transforms.json folder (the reconstruction systems' input), or,
with --frames N, an animated sequence: one folder per frame (OUT/frame_000/transforms.json, ...), the same cameras in
every frame (the input of papr-frames-system, configs/papr-frames.yaml).

    python scripts/make_primitive_views.py --out data/torus_views --shape torus --views 20 --size 32
    python scripts/make_primitive_views.py --out data/torus_frames --frames 6 --views 8 --size 32 \
        --move 0.3 0 0.1 --spin 90 --axis 1 0 0

View i sits at azimuth 7 + i * 360 / views degrees and elevation elevations[i mod len(elevations)], at distance
0.9 / tan(fovy / 2), looking at the origin (z up; mindspore_impl/mvdream/data/primitives.py make_cameras).
Colour: an albedo that varies with the position (0.5 + 0.9 p, clipped) under a Lambertian light fixed in the world,
so the appearance is view-independent and a held-out view is predictable from the others. RGBA, anti-aliased
(supersample^2 rays per pixel), straight alpha. With the reconstruction configs' data.holdout_every=5, 20 views give
16 training views and 4 held-out ones (frames 0, 5, 10, 15).
Animation (`object_motion`): frame k of N places the primitive at centre (k / (N - 1) - 1/2) * move and turns it by
k / (N - 1) * spin degrees about `axis` (a rigid motion); the albedo is painted in the object's own coordinates, so
it moves with the surface, while the light stays fixed in the world.
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


def render_views(shape: str, c2w: np.ndarray, fovy_deg: float, size: int, supersample: int = 2,
                 rotation: np.ndarray = None, center: np.ndarray = None) -> np.ndarray:
    """RGBA float (N, size, size, 4) in [0, 1] of the named primitive from cameras c2w (N, 4, 4), posed in the world by
    rotation (3, 3) and center (3,) (default: identity, origin)."""
    if shape not in P.SHAPES:
        raise P.DatasetError(f"unknown shape '{shape}'; known: {', '.join(P.SHAPES)}")
    sdf = P.SHAPES[shape]
    rot = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    ctr = np.zeros(3) if center is None else np.asarray(center, np.float64)
    n, s = c2w.shape[0], size * supersample
    rays_o, rays_d = P.camera_rays(c2w, np.full(n, fovy_deg), s)
    # trace in object coordinates: x_obj = R^T (x_world - c); row vectors, so x @ R
    rays_o = (rays_o.reshape(-1, 3) - ctr) @ rot
    rays_d = rays_d.reshape(-1, 3) @ rot
    hit, points = P.sphere_trace(sdf, rays_o, rays_d)
    p = points[hit]
    shade = 0.4 + 0.6 * np.clip((P.sdf_normals(sdf, p) @ rot.T) @ LIGHT, 0.0, 1.0)
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


def rotation_matrix(axis, degrees: float) -> np.ndarray:
    """(3, 3) rotation by `degrees` about `axis` (Rodrigues)."""
    a = np.asarray(axis, np.float64)
    norm = np.linalg.norm(a)
    if a.shape != (3,) or not norm > 0:
        raise ValueError(f"axis must be a non-zero 3-vector, got {axis!r}")
    x, y, z = a / norm
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


def object_motion(frame: int, frames: int, move=(0.3, 0.0, 0.1), spin: float = 90.0, axis=(1.0, 0.0, 0.0)):
    """(rotation (3, 3), center (3,)) of the primitive in frame `frame` of `frames` (module doc)."""
    u = frame / (frames - 1) if frames > 1 else 0.0
    return rotation_matrix(axis, u * spin), (u - 0.5) * np.asarray(move, np.float64) if frames > 1 else np.zeros(3)


def frame_folder(root: str, frame: int) -> str:
    """The folder of frame `frame` of a sequence (the layout neutral/lift3d/frame_sequence.py reads)."""
    return os.path.join(root, f"frame_{frame:03d}")


def write_animated_views(root: str, shape: str = "torus", frames: int = 6, views: int = 8, size: int = 32,
                         move=(0.3, 0.0, 0.1), spin: float = 90.0, axis=(1.0, 0.0, 0.0), fovy_deg: float = 40.0,
                         supersample: int = 2, elevations=(0.0, 20.0, 40.0, -15.0)) -> list[str]:
    """Render the moving primitive from the same `views` cameras in each of `frames` frames; returns the frames'
    transforms.json paths."""
    if frames < 1:
        raise P.DatasetError(f"--frames must be >= 1, got {frames}")
    c2w = orbit_cameras(views, size, fovy_deg, elevations)
    paths = []
    for k in range(frames):
        rot, ctr = object_motion(k, frames, move, spin, axis)
        rgba = render_views(shape, c2w, fovy_deg, size, supersample, rot, ctr)
        paths.append(write_transforms(frame_folder(root, k), rgba, c2w, fovy_deg))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write (transforms.json + images/)")
    ap.add_argument("--shape", default="torus", help=f"one of {list(P.SHAPES)}")
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--size", type=int, default=32, help="image height = width in pixels")
    ap.add_argument("--fovy", type=float, default=40.0, help="vertical field of view in degrees")
    ap.add_argument("--supersample", type=int, default=2)
    ap.add_argument("--elevations", type=float, nargs="+", default=[0.0, 20.0, 40.0, -15.0])
    ap.add_argument("--frames", type=int, default=0,
                    help="N > 0: an animated sequence of N frames, OUT/frame_000 ... (module doc)")
    ap.add_argument("--move", type=float, nargs=3, default=[0.3, 0.0, 0.1],
                    help="with --frames: displacement of the centre from the first to the last frame (world units)")
    ap.add_argument("--spin", type=float, default=90.0, help="with --frames: total rotation in degrees")
    ap.add_argument("--axis", type=float, nargs=3, default=[1.0, 0.0, 0.0], help="with --frames: rotation axis")
    args = ap.parse_args(argv)
    if args.frames:
        paths = write_animated_views(args.out, args.shape, args.frames, args.views, args.size, args.move, args.spin,
                                     args.axis, args.fovy, args.supersample, args.elevations)
        print(f"wrote {len(paths)} frames under {args.out}: {args.views} views each of a moving {args.shape} at "
              f"{args.size}x{args.size}")
        return 0
    path = write_primitive_views(args.out, args.shape, args.views, args.size, args.fovy, args.supersample,
                                 args.elevations)
    print(f"wrote {path}: {args.views} views of a {args.shape} at {args.size}x{args.size}")
    return 0


if __name__ == "__main__":
    run_cli(main)
