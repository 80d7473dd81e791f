"""The image-conditioned data module ("single-image-datamodule", threestudio's threestudio/data/image.py upstream):
one input image seen from a reference camera, plus random cameras for a view-conditioned guidance.

Host-side numpy only (no framework numerics), shared by both trees. Conventions are threestudio's (world z up, the
camera looks at the origin, c2w columns [right, up, -forward | position]; neutral/lift3d/multiview_cameras.py).

    sample(step) -> {reference view: rays_o, rays_d (1,H,W,3), c2w (1,4,4), light_positions (1,3) (at the camera),
                     camera_positions, elevation, azimuth, camera_distances, fovy (1,) (degrees),
                     rgb (1,H,W,3) straight colour, mask (1,H,W,1) 0/1 (alpha > 0.5), ref_depth (1,H,W,1) / ref_normal
                     (1,H,W,3) or None, height, width,
                     "random_camera": B random views (the multiview sampler with n_view 1) for the guidance}
    val_batch(0) = the reference view at the eval size with its rgb and mask; val_batch(i > 0) and test_batch(i) =
    the random-camera module's eval orbit.

Input: an RGBA image (alpha is the mask), or an RGB image with `background_color` (a solid colour keyed out: pixels
within `background_tolerance` of it in every channel are background). `read_reference_image` checks it before any
work and raises SingleImageError (one line, the path in it) for a missing file, wrong channels or an empty mask.
The zero123 guidance reads the same image through the same function (neutral/lift3d/zero123_guidance.py).

Upstream facts kept: the reference rays get one random offset (N(0, rays_noise_scale) on origin and direction,
before normalising) per resolution stage, drawn here from (seed, stage) so a resumed run rebuilds the same rays;
random cameras use threestudio's RandomCameraDataModuleConfig (data/uncond.py) defaults and its `progressive_until`
ranges (elevation from eval_elevation_deg and azimuth from 0 widen linearly to the configured ranges over that many
steps; 0 reaches them at step 1, as upstream).
"""
from __future__ import annotations

import bisect
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from neutral.config import ConfigError, parse_structured
from neutral.errors import UserError
from neutral.lift3d.multiview_cameras import (RandomMultiviewCameraDataModule, RandomMultiviewCameraDataModuleConfig,
                                              get_ray_directions, get_rays, look_at_c2w, spherical_to_cartesian)
from neutral.lift3d.transforms_dataset import _resize as area_resize
from neutral.registry import register


class SingleImageError(UserError, ValueError):
    """The input image cannot be used (missing, wrong channels, empty mask); the message names the file."""


@dataclass
class RandomCameraConfig:
    """threestudio's RandomCameraDataModuleConfig (data/uncond.py) with its defaults: the random views."""
    height: Any = 64
    width: Any = 64
    batch_size: Any = 1
    resolution_milestones: List[int] = field(default_factory=list)
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = field(default=1, metadata={"min": 0})
    n_test_views: int = field(default=120, metadata={"min": 0})
    elevation_range: Tuple[float, float] = (-10.0, 90.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    camera_distance_range: Tuple[float, float] = (1.0, 1.5)
    fovy_range: Tuple[float, float] = (40.0, 70.0)
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: Tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    light_sample_strategy: str = "dreamfusion"
    batch_uniform_azimuth: bool = True
    progressive_until: int = field(default=0, metadata={"min": 0})
    rays_d_normalize: bool = True


@dataclass
class SingleImageDataModuleConfig:
    # threestudio's SingleImageDataModuleConfig (data/image.py) and its defaults
    height: Any = 96
    width: Any = 96
    resolution_milestones: List[int] = field(default_factory=list)
    default_elevation_deg: float = 0.0
    default_azimuth_deg: float = -180.0
    default_camera_distance: float = field(default=1.2, metadata={"min": 1e-6})
    default_fovy_deg: float = field(default=60.0, metadata={"min": 1e-3, "max": 179.0})
    image_path: str = ""
    use_random_camera: bool = True
    random_camera: dict = field(default_factory=dict)
    rays_noise_scale: float = field(default=2e-3, metadata={"min": 0.0})
    batch_size: int = 1
    requires_depth: bool = False  # reads <image stem>_depth.png (the stem without _rgba), as upstream
    requires_normal: bool = False  # reads <image stem>_normal.png
    rays_d_normalize: bool = True
    # this port: an RGB image without alpha is keyed against this solid colour ([r, g, b] in 0..1)
    background_color: Optional[List[float]] = None
    background_tolerance: float = field(default=0.02, metadata={"min": 0.0, "max": 1.0})


# ----------------------------------------------------------------------------- reading the input


def _read_raw(path: str, what: str) -> np.ndarray:
    """The file as stored (no channel conversion), integers scaled to [0, 1]."""
    import imageio.v3 as iio
    if not path:
        raise SingleImageError(f"no {what} given (data.image_path is empty); give an RGBA image, or an RGB image "
                               "with data.background_color=[r,g,b]")
    if not os.path.isfile(path):
        where = "is a folder, not an image" if os.path.isdir(path) else "does not exist"
        raise SingleImageError(f"{what} {path} {where}")
    try:
        img = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types on broken files
        raise SingleImageError(f"cannot read {what} {path}: {exc}") from None
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float64) / float(np.iinfo(img.dtype).max)
    return np.clip(img.astype(np.float64), 0.0, 1.0)


