"""Procedural multiview dataset: coloured primitives rendered from 4 orbit views with exact cameras.

Pure numpy. Conventions are the project's (see lift3d/data/multiview_cameras.py and mvdream/cameras.py):
- world is z-up, objects are centred at the origin and fit in a sphere of radius ~0.55
  (threestudio's implicit volume has radius 1);
- c2w columns are [right, up, -forward | position] (OpenGL camera looking along -z), built with
  `look_at_c2w` from `spherical_to_cartesian(elevation, azimuth, distance)`; azimuth from +x towards +y;
- rays come from `get_ray_directions` / `get_rays` with focal = 0.5 * H / tan(fovy / 2), the same as the
  camera sampler, so `get_mvp_matrix(c2w, get_projection_matrix(fovy, ...))` projects a 3D point onto the
  pixel where the renderer draws it (NDC x -> column, NDC y -> row, rows going down);
- the MVDream camera condition is `normalize_camera(c2w)` flattened to 16, exactly what the SDS guidance
  feeds the UNet.
The background is white by default: MVDream's multiview renders and its SDS outputs are objects on a
plain light background, and a white background keeps every colour but "white" well separated.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np

from neutral.errors import UserError
from neutral.files import write_atomically
from neutral.lift3d.multiview_cameras import (
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
    look_at_c2w,
    spherical_to_cartesian,
)
from mindspore_impl.mvdream.cameras import normalize_camera

FORMAT = "mvdream-primitives-v1"
TRACE_BOUND = 0.75  # every primitive lies inside this sphere; rays start where they enter it

SdfFn = Callable[[np.ndarray], np.ndarray]


class DatasetError(UserError, ValueError):
    """A dataset file is missing, is not a primitives dataset, or is inconsistent."""


# ----------------------------------------------------------------------------- shapes (z-up, centred)


def _length(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(v * v, axis=-1))


def sdf_sphere(p: np.ndarray, radius: float = 0.42) -> np.ndarray:
    return _length(p) - radius


def sdf_cube(p: np.ndarray, half: float = 0.3) -> np.ndarray:
    q = np.abs(p) - half
    return _length(np.maximum(q, 0.0)) + np.minimum(q.max(axis=-1), 0.0)


def sdf_cylinder(p: np.ndarray, radius: float = 0.3, half_height: float = 0.35) -> np.ndarray:
    d = np.stack([_length(p[..., :2]) - radius, np.abs(p[..., 2]) - half_height], -1)
    return np.minimum(d.max(axis=-1), 0.0) + _length(np.maximum(d, 0.0))


def sdf_cone(p: np.ndarray, radius: float = 0.38, half_height: float = 0.38) -> np.ndarray:
    """Apex at z = +h, base disc of `radius` at z = -h. Max of half-space distances: exact sign, a
    lower bound of the distance (safe for sphere tracing), exact normals on the surface."""
    q, z, h = _length(p[..., :2]), p[..., 2], half_height
    side = (q * 2.0 * h + (z - h) * radius) / math.hypot(2.0 * h, radius)
    return np.maximum(side, -h - z)


def sdf_torus(p: np.ndarray, major: float = 0.33, minor: float = 0.14) -> np.ndarray:
    """Ring lying in the xy plane (axis = world up)."""
    q = np.stack([_length(p[..., :2]) - major, p[..., 2]], -1)
    return _length(q) - minor


def sdf_capsule(p: np.ndarray, radius: float = 0.22, half_length: float = 0.25) -> np.ndarray:
    axis_pt = np.zeros_like(p)
    axis_pt[..., 2] = np.clip(p[..., 2], -half_length, half_length)
    return _length(p - axis_pt) - radius


def sdf_pyramid(p: np.ndarray, half_base: float = 0.35, z_base: float = -0.3, z_apex: float = 0.35) -> np.ndarray:
    """Square pyramid; max of the 4 side planes and the base plane (exact sign, distance lower bound)."""
    height = z_apex - z_base
    norm = math.hypot(height, half_base)
    dz = (p[..., 2] - z_apex) * half_base
    sx = (np.abs(p[..., 0]) * height + dz) / norm
    sy = (np.abs(p[..., 1]) * height + dz) / norm
    return np.maximum(np.maximum(sx, sy), z_base - p[..., 2])


SHAPES: Dict[str, SdfFn] = {
    "cube": sdf_cube,
    "sphere": sdf_sphere,
    "cylinder": sdf_cylinder,
    "cone": sdf_cone,
    "torus": sdf_torus,
    "capsule": sdf_capsule,
    "pyramid": sdf_pyramid,
}
DEFAULT_SHAPES = ("cube", "sphere", "cylinder", "cone", "torus")

# albedo in [0, 1]; "black" is dark gray so shading still shows its shape
COLORS: Dict[str, tuple] = {
    "red": (0.86, 0.10, 0.10),
    "green": (0.10, 0.70, 0.16),
    "blue": (0.12, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "purple": (0.55, 0.16, 0.75),
    "pink": (1.00, 0.45, 0.70),
    "brown": (0.50, 0.30, 0.12),
    "gray": (0.50, 0.50, 0.50),
    "black": (0.10, 0.10, 0.10),
    "white": (0.95, 0.95, 0.95),
}
# white is left out by default: on the white background only its shading outlines it
DEFAULT_COLORS = ("red", "green", "blue", "yellow", "orange", "purple", "gray", "black")


def _check_name(name: str, table: Dict, what: str) -> None:
    if name not in table:
        raise KeyError(f"unknown {what} '{name}'; known: {', '.join(table)}")


def shape_sdf(name: str, points: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of the named primitive at `points` (..., 3) -> (...)."""
    _check_name(name, SHAPES, "shape")
    return SHAPES[name](np.asarray(points, dtype=np.float64))


