"""Posed images in the instant-ngp / NeRF-synthetic `transforms.json` layout, and the data module
"transforms-datamodule" that feeds them to a reconstruction system as random rays.

Layout (NeRF's Blender export, nerf_synthetic/*/transforms_*.json; instant-ngp's docs/nerf_dataset_tips.md):

    FOLDER/transforms.json   {"camera_angle_x": 0.69,              horizontal field of view, radians
                              "frames": [{"file_path": "./train/r_0",   relative; ".png" may be left off
                                          "transform_matrix": [[...4x4 camera-to-world...]]}, ...]}
    FOLDER/train/r_0.png     RGBA (alpha is the object mask) or RGB (no mask); all the same size

Intrinsics: `fl_x` / `fl_y` / `cx` / `cy` (pixels, for an image of `w` x `h`; rescaled when the images have another
size) take precedence over `camera_angle_x` / `camera_angle_y`; a frame's own keys override the top level's. Lens
distortion (k1, k2, p1, p2) and instant-ngp's `scale` / `offset` / `aabb_scale` are not used: `scene_scale` scales
the camera positions instead. A folder with `transforms_train.json` (and `transforms_val.json` or
`transforms_test.json`) but no `transforms.json` is read as NeRF-synthetic's split.

Camera convention: transform_matrix is camera-to-world with an OpenGL camera (x right, y up, looking along -z),
the same as this project's renderer and camera sampler (neutral/lift3d/multiview_cameras.py: c2w columns
[right, up, -forward | position]), so matrices are used as given.

Framework-neutral (numpy + imageio). A data module that produces its folder first (for example views generated
by a multiview diffusion model) subclasses TransformsDataModule and overrides `prepare()` to write the folder
(`write_transforms`) and return its path; loading, sampling and evaluation are inherited.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import numpy as np

from neutral.config import ConfigError, parse_structured
from neutral.errors import UserError
from neutral.files import write_atomically
from neutral.lift3d.multiview_cameras import (get_ray_directions, get_rays, look_at_c2w,
                                              spherical_to_cartesian)
from neutral.registry import register

TRANSFORMS = "transforms.json"
SPLIT_TRAIN, SPLIT_HELD_OUT = "transforms_train.json", ("transforms_val.json", "transforms_test.json")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
RIGID_TOL = 1e-3  # max |R^T R - I| and |last row - [0 0 0 1]| of an accepted camera-to-world matrix
LAYOUT_HINT = ("expected the instant-ngp / NeRF-synthetic layout: transforms.json with camera_angle_x and "
               "frames[] of file_path + 4x4 transform_matrix")


class DatasetError(UserError, ValueError):
    """A transforms.json folder is missing, incomplete or inconsistent (the message names the file)."""


# ----------------------------------------------------------------------------- reading


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); {LAYOUT_HINT}") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object; {LAYOUT_HINT}")
    return meta


def _number(value: Any, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise DatasetError(f"{what} must be finite, got {value!r}")
    return x


def check_c2w(matrix: Any, where: str) -> np.ndarray:
    """A 4x4 rigid camera-to-world matrix (float64) or DatasetError saying what is wrong with it."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: transform_matrix must be a 4x4 list of numbers") from None
    if m.shape != (4, 4):
        raise DatasetError(f"{where}: transform_matrix must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise DatasetError(f"{where}: transform_matrix holds NaN or inf")
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > RIGID_TOL:
        raise DatasetError(f"{where}: transform_matrix's last row is {m[3].tolist()}, expected [0, 0, 0, 1]")
    rot = m[:3, :3]
    err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    if err > RIGID_TOL:
        raise DatasetError(f"{where}: transform_matrix's rotation part is not orthonormal (max |R^T R - I| = "
                           f"{err:.3g}); expected a rigid camera-to-world matrix (no scale or shear)")
    if np.linalg.det(rot) < 0:
        raise DatasetError(f"{where}: transform_matrix's rotation part is a reflection (determinant < 0); "
                           "expected a right-handed camera-to-world matrix")
    return m


def _intrinsics(meta: dict, frame: dict, where: str) -> dict:
    """The frame's intrinsic keys, each from the frame or else the top level."""
    keys = ("camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx", "cy", "w", "h")
    out = {}
    for key in keys:
        value = frame.get(key, meta.get(key))
        if value is not None:
            out[key] = _number(value, f"{where}: {key}")
    if "fl_x" not in out and "camera_angle_x" not in out:
        raise DatasetError(f"{where}: no camera_angle_x (horizontal field of view in radians) nor fl_x (focal "
                           "length in pixels); add camera_angle_x to transforms.json")
    for key in ("camera_angle_x", "camera_angle_y"):
        if key in out and not 0.0 < out[key] < math.pi:
            raise DatasetError(f"{where}: {key} = {out[key]} must lie in (0, pi) radians")
    for key in ("fl_x", "fl_y", "w", "h"):
        if key in out and out[key] <= 0:
            raise DatasetError(f"{where}: {key} = {out[key]} must be > 0")
    return out


def _pixel_intrinsics(k: dict, height: int, width: int) -> np.ndarray:
    """(fx, fy, cx, cy) in pixels of an image of height x width (square pixels unless both focals are given)."""
    sx = width / k["w"] if "w" in k else 1.0
    sy = height / k["h"] if "h" in k else 1.0
    fx = k["fl_x"] * sx if "fl_x" in k else 0.5 * width / math.tan(0.5 * k["camera_angle_x"])
    if "fl_y" in k:
        fy = k["fl_y"] * sy
    elif "camera_angle_y" in k and "fl_x" not in k:
        fy = 0.5 * height / math.tan(0.5 * k["camera_angle_y"])
    else:
        fy = fx
    cx = k["cx"] * sx if "cx" in k else 0.5 * width
    cy = k["cy"] * sy if "cy" in k else 0.5 * height
    return np.array([fx, fy, cx, cy], np.float64)


def _find_image(root: str, file_path: str, where: str) -> str:
    path = os.path.normpath(os.path.join(root, file_path))
    candidates = [path] + [path + ext for ext in IMAGE_EXTENSIONS]
    for c in candidates:
        if os.path.isfile(c):
            return c
    tried = ", ".join(os.path.relpath(c, root) for c in candidates)
    raise DatasetError(f"{where}: image {file_path!r} not found (tried {tried} in {root}); fix file_path or add "
                       "the image")


def _area_weights(n: int, m: int) -> np.ndarray:
    """(m, n) weights averaging n pixels into m by overlap (exact area resampling over the full extent)."""
    edges_in = np.arange(n + 1, dtype=np.float64)
    edges_out = np.linspace(0.0, n, m + 1)
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    w = np.clip(hi - lo, 0.0, None)
    return w / w.sum(1, keepdims=True)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area resampling of (H, W, C) to (height, width, C)."""
    if image.shape[:2] == (height, width):
        return image
    wy, wx = _area_weights(image.shape[0], height), _area_weights(image.shape[1], width)
    return np.einsum("ih,hwc,jw->ijc", wy, image, wx)


def read_image(path: str) -> np.ndarray:
    """(H, W, 3 or 4) float64 in [0, 1] from an 8/16-bit or float PNG/JPEG; gray is expanded to RGB."""
    import imageio.v3 as iio
    try:
        img = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types on broken files
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    if np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float64) / float(np.iinfo(img.dtype).max)
    else:
        img = np.clip(img.astype(np.float64), 0.0, 1.0)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
        raise DatasetError(f"{path}: expected an RGB or RGBA image, got an array of shape {img.shape}")
    if img.shape[-1] in (1, 2):  # gray (+ alpha)
        img = np.concatenate([np.repeat(img[..., :1], 3, -1), img[..., 1:]], -1)
    return img


def read_transforms(root: str, name: str = TRANSFORMS, downscale: int = 1) -> Dict[str, Any]:
    """Read FOLDER/name -> {images (N,H,W,3) float32 straight (not premultiplied) colour in [0, 1], alpha (N,H,W)
    float32 or None (RGB images), c2w (N,4,4) float32, intrinsics (N,4) float32 (fx, fy, cx, cy in pixels),
    fovy_deg (N,) float32 (vertical), height, width, file_paths, image_paths}.

    downscale k > 1 resamples every image by area to round(H / k) x round(W / k) (intrinsics follow).
    Raises DatasetError naming the file and what to do: a missing folder, file or image, invalid JSON, no
    frames, no camera_angle_x / fl_x, a matrix that is not 4x4, finite and rigid, images of different sizes,
    or RGB mixed with RGBA."""
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise DatasetError(f"dataset folder {root} {what}; give the folder that holds {TRANSFORMS}")
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise DatasetError(f"{root} has no {name}; {LAYOUT_HINT}")
    meta = _load_json(path)
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise DatasetError(f"{path} has no 'frames' list; {LAYOUT_HINT}")
    if not frames:
        raise DatasetError(f"{path}: 'frames' is empty; add at least one frame (file_path + transform_matrix)")

    # cheap checks of every frame first, then the images
    c2w, intr, file_paths, image_paths = [], [], [], []
    for i, frame in enumerate(frames):
        where = f"{path}: frame {i}"
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise DatasetError(f"{where} has no file_path")
        where = f"{where} ({frame['file_path']})"
        if "transform_matrix" not in frame:
            raise DatasetError(f"{where} has no transform_matrix")
        c2w.append(check_c2w(frame["transform_matrix"], where))
        intr.append(_intrinsics(meta, frame, where))
        file_paths.append(frame["file_path"])
        image_paths.append(_find_image(root, frame["file_path"], where))

    images, alphas, intrinsics = [], [], []
    size = out_size = None
    for i, image_path in enumerate(image_paths):
        img = read_image(image_path)
        if size is None:
            size, first, has_alpha = img.shape[:2], image_path, img.shape[-1] == 4
            out_size = (max(1, round(size[0] / downscale)), max(1, round(size[1] / downscale)))
        elif img.shape[:2] != size:
            raise DatasetError(f"{image_path} is {img.shape[1]}x{img.shape[0]} but {first} is {size[1]}x{size[0]} "
                               "(width x height); all images must have the same size")
        elif (img.shape[-1] == 4) != has_alpha:
            with_alpha, without = (image_path, first) if img.shape[-1] == 4 else (first, image_path)
            raise DatasetError(f"{with_alpha} has an alpha channel but {without} has not; give all images as RGBA "
                               "(alpha = object mask) or all as RGB")
        k = _pixel_intrinsics(intr[i], *size)
        k *= np.array([out_size[1] / size[1], out_size[0] / size[0]] * 2)
        intrinsics.append(k)
        if has_alpha:
            a = img[..., 3:]
            premul = _resize(np.concatenate([img[..., :3] * a, a], -1), *out_size)
            a = premul[..., 3]
            rgb = np.where(a[..., None] > 1e-6, premul[..., :3] / np.maximum(a[..., None], 1e-6), 0.0)
            alphas.append(a.astype(np.float32))
        else:
            rgb = _resize(img[..., :3], *out_size)
        images.append(np.clip(rgb, 0.0, 1.0).astype(np.float32))

    intrinsics = np.stack(intrinsics)
    height, width = out_size
    return {"images": np.stack(images), "alpha": np.stack(alphas) if has_alpha else None,
            "c2w": np.stack(c2w).astype(np.float32), "intrinsics": intrinsics.astype(np.float32),
            "fovy_deg": np.degrees(2.0 * np.arctan(0.5 * height / intrinsics[:, 1])).astype(np.float32),
            "height": int(height), "width": int(width), "file_paths": file_paths, "image_paths": image_paths}


# ----------------------------------------------------------------------------- writing


def camera_angle_x(fovy_deg: float, height: int, width: int) -> float:
    """Horizontal field of view (radians) of square pixels with vertical fov fovy_deg on a width x height image."""
    return 2.0 * math.atan(math.tan(0.5 * math.radians(fovy_deg)) * width / height)


def write_transforms(root: str, rgba: np.ndarray, c2w: np.ndarray, fovy_deg: Any,
                     names: Optional[Sequence[str]] = None) -> str:
    """Write images (N,H,W,4) RGBA or (N,H,W,3) RGB (uint8, or float in [0, 1]) as FOLDER/images/<name>.png and
    FOLDER/transforms.json (camera_angle_x from the vertical fovy_deg, a scalar or one per frame; per frame when they
    differ), readable by read_transforms and by instant-ngp. transforms.json is written last, atomically, so a
    folder with it is complete. Returns its path."""
    import imageio.v3 as iio
    rgba = np.asarray(rgba)
    c2w = np.asarray(c2w, dtype=np.float64)
    if rgba.ndim != 4 or rgba.shape[-1] not in (3, 4):
        raise ValueError(f"rgba must be (N, H, W, 4) or (N, H, W, 3), got {rgba.shape}")
    n, height, width = rgba.shape[:3]
    if c2w.shape != (n, 4, 4):
        raise ValueError(f"c2w must be ({n}, 4, 4), got {c2w.shape}")
    fovy = np.broadcast_to(np.asarray(fovy_deg, dtype=np.float64).reshape(-1), (n,))
    names = [f"{i:04d}" for i in range(n)] if names is None else [str(x) for x in names]
    if len(names) != n or len(set(names)) != n:
        raise ValueError(f"names must be {n} distinct strings")
    for i in range(n):
        check_c2w(c2w[i], f"frame {i}")
    if rgba.dtype != np.uint8:
        rgba = np.clip(np.round(np.asarray(rgba, np.float64) * 255.0), 0, 255).astype(np.uint8)

    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    angles = [camera_angle_x(f, height, width) for f in fovy]
    per_frame = not np.allclose(fovy, fovy[0])
    frames = []
    for i, name in enumerate(names):
        rel = f"./images/{name}.png"
        iio.imwrite(os.path.join(root, rel), rgba[i])
        frame = {"file_path": rel, "transform_matrix": c2w[i].tolist()}
        if per_frame:
            frame["camera_angle_x"] = angles[i]
        frames.append(frame)
    meta = {"w": width, "h": height, "frames": frames}
    if not per_frame:
        meta = {"camera_angle_x": angles[0], **meta}
    return write_atomically(os.path.join(root, TRANSFORMS), lambda f: json.dump(meta, f, indent=2), binary=False)


# ----------------------------------------------------------------------------- the data module


@dataclass
class TransformsDataModuleConfig:
    # folder with transforms.json (or NeRF-synthetic's transforms_train.json + transforms_val/test.json)
    root: Optional[str] = None
    # frames 0, k, 2k, ... of transforms.json are held out for validation (0: train on all, no validation);
    # with a NeRF-synthetic split the held-out frames come from transforms_val.json (else _test.json)
    holdout_every: int = field(default=8, metadata={"min": 0, "hint": "0 trains on every frame"})
    # held-out frames rendered at each validation, evenly spaced (-1: all)
    n_val_views: int = field(default=4, metadata={"min": -1})
    rays_per_step: int = field(default=4096, metadata={"min": 1})  # random pixels of all training images
    # each training ray through a random point of its pixel (instant-ngp; matches anti-aliased images), else the centre
    # (random rays only: patches use the pixel centres, as upstream zvict/papr)
    pixel_jitter: bool = True
    # training batches of image patches instead of random rays, for a renderer that decodes neighbourhoods
    # (papr-renderer): patches_per_step crops of patch_size x patch_size pixels, each from one training image at a
    # random position; the images come in a shuffled order per epoch (upstream zvict/papr: a shuffling DataLoader,
    # one patch per image). 0: random rays (rays_per_step)
    patch_size: int = field(default=0, metadata={"min": 0, "hint": "0 samples random rays"})
    patches_per_step: int = field(default=1, metadata={"min": 1})
    downscale: int = field(default=1, metadata={"min": 1})  # images resampled by area to 1/downscale the size
    scene_scale: float = field(default=1.0, metadata={"min": 1e-6})  # camera positions are multiplied by it
    # the test orbit (video) around the world z axis, looking at the origin; None: from the training cameras
    # (median distance, elevation and fovy; the image size)
    n_test_views: int = field(default=120, metadata={"min": 0})
    eval_camera_distance: Optional[float] = field(default=None, metadata={"min": 1e-6})
    eval_elevation_deg: Optional[float] = field(default=None, metadata={"min": -90.0, "max": 90.0})
    eval_fovy_deg: Optional[float] = field(default=None, metadata={"min": 1e-3, "max": 179.0})
    eval_height: Optional[int] = field(default=None, metadata={"min": 1})
    eval_width: Optional[int] = field(default=None, metadata={"min": 1})


def pixel_rays(c2w: np.ndarray, intrinsics: np.ndarray, rows: np.ndarray, cols: np.ndarray, offset=0.5):
    """World rays (R,3) origins and unit directions through points (rows, cols) + offset (R,) of cameras c2w (R,4,4)
    with intrinsics (R,4) = (fx, fy, cx, cy): OpenGL camera, rows going down (as get_ray_directions); offset 0.5 is
    the pixel centre, or (R,2) (row, column) offsets in [0, 1)."""
    fx, fy, cx, cy = (intrinsics[:, i].astype(np.float64) for i in range(4))
    off = np.broadcast_to(np.asarray(offset, np.float64), (len(rows), 2)) if np.ndim(offset) else \
        np.full((len(rows), 2), float(offset))
    dirs = np.stack([(cols + off[:, 1] - cx) / fx, -(rows + off[:, 0] - cy) / fy, -np.ones_like(fx)], -1)
    rays_d = np.einsum("rij,rj->ri", c2w[:, :3, :3].astype(np.float64), dirs)
    rays_d /= np.linalg.norm(rays_d, axis=-1, keepdims=True)
    return np.ascontiguousarray(c2w[:, :3, 3], np.float64), rays_d


@register("transforms-datamodule")
class TransformsDataModule:
    """Training: `sample(step)` draws rays_per_step random pixels of the training images (one Generator from the
    seed; get_state/set_state resume the same stream) -> rays_o, rays_d (R,1,1,3), light_positions (R,3) (the
    cameras), rgb (R,1,1,3) and, for RGBA images, mask (R,1,1,1) = alpha. With patch_size p > 0 it draws
    patches_per_step = B patches instead (`sample_patches`) -> rays_o, rays_d (B,p,p,3), light_positions (B,3),
    rgb (B,p,p,3), mask (B,p,p,1). Validation: `val_batch(i)`, a held-out view (1,H,W,.) with its rgb (and mask).
    Test: `test_batch(i)`, an orbit (no ground truth).

    Subclasses that make their folder first override `prepare()` (returns the folder; runs before loading) and
    extend `Config`."""

    Config = TransformsDataModuleConfig

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        self.cfg = parse_structured(type(self).Config, cfg, "data")
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.root = self.prepare()
        self.load(self.root)

    # --- the folder

    def prepare(self) -> str:
        """The folder to load (a subclass writes it here first)."""
        if not self.cfg.root:
            raise ConfigError("data.root is not set: give the folder with transforms.json, e.g. data.root=PATH")
        return str(self.cfg.root)

    def load(self, root: str) -> None:
        """Read the folder: training frames, held-out frames, eval orbit settings."""
        cfg = self.cfg
        if not os.path.isfile(os.path.join(root, TRANSFORMS)) and os.path.isfile(os.path.join(root, SPLIT_TRAIN)):
            train = read_transforms(root, SPLIT_TRAIN, cfg.downscale)
            held_name = next((n for n in SPLIT_HELD_OUT if os.path.isfile(os.path.join(root, n))), None)
            held = read_transforms(root, held_name, cfg.downscale) if held_name else None
            if held is not None and (held["height"], held["width"]) != (train["height"], train["width"]):
                raise DatasetError(f"{os.path.join(root, held_name)}: images are {held['width']}x{held['height']} "
                                   f"but the training images are {train['width']}x{train['height']}")
            if held is not None and (held["alpha"] is None) != (train["alpha"] is None):
                raise DatasetError(f"{os.path.join(root, held_name)}: images and training images must both be "
                                   "RGBA or both RGB")
        else:
            data = read_transforms(root, TRANSFORMS, cfg.downscale)
            n = len(data["file_paths"])
            held_out = np.arange(n) % cfg.holdout_every == 0 if cfg.holdout_every else np.zeros(n, bool)
            if held_out.all():
                raise ConfigError(f"data.holdout_every={cfg.holdout_every} holds out all {n} frames of "
                                  f"{os.path.join(root, TRANSFORMS)}; use a larger value (or 0: no validation)")
            train, held = _subset(data, ~held_out), (_subset(data, held_out) if held_out.any() else None)
        for split in (train, held):
            if split is not None:
                split["c2w"][:, :3, 3] *= cfg.scene_scale
        p = cfg.patch_size
        if p and p > min(train["height"], train["width"]):
            raise ConfigError(f"data.patch_size={p} is larger than the training images ({train['width']}x"
                              f"{train['height']} after downscale {cfg.downscale}); use at most "
                              f"{min(train['height'], train['width'])}")
        self.train, self.held_out = train, held
        n_held = 0 if held is None else len(held["file_paths"])
        n_val = n_held if cfg.n_val_views < 0 else min(cfg.n_val_views, n_held)
        self.val_frames = np.unique(np.linspace(0, n_held - 1, n_val).round().astype(int)) if n_val else \
            np.zeros(0, int)
        self._eval_settings()

    def _eval_settings(self) -> None:
        cfg, pos = self.cfg, self.train["c2w"][:, :3, 3].astype(np.float64)
        dist = np.linalg.norm(pos, axis=-1)
        elev = np.degrees(np.arcsin(np.clip(pos[:, 2] / np.maximum(dist, 1e-12), -1.0, 1.0)))
        self.eval_distance = _or(cfg.eval_camera_distance, np.median(dist))
        self.eval_elevation = _or(cfg.eval_elevation_deg, np.median(elev))
        self.eval_fovy = _or(cfg.eval_fovy_deg, np.median(self.train["fovy_deg"]))
        self.eval_height = int(cfg.eval_height or self.train["height"])
        self.eval_width = int(cfg.eval_width or self.train["width"])
        if self.eval_distance <= 1e-6:
            raise ConfigError("data.eval_camera_distance: the training cameras sit at the origin; set it (> 0)")

    # --- resume state

    def get_state(self) -> Dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: Dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    # --- training

    @property
    def has_mask(self) -> bool:
        return self.train["alpha"] is not None

    def sample(self, global_step: int) -> Dict[str, Any]:
        if self.cfg.patch_size:
            return self.sample_patches(global_step)
        t = self.train
        n, h, w = t["images"].shape[:3]
        r = self.cfg.rays_per_step
        idx = self.rng.integers(0, n * h * w, r)
        frame, pixel = np.divmod(idx, h * w)
        rows, cols = np.divmod(pixel, w)
        offset = self.rng.random((r, 2)) if self.cfg.pixel_jitter else 0.5
        rays_o, rays_d = pixel_rays(t["c2w"][frame], t["intrinsics"][frame], rows, cols, offset)
        out = {"rays_o": rays_o.reshape(r, 1, 1, 3), "rays_d": rays_d.reshape(r, 1, 1, 3), "light_positions": rays_o,
               "rgb": t["images"][frame, rows, cols].reshape(r, 1, 1, 3)}
        if self.has_mask:
            out["mask"] = t["alpha"][frame, rows, cols].reshape(r, 1, 1, 1)
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}

    def patch_frames(self, global_step: int) -> np.ndarray:
        """The training images of step global_step's patches (B,): patch i of the run (i = step * B + j) comes from
        image perm_e[i mod n] with e = i // n and perm_e a permutation drawn from (seed, e), so every image gives one
        patch per epoch, in a new order each epoch, and a resumed run gets the same images without saved state."""
        n, b = len(self.train["file_paths"]), self.cfg.patches_per_step
        index = global_step * b + np.arange(b)
        epochs = index // n
        order = {int(e): np.random.default_rng([self.seed, int(e)]).permutation(n) for e in np.unique(epochs)}
        return np.array([order[int(e)][i % n] for e, i in zip(epochs, index)], np.int64)

    def sample_patches(self, global_step: int) -> Dict[str, Any]:
        """B = patches_per_step patches of p x p pixels (pixel-centre rays): the images from `patch_frames`, the
        top-left corners uniform over every position where the patch fits (rows, then columns, from the data module's
        Generator). Upstream draws the corner with randint(0, H - p), which never reaches the last position."""
        t, p, b = self.train, self.cfg.patch_size, self.cfg.patches_per_step
        h, w = t["images"].shape[1:3]
        frames = self.patch_frames(global_step)
        top = self.rng.integers(0, h - p + 1, b)
        left = self.rng.integers(0, w - p + 1, b)
        rows = np.broadcast_to(top[:, None, None] + np.arange(p)[None, :, None], (b, p, p))
        cols = np.broadcast_to(left[:, None, None] + np.arange(p)[None, None, :], (b, p, p))
        frame = np.broadcast_to(frames[:, None, None], (b, p, p))
        rays_o, rays_d = pixel_rays(t["c2w"][frame.ravel()], t["intrinsics"][frame.ravel()], rows.ravel(), cols.ravel())
        out = {"rays_o": rays_o.reshape(b, p, p, 3), "rays_d": rays_d.reshape(b, p, p, 3),
               "light_positions": t["c2w"][frames, :3, 3], "rgb": t["images"][frame, rows, cols]}
        if self.has_mask:
            out["mask"] = t["alpha"][frame, rows, cols][..., None]
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}

    # --- evaluation

    def val_batch(self, index: int) -> Dict[str, Any]:
        """Held-out view `index` (of n_val) at the image size, with its ground truth rgb (and mask)."""
        if not 0 <= index < self.n_val:
            raise IndexError(f"val view index {index} out of range [0, {self.n_val})")
        out = self.view_batch("held_out", int(self.val_frames[index]))
        out["index"] = index
        return out

    def view_batch(self, split: str, k: int) -> Dict[str, Any]:
        """Frame k of the split ("train" or "held_out") as a whole image (1,H,W,.) with its ground truth rgb (and
        mask), index k (val_batch(i) is held-out frame val_frames[i] with index i)."""
        d = self.train if split == "train" else self.held_out
        h, w = d["height"], d["width"]
        rows, cols = np.divmod(np.arange(h * w), w)
        rays_o, rays_d = pixel_rays(np.repeat(d["c2w"][k:k + 1], h * w, 0),
                                    np.repeat(d["intrinsics"][k:k + 1], h * w, 0), rows, cols)
        out = {"rays_o": rays_o.reshape(1, h, w, 3), "rays_d": rays_d.reshape(1, h, w, 3),
               "light_positions": d["c2w"][k:k + 1, :3, 3], "c2w": d["c2w"][k:k + 1],
               "rgb": d["images"][k:k + 1], "fovy": d["fovy_deg"][k:k + 1]}
        if d["alpha"] is not None:
            out["mask"] = d["alpha"][k:k + 1, ..., None]
        out = {key: np.ascontiguousarray(v, dtype=np.float32) for key, v in out.items()}
        out.update(height=h, width=w, index=k, file_path=d["file_paths"][k])
        return out

    def test_batch(self, index: int) -> Dict[str, Any]:
        """Orbit view `index` of n_test (azimuths evenly over 360 degrees) at the eval settings."""
        if not 0 <= index < self.n_test:
            raise IndexError(f"test view index {index} out of range [0, {self.n_test})")
        h, w = self.eval_height, self.eval_width
        azimuth = np.array([360.0 * index / self.n_test])
        elevation, distance, fovy = (np.array([x]) for x in (self.eval_elevation, self.eval_distance, self.eval_fovy))
        pos = spherical_to_cartesian(np.radians(elevation), np.radians(azimuth), distance)
        c2w = look_at_c2w(pos, np.zeros_like(pos), np.array([[0.0, 0.0, 1.0]]))
        focal = 0.5 * h / math.tan(0.5 * math.radians(fovy[0]))
        dirs = get_ray_directions(h, w)
        dirs[..., :2] /= focal
        rays_o, rays_d = get_rays(dirs[None], c2w)
        out = {"rays_o": rays_o, "rays_d": rays_d, "light_positions": pos, "c2w": c2w, "fovy": fovy,
               "elevation": elevation, "azimuth": azimuth, "camera_distances": distance}
        out = {key: np.ascontiguousarray(v, dtype=np.float32) for key, v in out.items()}
        out.update(height=h, width=w, index=index)
        return out

    @property
    def n_val(self) -> int:
        return len(self.val_frames)

    @property
    def n_test(self) -> int:
        return self.cfg.n_test_views


def _or(value: Optional[float], default: float) -> float:
    return float(default if value is None else value)


def _subset(data: Dict[str, Any], keep: np.ndarray) -> Dict[str, Any]:
    idx = np.nonzero(keep)[0]
    out = dict(data)
    for key in ("images", "alpha", "c2w", "intrinsics", "fovy_deg"):
        if data[key] is not None:
            out[key] = data[key][idx]
    for key in ("file_paths", "image_paths"):
        out[key] = [data[key][i] for i in idx]
    return out

