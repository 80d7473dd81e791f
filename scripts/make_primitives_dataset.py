"""Render the procedural multiview primitives dataset (coloured cubes, spheres, ... from 4 orbit views).

    python scripts/make_primitives_dataset.py --out data/primitives_32.npz --num_objects 2000 --size 32 --seed 0

Each object: one primitive in one colour, caption "a red cube", n_view views 360/n_view degrees apart with
a random azimuth offset, elevation uniform in --elevation_range, fixed --fovy, distance
= relative distance / tan(fovy / 2). Cameras follow the project's conventions (threestudio z-up c2w;
`cameras` = normalize_camera(c2w) flattened, what the SDS guidance feeds the UNet). White background.
With --views random every view is drawn on its own (azimuth uniform over the circle, elevation in
--elevation_range, distance from --distance_range): the view-pair data of Zero-1-to-3 style training
(configs/demo-zero123-training.yaml, which pairs two views of an object with their relative camera):
    python scripts/make_primitives_dataset.py --views random --out data/primitive_views_32.npz --num_objects 2000 \
        --n_view 8 --elevation_range -10 60 --seed 0
The same seed and arguments give the same file. See mindspore_impl/mvdream/data/primitives.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mindspore_impl.mvdream.data import primitives as P  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join("data", "primitives_32.npz"))
    ap.add_argument("--num_objects", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32, help="image height = width in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes", nargs="+", default=list(P.DEFAULT_SHAPES), help=f"from {list(P.SHAPES)}")
    ap.add_argument("--colors", nargs="+", default=list(P.DEFAULT_COLORS), help=f"from {list(P.COLORS)}")
    ap.add_argument("--n_view", type=int, default=4)
    ap.add_argument("--views", choices=list(P.VIEW_SAMPLINGS), default="orbit",
                    help="orbit: n_view azimuths evenly apart at one elevation and distance per object (MVDream); "
                         "random: every view's azimuth, elevation and distance drawn on its own (view pairs)")
    ap.add_argument("--elevation_range", type=float, nargs=2, default=(0.0, 30.0), metavar=("LO", "HI"))
    ap.add_argument("--distance_range", type=float, nargs=2, default=(0.8, 1.0), metavar=("LO", "HI"),
                    help="relative camera distance; distance = value / tan(fovy / 2) (threestudio relative_radius)")
    ap.add_argument("--fovy", type=float, default=40.0, help="vertical field of view in degrees")
    ap.add_argument("--supersample", type=int, default=2, help="antialiasing: supersample^2 rays per pixel")
    ap.add_argument("--background", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("R", "G", "B"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """Raises DatasetError (a UserError: `error: ...`, exit 2 from the command line) for unknown names."""
    args = parse_args(argv)
    for name in args.shapes:
        if name not in P.SHAPES:
            raise P.DatasetError(f"unknown shape '{name}'; known: {', '.join(P.SHAPES)}")
    for name in args.colors:
        if name not in P.COLORS:
            raise P.DatasetError(f"unknown colour '{name}'; known: {', '.join(P.COLORS)}")
    start = time.time()
    data = P.make_dataset(args.num_objects, args.size, args.seed, args.shapes, args.colors, args.n_view,
                          tuple(args.elevation_range), tuple(args.distance_range), args.fovy, args.supersample,
                          tuple(args.background), progress=True, views=args.views)
    P.save_dataset(data, args.out)
    n, v, h, w, _ = data["images"].shape
    print(f"wrote {args.out}: {n} objects x {v} {args.views} views at {h}x{w}, "
          f"{len(args.shapes)} shapes x {len(args.colors)} colours, seed {args.seed}, "
          f"{time.time() - start:.1f} s, {os.path.getsize(args.out) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    from neutral.errors import run_cli
    run_cli(main)