def inside(name: str, points: np.ndarray) -> np.ndarray:
    """Boolean occupancy of the named primitive at `points` (..., 3)."""
    return shape_sdf(name, points) <= 0.0


def grid_points(resolution: int = 64, bound: float = 0.6) -> np.ndarray:
    """(R, R, R, 3) cell centres of a cube [-bound, bound]^3."""
    c = (np.arange(resolution) + 0.5) / resolution * 2.0 * bound - bound
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)


def occupancy_grid(shape: Union[str, SdfFn], resolution: int = 64, bound: float = 0.6) -> np.ndarray:
    """(R, R, R) bool occupancy of a named shape or an SDF callable."""
    if isinstance(shape, str):
        _check_name(shape, SHAPES, "shape")
        shape = SHAPES[shape]
    return shape(grid_points(resolution, bound)) <= 0.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean (or >= 0.5 soft) arrays of the same shape."""
    a, b = np.asarray(a) >= 0.5, np.asarray(b) >= 0.5
    if a.shape != b.shape:
        raise ValueError(f"iou needs equal shapes, got {a.shape} and {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def volume_iou(shape_a: Union[str, SdfFn, np.ndarray], shape_b: Union[str, SdfFn, np.ndarray],
               resolution: int = 64, bound: float = 0.6) -> float:
    """Volumetric IoU on a grid; each side is a shape name, an SDF callable or an occupancy grid."""
    def occ(s):
        return s if isinstance(s, np.ndarray) else occupancy_grid(s, resolution, bound)
    return iou(occ(shape_a), occ(shape_b))


# ----------------------------------------------------------------------------- cameras


def make_cameras(elevation_deg: np.ndarray, azimuth_deg: np.ndarray, distance: np.ndarray,
                 fovy_deg: np.ndarray, height: int, width: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Flat (B,) angles in degrees -> float64 c2w (B,4,4), proj_mtx, mvp_mtx and camera condition (B,16).

    Same construction as RandomMultiviewCameraDataModule (z-up look-at the origin); near/far 0.01/100.
    """
    width = height if width is None else width
    elevation_deg, azimuth_deg, distance, fovy_deg = (np.asarray(x, dtype=np.float64).reshape(-1)
                                                      for x in (elevation_deg, azimuth_deg, distance, fovy_deg))
    positions = spherical_to_cartesian(np.radians(elevation_deg), np.radians(azimuth_deg), distance)
    c2w = look_at_c2w(positions, np.zeros_like(positions), np.array([[0.0, 0.0, 1.0]]))
    proj = get_projection_matrix(np.radians(fovy_deg), width / height, 0.01, 100.0)
    return {"c2w": c2w, "proj_mtx": proj, "mvp_mtx": get_mvp_matrix(c2w, proj),
            "camera": camera_condition(c2w)}


