"""Procedural GeNVS training scenes: 1-3 coloured primitives rendered from 8-12 random views with exact cameras,
on white, written in the SRN layout (neutral/genvs/srn_dataset.py) so the same data module reads them and SRN cars.

Pure numpy, built on the primitives renderer (mindspore_impl/mvdream/data/primitives.py): its SDFs, colours,
cameras (`make_cameras`: z-up look-at the origin, the project's OpenGL c2w) and sphere tracer. A scene is the union
of its primitives' SDFs; each primitive is a unit shape scaled, turned about the world z axis and moved, kept inside
a sphere of radius BOUND (within the tracer's TRACE_BOUND) and, as far as a few random tries allow, apart from the
others. Every view looks at the origin from `distance` with a vertical field of view `fovy_deg`, so the focal
length is 0.5 * size / tan(fovy / 2) pixels and the principal point the image centre.

Scene i is drawn from Generator([seed, i]) alone: the same seed gives the same scenes, and a larger num_scenes
only adds scenes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mindspore_impl.mvdream.data import primitives as P
from neutral.errors import UserError
from neutral.genvs.srn_dataset import write_srn_object

BOUND = 0.72  # every primitive lies inside this sphere (the tracer starts rays at P.TRACE_BOUND = 0.75)
UNIT_RADIUS = 0.6  # every unit primitive of P.SHAPES lies inside this sphere (the pyramid reaches 0.58)
PLACE_TRIES = 64  # random positions tried per primitive before taking the one with the most room
SCENE_SHAPES = tuple(P.SHAPES)
SCENE_COLORS = P.DEFAULT_COLORS  # no white: it would vanish on the white background


class SceneSettingsError(UserError, ValueError):
    """A setting of the procedural scene generator is out of range (the message names it)."""


@dataclass
class Primitive:
    shape: str  # a key of P.SHAPES
    color: str  # a key of P.COLORS
    scale: float
    angle: float  # radians about the world z axis
    translation: np.ndarray  # (3,)

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Signed distance at world points (..., 3): the unit shape's, in its own frame, times the scale."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot_z = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        local = (p - self.translation) @ rot_z / self.scale  # row vectors: R^T (p - t)
        return self.scale * P.SHAPES[self.shape](local)


def scene_sdf(scene: Sequence[Primitive]) -> Callable[[np.ndarray], np.ndarray]:
    """The union of the primitives: the minimum of their signed distances."""
    return lambda p: np.min(np.stack([q.sdf(p) for q in scene]), axis=0)


def scene_albedo(scene: Sequence[Primitive]) -> Callable[[np.ndarray], np.ndarray]:
    """Points (R, 3) on the surface -> (R, 3) colour of the nearest primitive."""
    palette = np.array([P.COLORS[q.color] for q in scene], dtype=np.float64)
    return lambda p: palette[np.argmin(np.stack([q.sdf(p) for q in scene]), axis=0)]


def render_scene(scene: Sequence[Primitive], c2w: np.ndarray, fovy_deg: float, size: int, supersample: int = 2,
                 ambient: float = 0.3) -> Dict[str, np.ndarray]:
    """rgb (B, size, size, 3) on white and alpha (B, size, size) of a scene from cameras c2w (B, 4, 4).

    The shading and light of P.render (Lambertian + ambient, light above the camera), but with a colour per surface
    point: P.render takes one albedo per camera."""
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    n_cam, s = c2w.shape[0], size * supersample
    sdf, albedo = scene_sdf(scene), scene_albedo(scene)
    rays_o, rays_d = P.camera_rays(c2w, np.full(n_cam, float(fovy_deg)), s)
    hit, points = P.sphere_trace(sdf, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
    cam_pos = c2w[:, :3, 3]
    light = cam_pos + 0.3 * np.linalg.norm(cam_pos, axis=-1, keepdims=True) * c2w[:, :3, 1]
    cam_of_ray = np.repeat(np.arange(n_cam), s * s)[hit]
    p = points[hit]
    to_light = light[cam_of_ray] - p
    to_light /= np.linalg.norm(to_light, axis=-1, keepdims=True)
    lambert = np.clip(np.sum(P.sdf_normals(sdf, p) * to_light, -1), 0.0, 1.0)
    rgb = np.ones((hit.shape[0], 3))
    rgb[hit] = albedo(p) * (ambient + (1.0 - ambient) * lambert)[:, None]
    rgb = rgb.reshape(n_cam, size, supersample, size, supersample, 3).mean(axis=(2, 4))
    alpha = hit.astype(np.float64).reshape(n_cam, size, supersample, size, supersample).mean(axis=(2, 4))
    return {"rgb": np.clip(rgb, 0.0, 1.0), "alpha": alpha}


def _place(rng: np.random.Generator, radii: np.ndarray, z_range: float) -> np.ndarray:
    """(K, 3) centres inside BOUND; each keeps its bounding sphere off the earlier ones when a try allows, else
    takes the try with the most room."""
    centres: List[np.ndarray] = []
    for r in radii:
        best, best_gap = None, -np.inf
        for _ in range(PLACE_TRIES):
            rho, phi = (BOUND - r) * math.sqrt(rng.random()), rng.uniform(0.0, 2.0 * math.pi)
            t = np.array([rho * math.cos(phi), rho * math.sin(phi), rng.uniform(-z_range, z_range)])
            t *= min(1.0, (BOUND - r) / max(np.linalg.norm(t), 1e-12))  # z may push it out: pull it back in
            gaps = [np.linalg.norm(t - c) - r - rc for c, rc in zip(centres, radii)]
            gap = min(gaps) if gaps else np.inf
            if gap > best_gap:
                best, best_gap = t, gap
            if gap >= 0.0:
                break
        centres.append(best)
    return np.stack(centres)


def sample_scene(rng: np.random.Generator, n_primitives: Tuple[int, int] = (1, 3),
                 scale_range: Tuple[float, float] = (0.5, 0.85), z_range: float = 0.15) -> List[Primitive]:
    """1-3 primitives: random shapes, distinct colours, scales, turns about z and positions."""
    k = int(rng.integers(n_primitives[0], n_primitives[1] + 1))
    shapes = rng.integers(0, len(SCENE_SHAPES), k)
    colors = rng.choice(len(SCENE_COLORS), k, replace=False)
    scales = rng.uniform(*scale_range, size=k)
    angles = rng.uniform(0.0, 2.0 * math.pi, size=k)
    centres = _place(rng, UNIT_RADIUS * scales, z_range)
    return [Primitive(SCENE_SHAPES[shapes[i]], SCENE_COLORS[colors[i]], float(scales[i]), float(angles[i]),
                      centres[i]) for i in range(k)]


def sample_views(rng: np.random.Generator, n_views: Tuple[int, int], elevation_range: Tuple[float, float],
                 distance: float, fovy_deg: float, size: int) -> np.ndarray:
    """(V, 4, 4) c2w: V in n_views, azimuth uniform over the circle, elevation uniform in the range (degrees)."""
    v = int(rng.integers(n_views[0], n_views[1] + 1))
    azimuth = rng.uniform(0.0, 360.0, size=v)
    elevation = rng.uniform(*elevation_range, size=v)
    return P.make_cameras(elevation, azimuth, np.full(v, distance), np.full(v, fovy_deg), size)["c2w"]


def focal_pixels(fovy_deg: float, size: int) -> float:
    """Focal length in pixels of a size x size image with vertical field of view fovy_deg (as P.camera_rays)."""
    return 0.5 * size / math.tan(0.5 * math.radians(fovy_deg))


def check_settings(num_scenes: int, size: int, n_views: Tuple[int, int], elevation_range: Tuple[float, float],
                   n_primitives: Tuple[int, int], distance: float, fovy_deg: float, supersample: int) -> None:
    """SceneSettingsError naming the first setting out of range."""
    if num_scenes < 1:
        raise SceneSettingsError(f"num_scenes must be >= 1, got {num_scenes}")
    if size < 1 or supersample < 1:
        raise SceneSettingsError(f"size and supersample must be >= 1, got {size} and {supersample}")
    if not 2 <= n_views[0] <= n_views[1]:
        raise SceneSettingsError(f"views range must be LO <= HI with LO >= 2 (a source and a target), got {n_views}")
    if not -90.0 < elevation_range[0] <= elevation_range[1] < 90.0:
        raise SceneSettingsError(f"elevation range must be LO <= HI inside (-90, 90) degrees, got {elevation_range}")
    if not 1 <= n_primitives[0] <= n_primitives[1] <= len(SCENE_COLORS):
        raise SceneSettingsError(f"primitives range must be 1 <= LO <= HI <= {len(SCENE_COLORS)}, got {n_primitives}")
    if not 0.0 < fovy_deg < 180.0:
        raise SceneSettingsError(f"fovy must lie in (0, 180) degrees, got {fovy_deg}")
    nearest = BOUND / math.sin(0.5 * math.radians(fovy_deg))  # the bounding sphere just fills the view
    if distance <= nearest:
        raise SceneSettingsError(f"distance {distance} puts the scene (radius {BOUND}) partly outside the "
                                 f"{fovy_deg} degree view; use a distance > {nearest:.3g}")


def make_scene(seed: int, index: int, size: int = 32, n_views: Tuple[int, int] = (8, 12),
               elevation_range: Tuple[float, float] = (-10.0, 40.0), n_primitives: Tuple[int, int] = (1, 3),
               distance: float = 2.2, fovy_deg: float = 40.0, supersample: int = 2) -> Dict[str, object]:
    """Scene `index` of `seed`: {primitives, rgb (V, size, size, 3), alpha (V, size, size), c2w (V, 4, 4), focal}."""
    rng = np.random.default_rng([int(seed) % 2 ** 63, int(index)])
    scene = sample_scene(rng, n_primitives)
    c2w = sample_views(rng, n_views, elevation_range, distance, fovy_deg, size)
    out = render_scene(scene, c2w, fovy_deg, size, supersample)
    return {"primitives": scene, "rgb": out["rgb"], "alpha": out["alpha"], "c2w": c2w,
            "focal": focal_pixels(fovy_deg, size)}


def scene_name(index: int) -> str:
    return f"scene_{index:05d}"


def write_scenes(out: str, num_scenes: int, size: int = 32, seed: int = 0, n_views: Tuple[int, int] = (8, 12),
                 elevation_range: Tuple[float, float] = (-10.0, 40.0), n_primitives: Tuple[int, int] = (1, 3),
                 distance: float = 2.2, fovy_deg: float = 40.0, supersample: int = 2,
                 progress: Optional[Callable[[int], None]] = None) -> List[str]:
    """Render scenes 0 .. num_scenes - 1 and write each as OUT/scene_NNNNN (RGBA PNGs: colour on white and the
    exact coverage as alpha). `progress(i)` is called after each scene. Returns the object folders."""
    n_views, elevation_range, n_primitives = tuple(n_views), tuple(elevation_range), tuple(n_primitives)
    check_settings(num_scenes, size, n_views, elevation_range, n_primitives, distance, fovy_deg, supersample)
    folders = []
    for i in range(num_scenes):
        s = make_scene(seed, i, size, n_views, elevation_range, n_primitives, distance, fovy_deg, supersample)
        folders.append(write_srn_object(out, scene_name(i), s["rgb"], s["c2w"], s["focal"], alpha=s["alpha"]))
        if progress is not None:
            progress(i)
    return folders
