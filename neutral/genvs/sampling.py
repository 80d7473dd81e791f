"""Host side of GeNVS novel-view sampling (jfozard/genvs_unofficial sample_ar.py): which earlier views condition
the next one, the orbit cameras, the input camera and the input image. Framework-neutral (numpy), used by
mindspore_impl/genvs/sampling.py, scripts/nvs.py and scripts/genvs_quality.py.

Conditioning set (sample_ar.py sample_sphere_ar). Views are numbered in the order they exist: 0 is the input image,
1, 2, ... the sampled ones. The view sampled when n views exist is conditioned on

    n = 1:  [0]
    n = 2:  [0, 1]
    n > 2:  [0] + random.sample(range(1, n - 1), min(4, n - 2)) + [n - 1]

i.e. the input, up to 4 random earlier samples other than the last, and the last sample; at most 6 views. Upstream
draws the random ones with Python's `random` seeded once with 123 before the orbit. The model trains on 1 or 2
source views (genvs_model.py, random.randint(1, 2)) but samples with up to 6: upstream does not cap the set at the
training count, and the field here (mindspore_impl/genvs/field.py) takes the same masked mean over any number of
views, invariant to their order, so the 6 are kept by default. `max_sources` caps the set (2 keeps [0, last];
1 conditions every view on the input alone).

Orbit (sample_ar.py generate_circle_poses): the input camera turned about the world's up axis (z here, as in the
procedural scenes and mindspore_impl/mvdream/data/primitives.py) in n equal steps over 360 degrees; pose 0 is the
input camera itself, so an orbit of n views samples n - 1 of them.

Input camera. The procedural scenes (scripts/make_genvs_dataset.py) look at the origin from distance 2.2 with a
40 degree vertical field of view at elevations in [-10, 40] degrees; an image of unknown camera is taken at their
middle elevation, 15 degrees (DEFAULT_CAMERA). A camera is given as "elevation,azimuth,distance[,fovy]" in
degrees, or as a pose file in the SRN layout (neutral/genvs/srn_dataset.py: OpenCV camera-to-world, 16 numbers;
inside an SRN object folder its intrinsics come from the object, elsewhere from the field of view).
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from neutral.errors import MissingFileError, UserError
from neutral.lift3d.multiview_cameras import look_at_c2w, spherical_to_cartesian

MAX_RANDOM_EARLIER = 4  # sample_ar.py: min(4, q - 2) random earlier views
SHIPPED_MODEL = "pretrained/demo-genvs"  # trained by configs/demo-genvs.yaml (README, "Novel views from one image")
MAX_SOURCES = 1 + MAX_RANDOM_EARLIER + 1  # the input, 4 random earlier views, the last one
CONDITIONING_SEED = 123  # sample_ar.py: random.seed(123) before the orbit


@dataclass(frozen=True)
class SphericalCamera:
    """A camera looking at the origin (z up): angles in degrees."""
    elevation: float
    azimuth: float
    distance: float
    fovy: float

    def c2w(self) -> np.ndarray:
        """(4, 4) float64 camera-to-world, the project's OpenGL convention (make_cameras' construction)."""
        pos = spherical_to_cartesian(np.radians([self.elevation]), np.radians([self.azimuth]),
                                     np.array([self.distance], dtype=np.float64))
        return look_at_c2w(pos, np.zeros_like(pos), np.array([[0.0, 0.0, 1.0]]))[0]


# the procedural scenes' distance and field of view, the middle of their elevation range [-10, 40]
DEFAULT_CAMERA = SphericalCamera(elevation=15.0, azimuth=0.0, distance=2.2, fovy=40.0)


class SamplingInputError(UserError, ValueError):
    """A sampling input (image, camera, settings) the user can fix; the message names it."""


# ----------------------------------------------------------------------------- conditioning set


def conditioning_set(n_views: int, rng: random.Random, max_sources: int = MAX_SOURCES) -> List[int]:
    """Indices (0 = the input) of the views that condition the next sample when n_views views exist.

    [0] for n_views 1; else [0] + rng.sample(range(1, n_views - 1), k) + [n_views - 1] with
    k = min(max_sources - 2, n_views - 2), upstream's order (the field's mean does not depend on it). With the
    default max_sources 6 and rng = random.Random(123) this draws exactly upstream's sets."""
    n = int(n_views)
    if n < 1:
        raise ValueError(f"conditioning_set: n_views must be >= 1, got {n_views}")
    if max_sources < 1:
        raise ValueError(f"conditioning_set: max_sources must be >= 1, got {max_sources}")
    if n == 1 or max_sources == 1:
        return [0]
    k = min(max_sources - 2, n - 2)
    return [0] + rng.sample(range(1, n - 1), k) + [n - 1]


def conditioning_sets(n_samples: int, seed: int = CONDITIONING_SEED, max_sources: int = MAX_SOURCES) -> List[List[int]]:
    """The sets of n_samples consecutive samples (sample i, 1-based, sees views 0 .. i - 1)."""
    rng = random.Random(seed)
    return [conditioning_set(i, rng, max_sources) for i in range(1, int(n_samples) + 1)]


# ----------------------------------------------------------------------------- cameras


def rotation_z(angle_rad: float) -> np.ndarray:
    """(4, 4) rotation about the world z axis (counter-clockwise seen from +z)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def orbit_c2w(c2w0: np.ndarray, n_views: int) -> np.ndarray:
    """(n_views, 4, 4): the camera c2w0 turned about the world z axis by 360 k / n_views degrees, k = 0 .. n - 1
    (view 0 is c2w0). Distance, elevation and the camera's roll stay those of c2w0."""
    c2w0 = np.asarray(c2w0, dtype=np.float64)
    angles = np.linspace(0.0, 2.0 * math.pi, int(n_views) + 1)[:-1]
    return np.stack([rotation_z(a) @ c2w0 for a in angles])