def camera_condition(c2w: np.ndarray) -> np.ndarray:
    """MVDream's camera input: normalize_camera(c2w as float32) -> (B, 16) float32, as the SDS guidance."""
    return normalize_camera(np.asarray(c2w, dtype=np.float32).reshape(-1, 4, 4)).astype(np.float32)


def sample_orbit(rng: np.random.Generator, num_objects: int, n_view: int = 4,
                 elevation_range=(0.0, 30.0), relative_distance_range=(0.8, 1.0),
                 fovy_deg: float = 40.0) -> Dict[str, np.ndarray]:
    """Per object: n_view azimuths 360/n_view apart with one random offset (threestudio's
    batch_uniform_azimuth over [-180, 180)), one elevation uniform in degrees, one distance
    = relative distance / tan(fovy / 2) (threestudio's relative_radius). Arrays (N, V) in degrees."""
    u = rng.random(num_objects)[:, None] + np.arange(n_view)[None, :]
    azimuth = u / n_view * 360.0 - 180.0
    elevation = rng.uniform(*elevation_range, size=num_objects)
    rel = rng.uniform(*relative_distance_range, size=num_objects)
    distance = rel / math.tan(math.radians(fovy_deg) / 2.0)

    def per_view(x):
        return np.repeat(x[:, None], n_view, axis=1)
    return {"elevation": per_view(elevation), "azimuth": azimuth, "distance": per_view(distance),
            "fovy": np.full((num_objects, n_view), float(fovy_deg))}


def sample_random_views(rng: np.random.Generator, num_objects: int, n_view: int = 8,
                        elevation_range=(0.0, 30.0), relative_distance_range=(0.8, 1.0),
                        fovy_deg: float = 40.0) -> Dict[str, np.ndarray]:
    """Per view, independently: azimuth uniform in [-180, 180), elevation uniform in degrees, distance = relative
    distance / tan(fovy / 2); views at random around each object, as Zero-1-to-3's training renders
    (cvlab-columbia/zero123: 12 random views per object, pairs of them with their relative camera). Arrays (N, V)."""
    azimuth = rng.uniform(-180.0, 180.0, size=(num_objects, n_view))
    elevation = rng.uniform(*elevation_range, size=(num_objects, n_view))
    rel = rng.uniform(*relative_distance_range, size=(num_objects, n_view))
    distance = rel / math.tan(math.radians(fovy_deg) / 2.0)
    return {"elevation": elevation, "azimuth": azimuth, "distance": distance,
            "fovy": np.full((num_objects, n_view), float(fovy_deg))}


VIEW_SAMPLINGS = ("orbit", "random")


def canonical_cameras(size: int, n_view: int = 4, elevation_deg: float = 15.0, azimuth_start: float = 0.0,
                      relative_distance: float = 0.9, fovy_deg: float = 40.0) -> Dict[str, np.ndarray]:
    """The 4 canonical views for silhouette checks: azimuth_start + k * 360 / n_view (k = 0..n_view-1)."""
    azimuth = azimuth_start + np.arange(n_view) * (360.0 / n_view)
    distance = relative_distance / math.tan(math.radians(fovy_deg) / 2.0)
    out = make_cameras(np.full(n_view, elevation_deg), azimuth, np.full(n_view, distance),
                       np.full(n_view, fovy_deg), size)
    out.update(elevation=np.full(n_view, elevation_deg), azimuth=azimuth, distance=np.full(n_view, distance),
               fovy=np.full(n_view, fovy_deg))
    return out


# ----------------------------------------------------------------------------- renderer


def camera_rays(c2w: np.ndarray, fovy_deg: np.ndarray, size: int):
    """World rays through the pixel centres of a size x size image: (B, size, size, 3) each, exactly as
    the camera sampler builds them (focal = 0.5 * size / tan(fovy / 2))."""
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    fovy = np.radians(np.asarray(fovy_deg, dtype=np.float64).reshape(-1))
    focal = 0.5 * size / np.tan(0.5 * fovy)
    dirs = np.broadcast_to(get_ray_directions(size, size), (c2w.shape[0], size, size, 3)).copy()
    dirs[..., :2] = dirs[..., :2] / focal[:, None, None, None]
    return get_rays(dirs, c2w, normalize=True)


