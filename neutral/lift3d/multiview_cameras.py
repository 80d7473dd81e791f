"""Random multiview camera sampler (MVDream / threestudio "random-multiview-camera-datamodule").

Host-side numpy only: the sampler has no framework numerics, so torch_ref re-exports this module.
Conventions (threestudio): world is z-up, the camera looks at the origin, c2w columns are
[right, up, -forward | position], azimuth is measured from +x towards +y, elevation from the xy plane.

Every random number comes from one numpy Generator, so a run is reproducible from its seed and
resumable from `get_state()`.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

from neutral.config import ConfigError, parse_structured
from neutral.registry import register


@dataclass
class RandomMultiviewCameraDataModuleConfig:
    # defaults are the values of MVDream's mvdream-sd21.yaml
    # height / width / batch_size: an int or one value per resolution stage
    height: Any = field(default_factory=lambda: [64, 256])
    width: Any = field(default_factory=lambda: [64, 256])
    batch_size: Any = field(default_factory=lambda: [8, 4])
    resolution_milestones: List[int] = field(default_factory=lambda: [5000])
    n_view: int = field(default=4, metadata={"min": 1})
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = field(default=4, metadata={"min": 0})
    n_test_views: int = field(default=120, metadata={"min": 0})
    elevation_range: Tuple[float, float] = (0.0, 30.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    camera_distance_range: Tuple[float, float] = (0.8, 1.0)
    relative_radius: bool = True
    fovy_range: Tuple[float, float] = (15.0, 60.0)  # degrees, vertical
    zoom_range: Tuple[float, float] = (1.0, 1.0)
    camera_perturb: float = 0.0
    center_perturb: float = 0.0
    up_perturb: float = 0.0
    light_position_perturb: float = 1.0
    light_distance_range: Tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 3.0
    eval_fovy_deg: float = 40.0
    light_sample_strategy: str = "dreamfusion"
    batch_uniform_azimuth: bool = True
    rays_d_normalize: bool = True


# ----------------------------------------------------------------------------- camera math


def get_ray_directions(height: int, width: int, focal: float = 1.0) -> np.ndarray:
    """Camera-space ray directions through pixel centres, (H, W, 3), OpenGL (x right, y up, -z forward)."""
    i, j = np.meshgrid(np.arange(width, dtype=np.float64) + 0.5,
                       np.arange(height, dtype=np.float64) + 0.5, indexing="xy")
    return np.stack([(i - width / 2) / focal, -(j - height / 2) / focal, -np.ones_like(i)], -1)


def get_rays(directions: np.ndarray, c2w: np.ndarray, normalize: bool = True):
    """(B, H, W, 3) camera directions + (B, 4, 4) c2w -> world rays_o, rays_d, both (B, H, W, 3)."""
    rays_d = np.einsum("bhwj,bij->bhwi", directions, c2w[:, :3, :3])
    rays_o = np.broadcast_to(c2w[:, None, None, :3, 3], rays_d.shape)
    if normalize:
        rays_d = rays_d / np.maximum(np.linalg.norm(rays_d, axis=-1, keepdims=True), 1e-12)
    return rays_o, rays_d


def get_projection_matrix(fovy: np.ndarray, aspect_wh: float, near: float, far: float) -> np.ndarray:
    """OpenGL perspective, (B, 4, 4); y flipped as in threestudio (nvdiffrast image rows go down)."""
    proj = np.zeros((fovy.shape[0], 4, 4), dtype=np.float64)
    proj[:, 0, 0] = 1.0 / (np.tan(fovy / 2.0) * aspect_wh)
    proj[:, 1, 1] = -1.0 / np.tan(fovy / 2.0)
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def get_mvp_matrix(c2w: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """proj @ inverse(c2w) using the rigid-transform inverse [R^T | -R^T t]."""
    w2c = np.zeros_like(c2w)
    rot_t = np.transpose(c2w[:, :3, :3], (0, 2, 1))
    w2c[:, :3, :3] = rot_t
    w2c[:, :3, 3] = -np.einsum("bij,bj->bi", rot_t, c2w[:, :3, 3])
    w2c[:, 3, 3] = 1.0
    return proj @ w2c


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def spherical_to_cartesian(elevation: np.ndarray, azimuth: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Radians -> (B, 3): x = d cos(e) cos(a), y = d cos(e) sin(a), z = d sin(e)."""
    return np.stack([distance * np.cos(elevation) * np.cos(azimuth),
                     distance * np.cos(elevation) * np.sin(azimuth),
                     distance * np.sin(elevation)], -1)


