"""Render the example input images of the image-to-3D demo (examples/images/*_rgba.png): coloured primitives as RGBA.

    python scripts/make_example_images.py                   # examples/images/, 128 x 128
    python scripts/make_example_images.py --out_dir my_images --size 256

Each image is one primitive of mindspore_impl/mvdream/data/primitives.py (the shapes and colours the demo models
are trained on), ray-traced with the same shading, from the reference camera of configs/demo-image-to-3d.yaml:
elevation 15 degrees, azimuth 0, distance 0.9 / tan(fovy / 2) = 2.4727, fovy 40 degrees, looking at the origin.
RGBA with straight (not premultiplied) colour and the coverage as alpha (antialiased by --supersample^2 rays per
pixel). Nothing is random: the same arguments give the same files.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mindspore_impl.mvdream.data import primitives as P  # noqa: E402

EXAMPLES = (("red", "cube"), ("blue", "sphere"), ("green", "cylinder"), ("yellow", "cone"), ("orange", "torus"),
            ("purple", "torus"))
ELEVATION, AZIMUTH, RELATIVE_DISTANCE, FOVY = 15.0, 0.0, 0.9, 40.0


def reference_distance(relative: float = RELATIVE_DISTANCE, fovy_deg: float = FOVY) -> float:
    """Camera distance of a relative distance (threestudio's relative_radius): relative / tan(fovy / 2)."""
    return relative / math.tan(math.radians(fovy_deg) / 2.0)


def render_rgba(color: str, shape: str, size: int, supersample: int = 4) -> np.ndarray:
    """uint8 (size, size, 4): straight colour and alpha of `shape` in `color` from the reference camera."""
    cams = P.make_cameras([ELEVATION], [AZIMUTH], [reference_distance()], [FOVY], size)
    out = P.render(P.SHAPES[shape], cams["c2w"], [FOVY], size, albedo=P.COLORS[color], supersample=supersample,
                   background=(0.0, 0.0, 0.0))
    rgb, alpha = out["rgb"][0], out["alpha"][0][..., None]
    straight = np.where(alpha > 0, rgb / np.maximum(alpha, 1e-6), 0.0)
    rgba = np.concatenate([np.clip(straight, 0.0, 1.0), alpha], -1)
    return np.round(rgba * 255.0).astype(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out_dir", default=os.path.join(ROOT, "examples", "images"))
    ap.add_argument("--size", type=int, default=128, help="height = width in pixels")
    ap.add_argument("--supersample", type=int, default=4, help="antialiasing: supersample^2 rays per pixel")
    args = ap.parse_args(argv)
    import imageio.v3 as iio
    os.makedirs(args.out_dir, exist_ok=True)
    for color, shape in EXAMPLES:
        path = os.path.join(args.out_dir, f"{color}_{shape}_rgba.png")
        iio.imwrite(path, render_rgba(color, shape, args.size, args.supersample))
        print(f"wrote {path} ({os.path.getsize(path) / 1e3:.1f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