def sphere_trace(sdf: SdfFn, rays_o: np.ndarray, rays_d: np.ndarray, max_steps: int = 96,
                 eps: float = 1e-4, accept: float = 2e-3):
    """Flat rays (R, 3) with unit directions -> hit (R,) bool, hit points (R, 3).

    Rays start where they enter the TRACE_BOUND sphere; only unfinished rays are stepped, so the cost
    falls with every step. A ray still unfinished after max_steps counts as a hit if within `accept`.
    """
    b = np.sum(rays_o * rays_d, -1)
    disc = b * b - (np.sum(rays_o * rays_o, -1) - TRACE_BOUND ** 2)
    hit = np.zeros(rays_o.shape[0], dtype=bool)
    points = np.zeros_like(rays_o)
    idx = np.nonzero(disc > 0.0)[0]
    sq = np.sqrt(disc[idx])
    t, t_far = np.maximum(-b[idx] - sq, 0.0), -b[idx] + sq
    o, d = rays_o[idx], rays_d[idx]
    for _ in range(max_steps):
        if idx.size == 0:
            break
        p = o + t[:, None] * d
        dist = sdf(p)
        done = dist < eps
        hit[idx[done]] = True
        points[idx[done]] = p[done]
        keep = ~done & (t <= t_far)
        idx, t, t_far, o, d = idx[keep], t[keep] + dist[keep], t_far[keep], o[keep], d[keep]
    if idx.size:
        p = o + t[:, None] * d
        close = np.abs(sdf(p)) < accept
        hit[idx[close]] = True
        points[idx[close]] = p[close]
    return hit, points