def check_background_color(color, where: str = "data.background_color") -> Optional[np.ndarray]:
    if color is None:
        return None
    key = np.asarray(list(color), np.float64)
    if key.shape != (3,) or not np.all(np.isfinite(key)) or key.min() < 0 or key.max() > 1:
        raise ConfigError(f"{where} must be 3 numbers in [0, 1] (r, g, b), got {list(color)}")
    return key


def read_reference_image(path: str, background_color=None, tolerance: float = 0.02) -> Tuple[np.ndarray, np.ndarray]:
    """(rgb (H,W,3), alpha (H,W,1)) float32 in [0, 1] of an RGBA image, or of an RGB image keyed against
    `background_color` (alpha 1 where any channel differs from it by more than `tolerance`).
    SingleImageError naming the file: missing or unreadable, not 3 or 4 channels, RGB without a background colour,
    an empty mask, or a key colour that matches no pixel."""
    key = check_background_color(background_color)
    img = _read_raw(path, "input image")
    channels = 1 if img.ndim == 2 else (img.shape[-1] if img.ndim == 3 else None)
    if channels not in (3, 4):
        shown = f"{channels} channel(s)" if channels is not None else f"an array of shape {img.shape}"
        raise SingleImageError(f"input image {path} has {shown}; give an RGBA image (4 channels), or an RGB image "
                               "(3 channels) with data.background_color=[r,g,b]")
    rgb = img[..., :3]
    if channels == 4:
        alpha = img[..., 3:]
        if not np.any(alpha > 0.5):
            raise SingleImageError(f"input image {path}: the mask is empty (no pixel has alpha > 0.5); the object "
                                   "must be opaque in the alpha channel")
    else:
        if key is None:
            raise SingleImageError(f"input image {path} is RGB without alpha; set data.background_color=[r,g,b] "
                                   "(its solid background colour, 0..1) or give an RGBA image")
        alpha = (np.abs(rgb - key).max(-1, keepdims=True) > tolerance).astype(np.float64)
        if not np.any(alpha > 0.5):
            raise SingleImageError(f"input image {path}: the mask is empty (every pixel is within {tolerance} of "
                                   f"the background colour {key.tolist()})")
        if np.all(alpha > 0.5):  # a key that matches nothing: almost surely the wrong colour
            raise SingleImageError(f"input image {path}: no pixel matches the background colour {key.tolist()} "
                                   f"(tolerance {tolerance}); check data.background_color")
    return rgb.astype(np.float32), alpha.astype(np.float32)


