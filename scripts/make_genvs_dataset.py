"""Render procedural GeNVS training scenes in the SRN layout (what `data_type: srn-datamodule` reads).

    python scripts/make_genvs_dataset.py --out data/genvs_scenes --num_scenes 200 --size 32 --seed 0

Each scene: 1-3 coloured primitives (--primitives) with random shapes, scales, turns about z and positions,
rendered on white from 8-12 views (--views) at random azimuths and elevations in --elevation_range, all looking at
the origin from --distance with vertical field of view --fovy. Written as OUT/scene_NNNNN/{rgb/*.png (RGBA),
pose/*.txt, intrinsics.txt, intrinsics/*.txt} with exact cameras. The same seed and arguments give the same
folders. See mindspore_impl/genvs/data/procedural_scenes.py and neutral/genvs/srn_dataset.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mindspore_impl.genvs.data import procedural_scenes as S  # noqa: E402
from neutral.errors import UserError, run_cli  # noqa: E402


class OutputExistsError(UserError, FileExistsError):
    """--out already holds files: the new scenes would mix with them."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join("data", "genvs_scenes"), help="a new or empty folder")
    ap.add_argument("--num_scenes", type=int, default=200)
    ap.add_argument("--size", type=int, default=32, help="image height = width in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", type=int, nargs=2, default=(8, 12), metavar=("LO", "HI"),
                    help="views per scene, drawn uniformly in [LO, HI]")
    ap.add_argument("--elevation_range", type=float, nargs=2, default=(-10.0, 40.0), metavar=("LO", "HI"),
                    help="camera elevation in degrees")
    ap.add_argument("--primitives", type=int, nargs=2, default=(1, 3), metavar=("LO", "HI"),
                    help="primitives per scene")
    ap.add_argument("--distance", type=float, default=2.2, help="camera distance from the origin")
    ap.add_argument("--fovy", type=float, default=40.0, help="vertical field of view in degrees")
    ap.add_argument("--supersample", type=int, default=2, help="antialiasing: supersample^2 rays per pixel")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """Raises SceneSettingsError / OutputExistsError (UserErrors: `error: ...`, exit 2 from the command line)."""
    args = parse_args(argv)
    S.check_settings(args.num_scenes, args.size, tuple(args.views), tuple(args.elevation_range),
                     tuple(args.primitives), args.distance, args.fovy, args.supersample)
    if os.path.isdir(args.out) and os.listdir(args.out):
        raise OutputExistsError(f"{args.out} exists and is not empty; give a new folder with --out or delete it")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise OutputExistsError(f"{args.out} is a file; give a folder with --out")
    from tqdm import tqdm
    start = time.time()
    with tqdm(total=args.num_scenes, unit="scene", desc=f"render {args.size}x{args.size}") as bar:
        S.write_scenes(args.out, args.num_scenes, args.size, args.seed, tuple(args.views),
                       tuple(args.elevation_range), tuple(args.primitives), args.distance, args.fovy,
                       args.supersample, progress=lambda i: bar.update(1))
    print(f"wrote {args.out}: {args.num_scenes} scenes x {args.views[0]}-{args.views[1]} views at "
          f"{args.size}x{args.size} (SRN layout), {args.primitives[0]}-{args.primitives[1]} primitives each, "
          f"seed {args.seed}, {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