def look_at_c2w(positions: np.ndarray, center: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(B, 4, 4) camera-to-world for cameras at `positions` looking at `center`."""
    lookat = _normalize(center - positions)
    right = _normalize(np.cross(lookat, up))
    up = _normalize(np.cross(right, lookat))
    c2w = np.zeros((positions.shape[0], 4, 4), dtype=np.float64)
    c2w[:, :3, :3] = np.stack([right, up, -lookat], -1)
    c2w[:, :3, 3] = positions
    c2w[:, 3, 3] = 1.0
    return c2w


def sample_elevation_deg(rng: np.random.Generator, n: int, lo: float, hi: float, on_sphere: bool) -> np.ndarray:
    """n elevations in degrees, uniform in degrees, or uniform on the sphere band between lo and hi.

    On the sphere, sin(elevation) is uniform on [sin lo, sin hi]. (The MVDream fork inverted
    `2 * U[(lo+90)/180, (hi+90)/180] - 1`, which for [0, 30] only reaches 19.5 degrees.)
    """
    u = rng.random(n)
    if not on_sphere:
        return lo + u * (hi - lo)
    s_lo, s_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
    return np.degrees(np.arcsin(s_lo + u * (s_hi - s_lo)))


def _camera_batch(c2w, fovy, height, width, normalize_rays) -> Dict[str, np.ndarray]:
    """Rays and the MVP matrix for (B, 4, 4) c2w and (B,) fovy in radians."""
    focal = 0.5 * height / np.tan(0.5 * fovy)
    dirs = np.broadcast_to(get_ray_directions(height, width), (c2w.shape[0], height, width, 3)).copy()
    dirs[..., :2] = dirs[..., :2] / focal[:, None, None, None]
    rays_o, rays_d = get_rays(dirs, c2w, normalize=normalize_rays)
    # near/far as threestudio (hard-coded there too)
    proj = get_projection_matrix(fovy, width / height, 0.01, 100.0)
    return {"rays_o": rays_o, "rays_d": rays_d, "proj_mtx": proj, "mvp_mtx": get_mvp_matrix(c2w, proj)}


def _as_list(value) -> List[int]:
    return [int(value)] if isinstance(value, (int, np.integer)) else [int(v) for v in value]


# ----------------------------------------------------------------------------- the sampler


@register("random-multiview-camera-datamodule")
class RandomMultiviewCameraDataModule:
    """Training cameras: `sample(global_step)`; eval cameras: `val_batch(i)`, `test_batch(i)`.

    A batch holds n_objects = batch_size / n_view groups of n_view contiguous views. Per group one
    elevation, fovy, distance (and perturbations, light) is drawn and repeated; the group's azimuths are
    `(u + arange(n_view)) / n_view * span + azimuth_range[0]`, i.e. n_view views evenly spaced with one
    random offset u. Returned arrays are float32; `fovy`, `elevation`, `azimuth` are in degrees.
    """

    Config = RandomMultiviewCameraDataModuleConfig

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        self.cfg = parse_structured(RandomMultiviewCameraDataModuleConfig, cfg, "random-multiview-camera-datamodule")
        self.heights = _as_list(self.cfg.height)
        self.widths = _as_list(self.cfg.width)
        self.batch_sizes = _as_list(self.cfg.batch_size)
        self._check_stages()
        self.rng = np.random.default_rng(seed)

    def _check_stages(self) -> None:
        cfg, where = self.cfg, "data"
        if not len(self.heights) == len(self.widths) == len(self.batch_sizes):
            raise ConfigError(f"{where}: height {self.heights}, width {self.widths} and batch_size {self.batch_sizes} "
                              "need one value per resolution stage")
        if len(self.heights) > 1 and len(cfg.resolution_milestones) != len(self.heights) - 1:
            raise ConfigError(f"{where}: {len(self.heights)} resolution stages need {len(self.heights) - 1} "
                              f"resolution_milestones, got {list(cfg.resolution_milestones)}")
        for key, values in (("height", self.heights), ("width", self.widths), ("batch_size", self.batch_sizes)):
            if any(v < 1 for v in values):
                raise ConfigError(f"{where}.{key} must be >= 1, got {values if len(values) > 1 else values[0]}")
        for bs in self.batch_sizes:
            if bs % cfg.n_view != 0:
                lo = bs // cfg.n_view * cfg.n_view
                near = sorted({v for v in (lo, lo + cfg.n_view) if v >= cfg.n_view})
                raise ConfigError(f"{where}.batch_size {bs} must be divisible by n_view {cfg.n_view} (whole objects "
                                  f"of n_view views); use batch_size={' or '.join(map(str, near))}")
        if cfg.light_sample_strategy not in ("dreamfusion", "magic3d"):
            raise ConfigError(f"{where}: unknown light_sample_strategy '{cfg.light_sample_strategy}' "
                              "(dreamfusion | magic3d)")

    # --- stages and resume state

    def stage(self, global_step: int) -> Tuple[int, int, int]:
        """(height, width, batch_size) in force at `global_step` (milestone step starts the next stage)."""
        if len(self.heights) == 1:
            return self.heights[0], self.widths[0], self.batch_sizes[0]
        i = bisect.bisect_right(list(self.cfg.resolution_milestones), global_step)
        return self.heights[i], self.widths[i], self.batch_sizes[i]

    def get_state(self) -> Dict[str, Any]:
        """JSON-serialisable generator state; `set_state` continues the exact same camera stream."""
        return self.rng.bit_generator.state

    def set_state(self, state: Dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    # --- training batches

    def sample(self, global_step: int) -> Dict[str, Any]:
        cfg, rng = self.cfg, self.rng
        height, width, batch_size = self.stage(global_step)
        n_obj, n_view = batch_size // cfg.n_view, cfg.n_view

        def per_object(x: np.ndarray) -> np.ndarray:
            return np.repeat(x, n_view, axis=0)

        on_sphere = bool(rng.random() >= 0.5)
        elevation_deg = per_object(sample_elevation_deg(rng, n_obj, *cfg.elevation_range, on_sphere=on_sphere))

        a0, a1 = cfg.azimuth_range
        if cfg.batch_uniform_azimuth:
            u = rng.random(n_obj)[:, None] + np.arange(n_view)[None, :]
            azimuth_deg = (u / n_view).reshape(-1) * (a1 - a0) + a0
        else:
            azimuth_deg = rng.uniform(a0, a1, batch_size)

        fovy_deg = per_object(rng.uniform(*cfg.fovy_range, size=n_obj))
        distances = per_object(rng.uniform(*cfg.camera_distance_range, size=n_obj))
        fovy = np.radians(fovy_deg)
        if cfg.relative_radius:
            # threestudio data/uncond_multiview.py (MVDream fork): `scale = 1 / tan(0.5 * fovy)`,
            # distance *= scale, so the object covers the same image fraction at every fovy.
            distances = distances / np.tan(0.5 * fovy)
        zoom = per_object(rng.uniform(*cfg.zoom_range, size=n_obj))
        fovy, fovy_deg = fovy * zoom, fovy_deg * zoom

        positions = spherical_to_cartesian(np.radians(elevation_deg), np.radians(azimuth_deg), distances)
        positions = positions + per_object(rng.uniform(-1.0, 1.0, (n_obj, 3)) * cfg.camera_perturb)
        center = per_object(rng.standard_normal((n_obj, 3)) * cfg.center_perturb)
        up = np.array([0.0, 0.0, 1.0]) + per_object(rng.standard_normal((n_obj, 3)) * cfg.up_perturb)
        light_positions = self._sample_lights(positions, n_obj)

        c2w = look_at_c2w(positions, center, up)
        out = _camera_batch(c2w, fovy, height, width, cfg.rays_d_normalize)
        out.update(c2w=c2w, camera_positions=positions, light_positions=light_positions,
                   elevation=elevation_deg, azimuth=azimuth_deg, camera_distances=distances, fovy=fovy_deg)
        out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
        out.update(height=height, width=width)
        return out

    def _sample_lights(self, positions: np.ndarray, n_obj: int) -> np.ndarray:
        cfg, rng, n_view = self.cfg, self.rng, self.cfg.n_view
        light_distances = np.repeat(rng.uniform(*cfg.light_distance_range, size=n_obj), n_view)
        if cfg.light_sample_strategy == "dreamfusion":
            # direction ~ N(camera position, light_position_perturb), one draw per object
            noise = np.repeat(rng.standard_normal((n_obj, 3)), n_view, axis=0)
            return _normalize(positions + noise * cfg.light_position_perturb) * light_distances[:, None]
        # magic3d: azimuth in [-pi, pi], elevation in [pi/6, pi/2] around the camera direction
        local_z = _normalize(positions)
        local_x = _normalize(np.stack([local_z[:, 1], -local_z[:, 0], np.zeros_like(local_z[:, 0])], -1))
        local_y = _normalize(np.cross(local_z, local_x))
        rot = np.stack([local_x, local_y, local_z], -1)
        light_az = np.repeat(rng.random(n_obj) * 2 * math.pi - math.pi, n_view)
        light_el = np.repeat(rng.random(n_obj) * math.pi / 3 + math.pi / 6, n_view)
        local = spherical_to_cartesian(light_el, light_az, light_distances)
        return np.einsum("bij,bj->bi", rot, local)

    # --- evaluation cameras

    def eval_azimuths_deg(self, split: str) -> np.ndarray:
        """Orbit azimuths, evenly spaced over 360 degrees without repeating the first view."""
        n = self.cfg.n_val_views if split == "val" else self.cfg.n_test_views
        return np.linspace(0.0, 360.0, n + 1)[:n]

    def eval_batch(self, split: str, index: int) -> Dict[str, Any]:
        """One eval view (batch of 1) at eval elevation, distance and fovy; light at the camera."""
        cfg = self.cfg
        azimuths = self.eval_azimuths_deg(split)
        if not 0 <= index < len(azimuths):
            raise IndexError(f"{split} view index {index} out of range [0, {len(azimuths)})")
        azimuth_deg = azimuths[index:index + 1]
        elevation_deg = np.full(1, cfg.eval_elevation_deg)
        distances = np.full(1, cfg.eval_camera_distance)
        fovy_deg = np.full(1, cfg.eval_fovy_deg)
        positions = spherical_to_cartesian(np.radians(elevation_deg), np.radians(azimuth_deg), distances)
        c2w = look_at_c2w(positions, np.zeros_like(positions), np.array([[0.0, 0.0, 1.0]]))
        out = _camera_batch(c2w, np.radians(fovy_deg), cfg.eval_height, cfg.eval_width, cfg.rays_d_normalize)
        out.update(c2w=c2w, camera_positions=positions, light_positions=positions.copy(),
                   elevation=elevation_deg, azimuth=azimuth_deg, camera_distances=distances, fovy=fovy_deg)
        out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
        out.update(height=cfg.eval_height, width=cfg.eval_width, index=index)
        return out

    def val_batch(self, index: int) -> Dict[str, Any]:
        return self.eval_batch("val", index)

    def test_batch(self, index: int) -> Dict[str, Any]:
        return self.eval_batch("test", index)

    @property
    def n_val(self) -> int:
        return self.cfg.n_val_views

    @property
    def n_test(self) -> int:
        return self.cfg.n_test_views