def sdf_normals(sdf: SdfFn, points: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Unit normals by central differences, (R, 3)."""
    grads = []
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        grads.append(sdf(points + e) - sdf(points - e))
    n = np.stack(grads, -1)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def render(sdf: SdfFn, c2w: np.ndarray, fovy_deg: np.ndarray, size: int, albedo=None, supersample: int = 2,
           background=(1.0, 1.0, 1.0), ambient: float = 0.3) -> Dict[str, np.ndarray]:
    """Render an SDF from B cameras -> rgb (B, size, size, 3) float in [0, 1] and alpha (B, size, size).

    Lambertian + ambient shading, light slightly above the camera (position + 0.3 * distance * camera
    up), so faces turned to the viewer are lit. Antialiased by supersample^2 rays per pixel.
    `albedo` is (3,) or (B, 3); None renders a silhouette only (rgb = alpha on black).
    """
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    n_cam, s = c2w.shape[0], size * supersample
    rays_o, rays_d = camera_rays(c2w, np.broadcast_to(np.asarray(fovy_deg, dtype=np.float64), (n_cam,)), s)
    hit, points = sphere_trace(sdf, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
    alpha = hit.astype(np.float64)
    if albedo is None:
        rgb = np.repeat(alpha[:, None], 3, axis=1)
    else:
        albedo = np.broadcast_to(np.asarray(albedo, dtype=np.float64), (n_cam, 3))
        cam_pos = c2w[:, :3, 3]
        light = cam_pos + 0.3 * np.linalg.norm(cam_pos, axis=-1, keepdims=True) * c2w[:, :3, 1]
        cam_of_ray = np.repeat(np.arange(n_cam), s * s)[hit]
        p = points[hit]
        to_light = light[cam_of_ray] - p
        to_light /= np.linalg.norm(to_light, axis=-1, keepdims=True)
        lambert = np.clip(np.sum(sdf_normals(sdf, p) * to_light, -1), 0.0, 1.0)
        shade = ambient + (1.0 - ambient) * lambert
        rgb = np.zeros((hit.shape[0], 3))
        rgb[hit] = albedo[cam_of_ray] * shade[:, None]
        rgb = rgb + (1.0 - alpha[:, None]) * np.asarray(background, dtype=np.float64)
    rgb = rgb.reshape(n_cam, size, supersample, size, supersample, 3).mean(axis=(2, 4))
    alpha = alpha.reshape(n_cam, size, supersample, size, supersample).mean(axis=(2, 4))
    return {"rgb": np.clip(rgb, 0.0, 1.0), "alpha": alpha}


def render_silhouettes(shape: Union[str, SdfFn], size: int = 64, supersample: int = 2,
                       **camera_kwargs) -> np.ndarray:
    """(V, size, size) soft silhouettes of a shape name / SDF from `canonical_cameras(size, **kw)`."""
    if isinstance(shape, str):
        _check_name(shape, SHAPES, "shape")
        shape = SHAPES[shape]
    cams = canonical_cameras(size, **camera_kwargs)
    return render(shape, cams["c2w"], cams["fovy"], size, albedo=None, supersample=supersample)["alpha"]


def project_points(points: np.ndarray, mvp: np.ndarray, size: int) -> np.ndarray:
    """World points (P, 3) through one mvp (4, 4) -> pixel coordinates (P, 2) as (column, row), with
    pixel centres at +0.5 (the renderer's convention; the projection's y flip makes rows go down)."""
    ph = np.concatenate([points, np.ones((points.shape[0], 1))], -1) @ mvp.T
    ndc = ph[:, :2] / ph[:, 3:4]
    return (ndc + 1.0) * 0.5 * size


# ----------------------------------------------------------------------------- dataset


def caption(color: str, shape: str) -> str:
    article = "an" if color[0] in "aeiou" else "a"
    return f"{article} {color} {shape}"


def parse_prompt(prompt: str):
    """(colour, shape) named in a prompt such as "a red cube" (None where a part is not found)."""
    words = prompt.lower().replace(",", " ").split()
    color = next((w for w in words if w in COLORS), None)
    shape = next((w for w in words if w in SHAPES), None)
    return color, shape


def make_dataset(num_objects: int, size: int = 32, seed: int = 0, shapes: Sequence[str] = DEFAULT_SHAPES,
                 colors: Sequence[str] = DEFAULT_COLORS, n_view: int = 4, elevation_range=(0.0, 30.0),
                 relative_distance_range=(0.8, 1.0), fovy_deg: float = 40.0, supersample: int = 2,
                 background=(1.0, 1.0, 1.0), chunk: int = 32, progress: bool = False,
                 views: str = "orbit") -> Dict[str, np.ndarray]:
    """Render `num_objects` objects x n_view views. Every random number is drawn up front from one
    Generator(seed), so the result does not depend on `chunk`. views "orbit": `sample_orbit` (MVDream's training
    views); "random": `sample_random_views` (each view anywhere around the object, for view-pair training)."""
    if views not in VIEW_SAMPLINGS:
        raise ValueError(f"views must be one of {VIEW_SAMPLINGS}, got {views!r}")
    for s in shapes:
        _check_name(s, SHAPES, "shape")
    for c in colors:
        _check_name(c, COLORS, "colour")
    if num_objects < 1 or size < 1:
        raise ValueError(f"num_objects and size must be >= 1, got {num_objects}, {size}")
    rng = np.random.default_rng(seed)
    shape_ids = rng.integers(0, len(shapes), num_objects)
    color_ids = rng.integers(0, len(colors), num_objects)
    sampler = sample_orbit if views == "orbit" else sample_random_views
    orbit = sampler(rng, num_objects, n_view, elevation_range, relative_distance_range, fovy_deg)
    cams = make_cameras(orbit["elevation"], orbit["azimuth"], orbit["distance"], orbit["fovy"], size)
    c2w = cams["c2w"].reshape(num_objects, n_view, 4, 4)
    palette = np.array([COLORS[c] for c in colors], dtype=np.float64)

    images = np.zeros((num_objects, n_view, size, size, 3), dtype=np.uint8)
    masks = np.zeros((num_objects, n_view, size, size), dtype=np.uint8)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=num_objects, unit="obj", desc=f"render {size}x{size}")
    for sid, name in enumerate(shapes):
        objs = np.nonzero(shape_ids == sid)[0]
        for start in range(0, objs.size, chunk):
            ids = objs[start:start + chunk]
            albedo = np.repeat(palette[color_ids[ids]], n_view, axis=0)
            out = render(SHAPES[name], c2w[ids].reshape(-1, 4, 4), orbit["fovy"][ids].reshape(-1), size,
                         albedo=albedo, supersample=supersample, background=background)
            images[ids] = _to_uint8(out["rgb"]).reshape(ids.size, n_view, size, size, 3)
            masks[ids] = _to_uint8(out["alpha"]).reshape(ids.size, n_view, size, size)
            if bar is not None:
                bar.update(ids.size)
    if bar is not None:
        bar.close()
    return {
        "format": np.array(FORMAT),
        "images": images,
        "masks": masks,
        "cameras": cams["camera"].reshape(num_objects, n_view, 16),
        "c2w": c2w.astype(np.float32),
        "elevation": orbit["elevation"].astype(np.float32),
        "azimuth": orbit["azimuth"].astype(np.float32),
        "distance": orbit["distance"].astype(np.float32),
        "fovy": orbit["fovy"].astype(np.float32),
        "captions": np.array([caption(colors[c], shapes[s]) for s, c in zip(shape_ids, color_ids)]),
        "shape_ids": shape_ids.astype(np.int32),
        "color_ids": color_ids.astype(np.int32),
        "shape_names": np.array(list(shapes)),
        "color_names": np.array(list(colors)),
        "palette": palette.astype(np.float32),
        "background": np.asarray(background, dtype=np.float32),
        "seed": np.array(seed, dtype=np.int64),
        "resolution": np.array(size, dtype=np.int64),
        "supersample": np.array(supersample, dtype=np.int64),
    }


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


REQUIRED = {  # key -> number of dimensions
    "format": 0, "images": 5, "masks": 4, "cameras": 3, "c2w": 4, "elevation": 2, "azimuth": 2,
    "distance": 2, "fovy": 2, "captions": 1, "shape_ids": 1, "color_ids": 1, "shape_names": 1,
    "color_names": 1, "palette": 2, "background": 1, "seed": 0, "resolution": 0, "supersample": 0,
}


def save_dataset(data: Dict[str, np.ndarray], path: str) -> str:
    """Write a compressed .npz atomically (temp file in the same folder, then rename). Returns the path."""
    _validate(data, path)
    return write_atomically(path, lambda f: np.savez_compressed(f, **data))


def load_dataset(path: str) -> Dict[str, np.ndarray]:
    """Read a file written by `save_dataset`; raises DatasetError saying what is wrong otherwise."""
    if not os.path.isfile(path):
        raise DatasetError(f"dataset file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise DatasetError(f"{path} is a single .npy array, not a primitives dataset (.npz)")
            data = {k: z[k] for k in z.files}
    except DatasetError:
        raise
    except Exception as exc:  # numpy raises ValueError/OSError/BadZipFile/EOFError on foreign files
        raise DatasetError(f"{path} is not a readable .npz primitives dataset ({type(exc).__name__}: {exc})") from exc
    _validate(data, path)
    return data


def _validate(data: Dict[str, np.ndarray], path: str) -> None:
    fmt = data.get("format")
    if fmt is None or str(fmt) != FORMAT:
        raise DatasetError(f"{path}: not a primitives dataset (format {None if fmt is None else str(fmt)!r}, "
                           f"expected {FORMAT!r})")
    missing = sorted(set(REQUIRED) - set(data))
    if missing:
        raise DatasetError(f"{path}: missing arrays {missing}")
    for key, ndim in REQUIRED.items():
        if np.ndim(data[key]) != ndim:
            raise DatasetError(f"{path}: '{key}' has {np.ndim(data[key])} dims, expected {ndim}")
    n, v, h, w, _ = data["images"].shape
    expect = {"masks": (n, v, h, w), "cameras": (n, v, 16), "c2w": (n, v, 4, 4), "elevation": (n, v),
              "azimuth": (n, v), "distance": (n, v), "fovy": (n, v), "captions": (n,), "shape_ids": (n,),
              "color_ids": (n,)}
    for key, shape in expect.items():
        if tuple(data[key].shape) != shape:
            raise DatasetError(f"{path}: '{key}' has shape {tuple(data[key].shape)}, expected {shape}")
    if data["images"].dtype != np.uint8 or data["masks"].dtype != np.uint8:
        raise DatasetError(f"{path}: images/masks must be uint8, got {data['images'].dtype}/{data['masks'].dtype}")
    if h != int(data["resolution"]) or w != h:
        raise DatasetError(f"{path}: images are {h}x{w} but resolution is {int(data['resolution'])}")