def resize_rgba(rgb: np.ndarray, alpha: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Area resampling of straight colour and alpha (threestudio: cv2.INTER_AREA on the RGBA array)."""
    out = area_resize(np.concatenate([rgb, alpha], -1).astype(np.float64), height, width)
    return out[..., :3].astype(np.float32), out[..., 3:].astype(np.float32)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """rgb * alpha + (1 - alpha): the reference image as Zero-1-to-3 sees it (white background)."""
    return (rgb * alpha + (1.0 - alpha)).astype(np.float32)


def companion_path(image_path: str, kind: str) -> str:
    """<stem>_<kind>.png beside the image, the stem without a trailing _rgba (threestudio: hamburger_rgba.png ->
    hamburger_depth.png)."""
    stem = os.path.splitext(image_path)[0]
    if stem.endswith("_rgba"):
        stem = stem[:-len("_rgba")]
    return f"{stem}_{kind}.png"


def read_companion(image_path: str, kind: str, channels: int) -> np.ndarray:
    """A monocular depth (1 channel) or normal (3 channels) map for the image, (H, W, channels) float in [0, 1]."""
    path = companion_path(image_path, kind)
    if not os.path.isfile(path):
        raise SingleImageError(f"data.requires_{kind}=true needs the {kind} map {path} (beside the input image); "
                               f"add it or set data.requires_{kind}=false")
    img = _read_raw(path, f"{kind} map")
    img = img[..., None] if img.ndim == 2 else img
    if img.shape[-1] < channels:
        raise SingleImageError(f"{kind} map {path} has {img.shape[-1]} channel(s); expected {channels}")
    return img[..., :channels]


# ----------------------------------------------------------------------------- cameras


def reference_camera(elevation_deg: float, azimuth_deg: float, distance: float) -> Tuple[np.ndarray, np.ndarray]:
    """(c2w (1,4,4), position (1,3)) of a camera on the sphere looking at the origin, z up."""
    position = spherical_to_cartesian(np.radians([elevation_deg]), np.radians([azimuth_deg]),
                                      np.asarray([distance], np.float64))
    return look_at_c2w(position, np.zeros_like(position), np.array([[0.0, 0.0, 1.0]])), position


def camera_rays(c2w: np.ndarray, fovy_deg: np.ndarray, height: int, width: int, noise: Optional[np.ndarray] = None,
                normalize: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(B,4,4) c2w, (B,) vertical fov in degrees -> rays_o, rays_d (B,H,W,3); `noise` (2,3): threestudio's one
    random offset of origin and direction (get_rays noise_scale), added before normalising."""
    focal = 0.5 * height / np.tan(0.5 * np.radians(np.asarray(fovy_deg, np.float64)))
    dirs = np.broadcast_to(get_ray_directions(height, width), (c2w.shape[0], height, width, 3)).copy()
    dirs[..., :2] = dirs[..., :2] / focal[:, None, None, None]
    rays_o, rays_d = get_rays(dirs, c2w, normalize=False)
    if noise is not None:
        rays_o, rays_d = rays_o + noise[0], rays_d + noise[1]
    if normalize:
        rays_d = rays_d / np.maximum(np.linalg.norm(rays_d, axis=-1, keepdims=True), 1e-12)
    return rays_o, rays_d


def near_view_rays(camera_positions: np.ndarray, fovy_deg: np.ndarray, height: int, width: int,
                   offsets: np.ndarray, normalize: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """zero123 3drec's near views (3drec/pose.py sample_near_eye, run_zero123.py): each camera moved by its offset
    (B,3) (upstream: 0.05 x a random unit vector), looking at the origin with z up and the same intrinsics."""
    eyes = np.asarray(camera_positions, np.float64) + offsets
    c2w = look_at_c2w(eyes, np.zeros_like(eyes), np.array([[0.0, 0.0, 1.0]]))
    return camera_rays(c2w, fovy_deg, height, width, normalize=normalize)


def random_unit_offsets(rng: np.random.Generator, n: int, norm: float) -> np.ndarray:
    """n vectors of length `norm` in uniformly random directions (3drec/pose.py sample_random_vector)."""
    v = rng.standard_normal((n, 3))
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12) * norm


def _as_list(value) -> List[int]:
    return [int(value)] if isinstance(value, (int, np.integer)) else [int(v) for v in value]


# ----------------------------------------------------------------------------- the data module


@register("single-image-datamodule")
class SingleImageDataModule:
    """Training: `sample(global_step)` (the reference view + random views); eval: `val_batch(i)`, `test_batch(i)`.
    The image is read and checked at construction, before any model is built."""

    Config = SingleImageDataModuleConfig

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        self.cfg = cfg = parse_structured(SingleImageDataModuleConfig, cfg, "data")
        self.seed = int(seed)
        self.heights, self.widths = _as_list(cfg.height), _as_list(cfg.width)
        if len(self.heights) != len(self.widths):
            raise ConfigError(f"data: height {self.heights} and width {self.widths} need one value per stage")
        if len(self.heights) > 1 and len(cfg.resolution_milestones) != len(self.heights) - 1:
            raise ConfigError(f"data: {len(self.heights)} resolution stages need {len(self.heights) - 1} "
                              f"resolution_milestones, got {list(cfg.resolution_milestones)}")
        if min(self.heights + self.widths) < 1:
            raise ConfigError(f"data.height / data.width must be >= 1, got {self.heights} / {self.widths}")
        if cfg.batch_size != 1:
            raise ConfigError(f"data.batch_size must be 1 (one reference image), got {cfg.batch_size}")
        if not cfg.use_random_camera:
            raise ConfigError("data.use_random_camera=false is not supported: the guidance needs random views")
        self.random_cfg = parse_structured(RandomCameraConfig, cfg.random_camera, "data.random_camera")
        if self.random_cfg.eval_batch_size != 1:
            raise ConfigError(f"data.random_camera.eval_batch_size must be 1, got {self.random_cfg.eval_batch_size}")
        base = {f.name: getattr(self.random_cfg, f.name) for f in dataclasses.fields(RandomCameraConfig)
                if f.name != "progressive_until"}
        self._random_base = parse_structured(
            RandomMultiviewCameraDataModuleConfig,
            {**base, "n_view": 1, "relative_radius": False, "zoom_range": (1.0, 1.0)}, "data.random_camera")
        self.random = RandomMultiviewCameraDataModule(self._random_base, seed=self.seed)

        # the input, checked before anything else is built
        self.image_rgb, self.image_alpha = read_reference_image(cfg.image_path, cfg.background_color,
                                                                cfg.background_tolerance)
        self.depth_map = read_companion(cfg.image_path, "depth", 1) if cfg.requires_depth else None
        self.normal_map = read_companion(cfg.image_path, "normal", 3) if cfg.requires_normal else None
        self.c2w, self.camera_position = reference_camera(cfg.default_elevation_deg, cfg.default_azimuth_deg,
                                                          cfg.default_camera_distance)
        self._stages: Dict[int, Dict[str, np.ndarray]] = {}

    # --- the reference view

    def stage_index(self, global_step: int) -> int:
        if len(self.heights) == 1:
            return 0
        return bisect.bisect_right(list(self.cfg.resolution_milestones), global_step)

    def _reference(self, height: int, width: int, noise: Optional[np.ndarray]) -> Dict[str, Any]:
        cfg = self.cfg
        fovy = np.array([cfg.default_fovy_deg], np.float64)
        rays_o, rays_d = camera_rays(self.c2w, fovy, height, width, noise, cfg.rays_d_normalize)
        rgb, alpha = resize_rgba(self.image_rgb, self.image_alpha, height, width)
        out = {"rays_o": rays_o, "rays_d": rays_d, "c2w": self.c2w, "camera_positions": self.camera_position,
               "light_positions": self.camera_position.copy(), "elevation": [cfg.default_elevation_deg],
               "azimuth": [cfg.default_azimuth_deg], "camera_distances": [cfg.default_camera_distance],
               "fovy": fovy, "rgb": rgb[None], "mask": (alpha > 0.5)[None]}
        out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
        out["ref_depth"] = out["ref_normal"] = None
        if self.depth_map is not None:
            out["ref_depth"] = area_resize(self.depth_map, height, width)[None].astype(np.float32)
        if self.normal_map is not None:
            out["ref_normal"] = area_resize(self.normal_map, height, width)[None].astype(np.float32)
        out.update(height=height, width=width)
        return out

    def reference_batch(self, global_step: int) -> Dict[str, Any]:
        """The reference view of the stage in force at `global_step` (built once per stage)."""
        i = self.stage_index(global_step)
        if i not in self._stages:
            noise = None
            if self.cfg.rays_noise_scale > 0:  # one offset per stage, from (seed, stage): the same after a resume
                noise = np.random.default_rng([self.seed, i]).standard_normal((2, 3)) * self.cfg.rays_noise_scale
            self._stages[i] = self._reference(self.heights[i], self.widths[i], noise)
        return dict(self._stages[i])

    # --- random views

    def _progressive(self, global_step: int) -> None:
        """threestudio's progressive_view: ranges widen from the eval elevation and azimuth 0."""
        rc = self.random_cfg
        r = min(1.0, global_step / (rc.progressive_until + 1))
        el = tuple((1 - r) * rc.eval_elevation_deg + r * e for e in rc.elevation_range)
        az = tuple(r * a for a in rc.azimuth_range)
        self.random.cfg = dataclasses.replace(self._random_base, elevation_range=el, azimuth_range=az)

    def random_views(self, global_step: int) -> Dict[str, Any]:
        self._progressive(global_step)
        return self.random.sample(global_step)

    # --- the data-module interface

    def sample(self, global_step: int) -> Dict[str, Any]:
        out = self.reference_batch(global_step)
        out["random_camera"] = self.random_views(global_step)
        return out

    def get_state(self) -> Dict[str, Any]:
        return self.random.get_state()

    def set_state(self, state: Dict[str, Any]) -> None:
        self.random.set_state(state)

    def val_batch(self, index: int) -> Dict[str, Any]:
        """0: the reference view at the eval size, with its rgb and mask; then the random-camera eval orbit."""
        if index == 0:
            out = self._reference(self.random_cfg.eval_height, self.random_cfg.eval_width, None)
            out["index"] = 0
            return out
        return self.random.val_batch(index - 1)

    def test_batch(self, index: int) -> Dict[str, Any]:
        return self.random.test_batch(index)

    @property
    def n_val(self) -> int:
        return 1 + self.random.n_val

    @property
    def n_test(self) -> int:
        return self.random.n_test