def intrinsics_from_fovy(fovy_deg: float, size: int) -> np.ndarray:
    """[fx, fy, cx, cy] in pixels of a size x size image (the procedural scenes' camera: principal point at the
    centre, focal 0.5 size / tan(fovy / 2)); float64 (4,)."""
    f = 0.5 * size / math.tan(0.5 * math.radians(fovy_deg))
    return np.array([f, f, 0.5 * size, 0.5 * size])


def parse_camera(text: str) -> SphericalCamera:
    """"elevation,azimuth,distance[,fovy]" (degrees; fovy defaults to DEFAULT_CAMERA's) -> SphericalCamera."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (3, 4) or not all(math.isfinite(v) for v in values):
        raise SamplingInputError(f"--camera {text!r}: expected elevation,azimuth,distance[,fovy] in degrees (e.g. "
                                 f"{DEFAULT_CAMERA.elevation:g},{DEFAULT_CAMERA.azimuth:g},"
                                 f"{DEFAULT_CAMERA.distance:g},{DEFAULT_CAMERA.fovy:g}) or a pose file in the SRN "
                                 "layout")
    elevation, azimuth, distance = values[:3]
    fovy = values[3] if len(values) == 4 else DEFAULT_CAMERA.fovy
    if not -90.0 < elevation < 90.0:
        raise SamplingInputError(f"--camera: elevation {elevation:g} must lie in (-90, 90) degrees")
    if not distance > 0:
        raise SamplingInputError(f"--camera: distance {distance:g} must be > 0")
    if not 0.0 < fovy < 180.0:
        raise SamplingInputError(f"--camera: fovy {fovy:g} must lie in (0, 180) degrees")
    return SphericalCamera(elevation, azimuth, distance, fovy)


def srn_pose_for_image(image_path: str) -> Optional[str]:
    """<object>/pose/<name>.txt when image_path is <object>/rgb/<name>.png of an SRN folder, else None."""
    folder, name = os.path.split(os.path.abspath(image_path))
    if os.path.basename(folder) != "rgb":
        return None
    pose = os.path.join(os.path.dirname(folder), "pose", os.path.splitext(name)[0] + ".txt")
    return pose if os.path.isfile(pose) else None


def camera_from_pose_file(path: str) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[int]]:
    """An SRN pose file -> (c2w (4, 4) project convention, intrinsics (4,) or None, the image height they are in
    pixels of, or None). Inside an SRN object folder (<object>/pose/<name>.txt) the object's intrinsics come with
    it; elsewhere intrinsics are None (the caller uses a field of view)."""
    from neutral.genvs.srn_dataset import read_pose, scan_srn_object
    if not os.path.isfile(path):
        raise MissingFileError(f"camera pose file not found: {path}")
    pose_dir = os.path.dirname(os.path.abspath(path))
    obj = os.path.dirname(pose_dir)
    name = os.path.splitext(os.path.basename(path))[0]
    in_object = os.path.basename(pose_dir) == "pose" and os.path.isdir(os.path.join(obj, "rgb"))
    if in_object:
        scanned = scan_srn_object(obj)  # SRNDatasetError (one line, naming the file) for a broken object
        if name in scanned.names:
            i = scanned.names.index(name)
            return scanned.c2w[i], np.asarray(scanned.intrinsics, dtype=np.float64), scanned.height
    return read_pose(path), None, None


# ----------------------------------------------------------------------------- input image


def read_input_image(path: str, size: int) -> np.ndarray:
    """The input view: (size, size, 3) float32 in [0, 1] on white. RGB is taken as on white; RGBA (straight colour)
    is composited on white. An image of k x size pixels (k an integer) is box-averaged down by k."""
    if not os.path.isfile(path):
        raise MissingFileError(f"input image not found: {path}")
    import imageio.v3 as iio
    try:
        img = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types on broken files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SamplingInputError(f"cannot read image {path}: {reason}") from None
    channels = img.shape[-1] if img.ndim == 3 else 1
    if img.ndim not in (2, 3) or channels not in (3, 4):
        raise SamplingInputError(f"{path} has {channels} channel(s) (array {img.shape}); expected an RGB or RGBA "
                                 "image")
    x = img.astype(np.float64) / float(np.iinfo(img.dtype).max) if np.issubdtype(img.dtype, np.integer) \
        else np.clip(img.astype(np.float64), 0.0, 1.0)
    if channels == 4:
        a = x[..., 3:]
        x = x[..., :3] * a + (1.0 - a)
    h, w = x.shape[:2]
    if h != w or h % size:
        raise SamplingInputError(f"{path} is {w}x{h} but the model takes {size}x{size} images; give a square image "
                                 f"of {size} pixels (or an integer multiple of it, which is box-averaged down)")
    k = h // size
    if k > 1:
        x = x.reshape(size, k, size, k, 3).mean(axis=(1, 3))
    return x.astype(np.float32)


def foreground_mask(rgb: np.ndarray, tol: float = 0.1) -> np.ndarray:
    """(..., H, W) bool: pixels of an image on white where some channel is below 1 - tol (the silhouette)."""
    return np.asarray(rgb).min(axis=-1) < 1.0 - float(tol)


def sources_label(indices: Sequence[int]) -> str:
    """[0, 3, 1, 5] -> "0 3 1 5" (the conditioning sets in summaries)."""
    return " ".join(str(int(i)) for i in indices)
