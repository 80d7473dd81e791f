"""Posed images in the SRN layout (Sitzmann et al.'s ShapeNet cars / chairs, which GeNVS trains on), their writer,
and the data module "srn-datamodule" that draws GeNVS training examples: N source views and one target view of
an object.

Layout (SRN's `cars_train`; read by genvs_unofficial's NERFdataset_k.py and by SRN's dataio.py / util.py):

    ROOT/<object>/rgb/000000.png         one PNG per view, RGB (object on white) or RGBA; all the same size
    ROOT/<object>/pose/000000.txt        16 numbers: the 4x4 camera-to-world matrix, OpenCV camera (see below)
    ROOT/<object>/intrinsics.txt         SRN's per-object intrinsics:  f cx cy 0      focal, principal point
                                                                       x y z        (grid barycentre, unused)
                                                                       scale        (unused)
                                                                       height width the size f, cx, cy refer to
                                                                       [0 or 1]     optional: 1 = poses are
                                                                                    world-to-camera
    ROOT/<object>/intrinsics/000000.txt  or per view: a 3x3 K = [[f 0 cx] [0 f cy] [0 0 1]] (9 numbers)

Every non-hidden folder of ROOT is an object (hidden ones, such as a writer's temporary folders, are skipped).
A view is `rgb/<name>.png` with its `pose/<name>.txt`; pose files without an image are ignored.

Intrinsics. `intrinsics.txt` wins when both forms are present: its fourth line says which image size f, cx, cy
are for, and they are rescaled to the size of the PNGs (as SRN's parse_intrinsics does; without that line they
are taken in the PNGs' pixels). A per-view K carries no image size: genvs_unofficial reads
`intrinsics/<view>.txt` and divides K by 8 for its 64-pixel renders of the 128-pixel images, i.e. SRN's K is for
512-pixel renders. So a K is taken to belong to an image of 2 cx x 2 cy pixels (a centred principal point) and is
rescaled to the PNGs' size; the writer's K is in the PNGs' own pixels, so that rescale is 1. All views of an
object must share one intrinsics, with square pixels (fx = fy). Pixel centres are at +0.5 (pixel i covers
[i, i + 1)), as in genvs_unofficial's get_rays and this project's get_ray_directions; SRN's own code put them at
integer coordinates, a half-pixel shift.

Camera convention. SRN's pose files are camera-to-world with an OpenCV camera: x right, y down, z forward (into
the scene). genvs_unofficial turns them into OpenGL cameras with `pose[:3, :3] @ diag(1, -1, -1)`. This
project's cameras (neutral/lift3d/multiview_cameras.py, mindspore_impl/mvdream/data/primitives.py) are OpenGL /
threestudio: c2w columns [right, up, -forward | position]. `srn_to_project_c2w` is the one conversion (negate
the camera's y and z axes); `project_to_srn_c2w`, its inverse, is what the writer applies. The world frame is kept
as the files give it.

Images. An RGBA PNG holds straight (not premultiplied) colour, as PNG defines; it is composited on the white
background (SRN cars are rendered on white) and its alpha is the object mask. An RGB PNG is taken as already on
white; its mask is "some channel below white" (`mask_from_white`; a white part of an object falls outside it).

Framework-neutral (numpy + imageio).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from neutral.config import ConfigError, parse_structured
from neutral.errors import UserError
from neutral.registry import register

RIGID_TOL = 1e-3  # max |R^T R - I| and |last row - [0 0 0 1]| of an accepted pose
INTRINSICS_TOL = 1e-4  # relative: views of one object agree, fx = fy
WHITE_TOL = 2.0 / 255.0  # an RGB pixel is background when every channel is within this of white
# negating the camera's y and z axes turns an OpenCV camera into an OpenGL one and back
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])
LAYOUT_HINT = ("expected SRN's layout: one folder per object with rgb/<view>.png, pose/<view>.txt (4x4 "
               "camera-to-world) and intrinsics.txt (or intrinsics/<view>.txt); make one with "
               "python scripts/make_genvs_dataset.py")


class SRNDatasetError(UserError, ValueError):
    """An SRN dataset folder is missing, incomplete or inconsistent (the message names the file)."""


# ----------------------------------------------------------------------------- camera convention


def srn_to_project_c2w(c2w: np.ndarray) -> np.ndarray:
    """(..., 4, 4) camera-to-world with SRN's OpenCV camera (x right, y down, z forward) -> this project's OpenGL
    camera (columns [right, up, -forward | position]). The camera position and the world frame are unchanged."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def project_to_srn_c2w(c2w: np.ndarray) -> np.ndarray:
    """Inverse of `srn_to_project_c2w` (the flip is its own inverse): what the writer puts in pose files."""
    return srn_to_project_c2w(c2w)


# ----------------------------------------------------------------------------- reading


@dataclass
class SRNObject:
    """One object's views as found on disk (images are read on demand, `read_srn_view`)."""
    folder: str
    names: List[str]  # view names (file stems), sorted
    image_paths: List[str]
    c2w: np.ndarray  # (V, 4, 4) float64, project convention
    intrinsics: np.ndarray  # (4,) fx, fy, cx, cy in pixels of the stored images
    height: int
    width: int
    has_alpha: bool  # the first image is RGBA (all views must agree)


def list_srn_objects(root: str) -> List[str]:
    """The object folders of ROOT, sorted by name; SRNDatasetError for a missing root or one without objects."""
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise SRNDatasetError(f"SRN dataset folder {root} {what}; {LAYOUT_HINT}")
    names = sorted(n for n in os.listdir(root) if not n.startswith(".") and os.path.isdir(os.path.join(root, n)))
    if not names:
        raise SRNDatasetError(f"{root} has no object folders; {LAYOUT_HINT}")
    return [os.path.join(root, n) for n in names]


def _numbers(path: str, text: str, what: str) -> np.ndarray:
    try:
        values = np.array([float(t) for t in text.split()], dtype=np.float64)
    except ValueError as exc:
        raise SRNDatasetError(f"{path}: {what} must be numbers ({exc})") from None
    if not np.all(np.isfinite(values)):
        raise SRNDatasetError(f"{path}: {what} holds NaN or inf")
    return values


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise SRNDatasetError(f"cannot read {path}: {exc}") from None


def check_rigid(m: np.ndarray, where: str) -> np.ndarray:
    """m (4, 4) float64 if it is a rigid transform, else SRNDatasetError naming `where`."""
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > RIGID_TOL:
        raise SRNDatasetError(f"{where}: the pose's last row is {m[3].tolist()}, expected [0, 0, 0, 1]")
    rot = m[:3, :3]
    err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    if err > RIGID_TOL:
        raise SRNDatasetError(f"{where}: the pose's rotation is not orthonormal (max |R^T R - I| = {err:.3g}); "
                              "expected a rigid camera-to-world matrix (no scale or shear)")
    if np.linalg.det(rot) < 0:
        raise SRNDatasetError(f"{where}: the pose's rotation is a reflection (determinant < 0); expected a "
                              "right-handed camera-to-world matrix")
    return m


def read_pose(path: str, world_to_camera: bool = False) -> np.ndarray:
    """(4, 4) float64 camera-to-world in the project convention from an SRN pose file (16 numbers, OpenCV)."""
    values = _numbers(path, _read_text(path), "the pose")
    if values.size != 16:
        raise SRNDatasetError(f"{path} must hold 16 numbers (a 4x4 camera-to-world matrix), found {values.size}")
    m = check_rigid(values.reshape(4, 4), path)
    if world_to_camera:
        m = np.linalg.inv(m)
    return srn_to_project_c2w(m)


def read_intrinsics_txt(path: str, height: int, width: int) -> Tuple[np.ndarray, bool]:
    """SRN's per-object intrinsics.txt -> ((fx, fy, cx, cy) in pixels of a height x width image, poses are
    world-to-camera)."""
    lines = [ln for ln in _read_text(path).splitlines() if ln.strip()]
    if not lines:
        raise SRNDatasetError(f"{path} is empty; its first line must be 'f cx cy 0' (focal length and principal "
                              "point in pixels)")
    first = _numbers(path, lines[0], "the first line 'f cx cy 0'")
    if first.size not in (3, 4):
        raise SRNDatasetError(f"{path}: the first line must be 'f cx cy 0' (focal length and principal point in "
                              f"pixels), got {lines[0].strip()!r}")
    f, cx, cy = first[:3]
    if f <= 0:
        raise SRNDatasetError(f"{path}: focal length {f} must be > 0")
    sx = sy = 1.0
    if len(lines) >= 4:
        size = _numbers(path, lines[3], "the fourth line 'height width'")
        if size.size != 2 or np.any(size <= 0):
            raise SRNDatasetError(f"{path}: the fourth line must be 'height width' (the image size f, cx, cy are "
                                  f"for), got {lines[3].strip()!r}")
        sy, sx = height / size[0], width / size[1]
    world_to_camera = False
    if len(lines) >= 5:
        flag = lines[4].strip()
        if flag not in ("0", "1"):
            raise SRNDatasetError(f"{path}: the fifth line (poses are world-to-camera) must be 0 or 1, got {flag!r}")
        world_to_camera = flag == "1"
    # SRN scales f with the height, cx with the width, cy with the height
    return np.array([f * sy, f * sy, cx * sx, cy * sy]), world_to_camera


def read_intrinsics_k(path: str, height: int, width: int) -> np.ndarray:
    """A per-view 3x3 K -> (fx, fy, cx, cy) in pixels of a height x width image; K is taken for an image of
    2 cx x 2 cy pixels (see the module docstring)."""
    k = _numbers(path, _read_text(path), "K")
    if k.size != 9:
        raise SRNDatasetError(f"{path} must hold 9 numbers (a 3x3 intrinsics matrix K), found {k.size}")
    k = k.reshape(3, 3)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if np.abs(k[2] - [0.0, 0.0, 1.0]).max() > 1e-6 or abs(k[1, 0]) > 1e-6 or abs(k[0, 1]) > 1e-6:
        raise SRNDatasetError(f"{path}: K must be [[f 0 cx] [0 f cy] [0 0 1]], got {k.tolist()}")
    if fx <= 0 or fy <= 0 or cx <= 0 or cy <= 0:
        raise SRNDatasetError(f"{path}: K's focal lengths and principal point must be > 0, got fx={fx} fy={fy} "
                              f"cx={cx} cy={cy}")
    sx, sy = width / (2.0 * cx), height / (2.0 * cy)
    return np.array([fx * sx, fy * sy, cx * sx, cy * sy])


def read_image(path: str) -> np.ndarray:
    """(H, W, 3 or 4) float64 in [0, 1] from an 8- or 16-bit PNG; SRNDatasetError otherwise."""
    import imageio.v3 as iio
    try:
        img = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types on broken files, some with many lines
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SRNDatasetError(f"cannot read image {path}: {reason}; replace or remove it") from None
    channels = img.shape[-1] if img.ndim == 3 else 1
    if img.ndim not in (2, 3) or channels not in (3, 4):
        raise SRNDatasetError(f"{path} has {channels} channel(s) (array {img.shape}); expected an RGB or RGBA image")
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float64) / float(np.iinfo(img.dtype).max)
    return np.clip(img.astype(np.float64), 0.0, 1.0)


def _object_intrinsics(folder: str, names: Sequence[str], height: int, width: int) -> Tuple[np.ndarray, bool]:
    txt = os.path.join(folder, "intrinsics.txt")
    if os.path.isfile(txt):
        return read_intrinsics_txt(txt, height, width)
    kdir = os.path.join(folder, "intrinsics")
    if not os.path.isdir(kdir):
        raise SRNDatasetError(f"{folder} has neither intrinsics.txt nor an intrinsics/ folder; add intrinsics.txt "
                              "(first line 'f cx cy 0', fourth line 'height width') as SRN does")
    first = None
    for name in names:
        path = os.path.join(kdir, name + ".txt")
        if not os.path.isfile(path):
            raise SRNDatasetError(f"{os.path.join(folder, 'rgb', name + '.png')} has no intrinsics file {path}; "
                                  "add it (a 3x3 K) or an intrinsics.txt for the whole object")
        k = read_intrinsics_k(path, height, width)
        if first is None:
            first = (k, path)
        elif np.abs(k - first[0]).max() > INTRINSICS_TOL * first[0][0]:
            raise SRNDatasetError(f"{path} gives (fx, fy, cx, cy) = {k.round(4).tolist()} but {first[1]} gives "
                                  f"{first[0].round(4).tolist()}; all views of an object must share intrinsics")
    return first[0], False


def scan_srn_object(folder: str) -> SRNObject:
    """Poses, intrinsics and the image size (from the first image) of one object folder; images are not read."""
    rgb_dir, pose_dir = os.path.join(folder, "rgb"), os.path.join(folder, "pose")
    for d in (rgb_dir, pose_dir):
        if not os.path.isdir(d):
            raise SRNDatasetError(f"{folder} has no {os.path.basename(d)}/ folder; {LAYOUT_HINT}")
    files = sorted(n for n in os.listdir(rgb_dir) if n.endswith(".png") and not n.startswith("."))
    if not files:
        raise SRNDatasetError(f"{rgb_dir} has no .png images; {LAYOUT_HINT}")
    names = [f[:-len(".png")] for f in files]
    image_paths = [os.path.join(rgb_dir, f) for f in files]
    pose_paths = [os.path.join(pose_dir, n + ".txt") for n in names]
    for image, pose in zip(image_paths, pose_paths):
        if not os.path.isfile(pose):
            raise SRNDatasetError(f"{image} has no matching pose file {pose}; add the pose or remove the image")
    first = read_image(image_paths[0])
    height, width = first.shape[:2]
    intrinsics, world_to_camera = _object_intrinsics(folder, names, height, width)
    if abs(intrinsics[0] - intrinsics[1]) > INTRINSICS_TOL * intrinsics[0]:
        raise SRNDatasetError(f"{folder}: fx = {intrinsics[0]:.6g} but fy = {intrinsics[1]:.6g}; only square pixels "
                              "(one focal length) are supported")
    c2w = np.stack([read_pose(p, world_to_camera) for p in pose_paths])
    return SRNObject(folder, names, image_paths, c2w, intrinsics, height, width, first.shape[-1] == 4)


def read_srn_view(obj: SRNObject, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """View `index` of an object: rgb (H, W, 3) float64 on white, alpha (H, W) or None for an RGB image."""
    path = obj.image_paths[index]
    img = read_image(path)
    if img.shape[:2] != (obj.height, obj.width):
        raise SRNDatasetError(f"{path} is {img.shape[1]}x{img.shape[0]} but {obj.image_paths[0]} is "
                              f"{obj.width}x{obj.height} (width x height); all views of an object must have one size")
    if (img.shape[-1] == 4) != obj.has_alpha:
        with_a, without = (path, obj.image_paths[0]) if img.shape[-1] == 4 else (obj.image_paths[0], path)
        raise SRNDatasetError(f"{with_a} has an alpha channel but {without} has not; give all views of an object "
                              "as RGBA or all as RGB")
    if not obj.has_alpha:
        return img, None
    alpha = img[..., 3]
    return img[..., :3] * alpha[..., None] + (1.0 - alpha[..., None]), alpha


def mask_from_white(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W) float mask of an image on white: 1 where some channel is below white (WHITE_TOL)."""
    return (np.asarray(rgb).min(axis=-1) < 1.0 - WHITE_TOL).astype(np.float64)


def read_srn_object(folder: str) -> Dict[str, Any]:
    """Read one object folder -> {names, rgb (V,H,W,3) float32 on white in [0, 1], alpha (V,H,W) float32 or None,
    c2w (V,4,4) float32 (project convention), focal, cx, cy (pixels), height, width}. Raises SRNDatasetError
    naming the file: a missing rgb/ or pose/ folder, an image without a pose, an unreadable PNG, a wrong channel
    count, images of different sizes, a pose that is not 16 finite numbers of a rigid transform, missing or
    malformed intrinsics."""
    obj = scan_srn_object(folder)
    views = [read_srn_view(obj, i) for i in range(len(obj.names))]
    alpha = np.stack([a for _, a in views]).astype(np.float32) if obj.has_alpha else None
    fx, _, cx, cy = (float(x) for x in obj.intrinsics)
    return {"names": list(obj.names), "rgb": np.stack([r for r, _ in views]).astype(np.float32), "alpha": alpha,
            "c2w": obj.c2w.astype(np.float32), "focal": fx, "cx": cx, "cy": cy,
            "height": obj.height, "width": obj.width}


# ----------------------------------------------------------------------------- writing


def _fmt(values: np.ndarray) -> str:
    return " ".join(f"{float(v):.10g}" for v in values)


def write_srn_object(root: str, name: str, rgb: np.ndarray, c2w: np.ndarray, focal: float,
                     cx: Optional[float] = None, cy: Optional[float] = None, alpha: Optional[np.ndarray] = None,
                     view_names: Optional[Sequence[str]] = None) -> str:
    """Write one object as ROOT/name in the SRN layout; returns its folder.

    rgb (V, H, W, 3) uint8 or float in [0, 1], the object on white; c2w (V, 4, 4) in the project convention (written
    as SRN's OpenCV poses); focal, cx, cy in pixels (cx, cy default to the image centre). With alpha (V, H, W)
    the PNGs are RGBA holding straight colour, so compositing on white gives rgb back (within 1/255). Writes both
    intrinsics.txt (SRN) and intrinsics/<view>.txt (the 3x3 K genvs_unofficial reads), in the images' pixels.

    The folder is written under a hidden temporary name and renamed into place, so a reader sees the old object
    or the complete new one, never a partial one (the reader skips hidden folders)."""
    import imageio.v3 as iio
    rgb = np.asarray(rgb)
    c2w = np.asarray(c2w, dtype=np.float64)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (V, H, W, 3), got {rgb.shape}")
    n, height, width = rgb.shape[:3]
    if c2w.shape != (n, 4, 4):
        raise ValueError(f"c2w must be ({n}, 4, 4), got {c2w.shape}")
    if not name or name.startswith(".") or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"object name must be a plain, non-hidden folder name, got {name!r}")
    names = [f"{i:06d}" for i in range(n)] if view_names is None else [str(v) for v in view_names]
    if len(names) != n or len(set(names)) != n:
        raise ValueError(f"view_names must be {n} distinct strings")
    if not (math.isfinite(focal) and focal > 0):
        raise ValueError(f"focal must be a finite number > 0, got {focal}")
    for i in range(n):
        check_rigid(c2w[i], f"view {i}")
    cx = 0.5 * width if cx is None else float(cx)
    cy = 0.5 * height if cy is None else float(cy)
    rgb = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else np.clip(rgb.astype(np.float64), 0.0, 1.0)
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != (n, height, width):
            raise ValueError(f"alpha must be {(n, height, width)}, got {alpha.shape}")
        a8 = _to_uint8(alpha.astype(np.float64) / 255.0 if alpha.dtype == np.uint8 else alpha)
        # straight colour from the alpha as stored, so compositing the file on white gives rgb back
        a = a8[..., None].astype(np.float64) / 255.0
        straight = np.where(a > 0, (rgb - (1.0 - a)) / np.maximum(a, 1e-12), 1.0)
        pixels = np.concatenate([_to_uint8(straight), a8[..., None]], -1)
    else:
        pixels = _to_uint8(rgb)
    k = np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    poses = project_to_srn_c2w(c2w)

    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, name)
    tmp = tempfile.mkdtemp(prefix=f".tmp_{name}_", dir=root)
    try:
        for sub in ("rgb", "pose", "intrinsics"):
            os.makedirs(os.path.join(tmp, sub))
        for i, view in enumerate(names):
            iio.imwrite(os.path.join(tmp, "rgb", view + ".png"), pixels[i])
            with open(os.path.join(tmp, "pose", view + ".txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(_fmt(row) for row in poses[i]) + "\n")
            with open(os.path.join(tmp, "intrinsics", view + ".txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(_fmt(row) for row in k) + "\n")
        with open(os.path.join(tmp, "intrinsics.txt"), "w", encoding="utf-8") as f:
            f.write(f"{_fmt([focal, cx, cy])} 0.\n0. 0. 0.\n1.\n{height} {width}\n")
        old = tmp + ".old"
        if os.path.exists(final):
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the data module


@dataclass
class SRNDataModuleConfig:
    root: Optional[str] = None  # the SRN folder (one folder per object)
    batch_size: int = field(default=4, metadata={"min": 1})  # objects per training step
    # source views per object (the batch's N_src); genvs_unofficial conditions on 1 or 2 (later up to 3)
    n_source_views: int = field(default=1, metadata={"min": 1})
    # when set, each step uses k in [min_source_views, n_source_views] sources (one k per step, as
    # genvs_unofficial's random.randint(1, 2)); the batch keeps N_src slots and src_valid marks the first k
    min_source_views: Optional[int] = field(default=None, metadata={"min": 1})
    # the last val_objects objects (sorted by name) are held out: never trained on, one validation batch each
    val_objects: int = field(default=1, metadata={"min": 0})
    # images are box-averaged by an integer factor to this height (e.g. SRN cars 128 -> 64); None: as stored
    image_size: Optional[int] = field(default=None, metadata={"min": 1})
    # read every image when built (checks them all up front); false reads views when drawn (SRN cars: ~30 GB)
    preload: bool = True
    # masks of RGB images from the white background; RGBA images always use their alpha
    mask_from_white: bool = True
    test_object: int = -1  # test_batch(i): target view i of this object (python index; -1: the last, held out)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The Generator of one training step: a function of (seed, step) only, so a resumed run draws the same."""
    return np.random.default_rng([int(seed) % 2 ** 63, int(step)])


@register("srn-datamodule")
class SRNDataModule:
    """GeNVS training examples from an SRN folder.

    `sample(step)`: batch_size training objects (with replacement), each with N_src = n_source_views distinct
    source views and one more distinct target view, all from `step_rng(seed, step)` (no state to save: a resumed
    run draws the same batches). Arrays, float32: src_rgb (B, N_src, H, W, 3) in [0, 1] on white, src_c2w
    (B, N_src, 4, 4) and tgt_c2w (B, 4, 4) (project convention), tgt_rgb (B, H, W, 3), focal, cx, cy (B,) in pixels,
    src_valid (B, N_src) (1 for the sources used this step), and when masks exist src_mask (B, N_src, H, W, 1) and
    tgt_mask (B, H, W, 1).
    `val_batch(i)`: held-out object i, sources = its first N_src views, target = its last view (B = 1).
    `test_batch(i)`: object `test_object`, the same sources, target = its view i (n_test = its number of views)."""

    Config = SRNDataModuleConfig

    def __init__(self, cfg: Any = None, seed: int = 0) -> None:
        self.cfg = cfg = parse_structured(SRNDataModuleConfig, cfg, "data")
        self.seed = int(seed)
        if not cfg.root:
            raise ConfigError("data.root is not set: give the SRN dataset folder, e.g. data.root=data/genvs_scenes")
        if cfg.min_source_views is not None and cfg.min_source_views > cfg.n_source_views:
            raise ConfigError(f"data.min_source_views = {cfg.min_source_views} exceeds data.n_source_views = "
                              f"{cfg.n_source_views}")
        folders = list_srn_objects(cfg.root)
        if cfg.val_objects >= len(folders):
            raise ConfigError(f"data.val_objects = {cfg.val_objects} holds out all {len(folders)} objects of "
                              f"{cfg.root}; use a smaller value (0: no validation)")
        self.objects = [scan_srn_object(f) for f in folders]
        first = self.objects[0]
        for obj in self.objects:
            if (obj.height, obj.width) != (first.height, first.width):
                raise SRNDatasetError(f"{obj.image_paths[0]} is {obj.width}x{obj.height} but {first.image_paths[0]} "
                                      f"is {first.width}x{first.height}; all objects must have one image size")
            if len(obj.names) < cfg.n_source_views + 1:
                raise SRNDatasetError(f"{obj.folder} has {len(obj.names)} views; data.n_source_views = "
                                      f"{cfg.n_source_views} needs at least {cfg.n_source_views + 1} (sources and "
                                      "a target)")
        self.factor = self._factor(first)
        self.height, self.width = first.height // self.factor, first.width // self.factor
        self.has_mask = cfg.mask_from_white or all(o.has_alpha for o in self.objects)
        n_train = len(self.objects) - cfg.val_objects
        self.train_ids, self.val_ids = list(range(n_train)), list(range(n_train, len(self.objects)))
        if not -len(self.objects) <= cfg.test_object < len(self.objects):
            raise ConfigError(f"data.test_object = {cfg.test_object} is out of range for {len(self.objects)} objects")
        self._cache: Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]] = {}
        if cfg.preload:
            for o in range(len(self.objects)):
                self._cache[o] = self._read(o, range(len(self.objects[o].names)))

    def _factor(self, obj: SRNObject) -> int:
        size = self.cfg.image_size
        if size is None:
            return 1
        k = obj.height // size
        if k < 1 or obj.height % size or obj.width % k:
            raise ConfigError(f"data.image_size = {size}: the images ({obj.width}x{obj.height}, e.g. "
                              f"{obj.image_paths[0]}) must shrink to it by an integer factor; give a divisor of "
                              f"{obj.height}")
        return k

    # --- images

    def _read(self, o: int, views) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """rgb (k, h, w, 3) float32 and mask (k, h, w, 1) float32 or None, box-averaged by self.factor."""
        obj, rgbs, masks = self.objects[o], [], []
        for v in views:
            rgb, alpha = read_srn_view(obj, v)
            if alpha is None and self.has_mask:
                alpha = mask_from_white(rgb)
            rgbs.append(_box(rgb, self.factor))
            if alpha is not None and self.has_mask:
                masks.append(_box(alpha[..., None], self.factor))
        mask = np.stack(masks).astype(np.float32) if masks else None
        return np.stack(rgbs).astype(np.float32), mask

    def _views(self, o: int, views: Sequence[int]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        views = list(views)
        if o in self._cache:
            rgb, mask = self._cache[o]
            return rgb[views], (None if mask is None else mask[views])
        return self._read(o, views)

    # --- batches

    def _batch(self, objs: Sequence[int], src: Sequence[Sequence[int]], tgt: Sequence[int], k: int) -> Dict[str, Any]:
        n_src = self.cfg.n_source_views
        out: Dict[str, List[np.ndarray]] = {key: [] for key in ("src_rgb", "src_c2w", "tgt_rgb", "tgt_c2w", "focal",
                                                                  "cx", "cy", "src_mask", "tgt_mask")}
        for o, s, t in zip(objs, src, tgt):
            obj = self.objects[o]
            rgb, mask = self._views(o, list(s) + [t])
            out["src_rgb"].append(rgb[:n_src])
            out["tgt_rgb"].append(rgb[n_src])
            out["src_c2w"].append(obj.c2w[list(s)])
            out["tgt_c2w"].append(obj.c2w[t])
            fx, _, cx, cy = obj.intrinsics / self.factor
            out["focal"].append(fx)
            out["cx"].append(cx)
            out["cy"].append(cy)
            if mask is not None:
                out["src_mask"].append(mask[:n_src])
                out["tgt_mask"].append(mask[n_src])
        batch = {key: np.ascontiguousarray(np.stack(v), dtype=np.float32) for key, v in out.items() if v}
        valid = np.zeros((len(objs), n_src), np.float32)
        valid[:, :k] = 1.0
        batch["src_valid"] = valid
        return batch

    def sample(self, global_step: int) -> Dict[str, Any]:
        cfg = self.cfg
        rng = step_rng(self.seed, global_step)
        n_src = cfg.n_source_views
        k = n_src if cfg.min_source_views is None else int(rng.integers(cfg.min_source_views, n_src + 1))
        objs = [self.train_ids[i] for i in rng.integers(0, len(self.train_ids), cfg.batch_size)]
        picks = [rng.choice(len(self.objects[o].names), n_src + 1, replace=False) for o in objs]
        return self._batch(objs, [p[:n_src] for p in picks], [int(p[n_src]) for p in picks], k)

    def val_batch(self, index: int) -> Dict[str, Any]:
        if not 0 <= index < self.n_val:
            raise IndexError(f"val object index {index} out of range [0, {self.n_val})")
        o, n_src = self.val_ids[index], self.cfg.n_source_views
        batch = self._batch([o], [range(n_src)], [len(self.objects[o].names) - 1], n_src)
        batch.update(index=index, object=os.path.basename(self.objects[o].folder), height=self.height,
                     width=self.width)
        return batch

    def test_batch(self, index: int) -> Dict[str, Any]:
        if not 0 <= index < self.n_test:
            raise IndexError(f"test view index {index} out of range [0, {self.n_test})")
        o, n_src = self.test_object, self.cfg.n_source_views
        batch = self._batch([o], [range(n_src)], [index], n_src)
        batch.update(index=index, object=os.path.basename(self.objects[o].folder), height=self.height,
                     width=self.width)
        return batch

    @property
    def test_object(self) -> int:
        return self.cfg.test_object % len(self.objects)

    @property
    def n_val(self) -> int:
        return len(self.val_ids)

    @property
    def n_test(self) -> int:
        return len(self.objects[self.test_object].names)


def _box(image: np.ndarray, k: int) -> np.ndarray:
    """(H, W, C) averaged over k x k blocks -> (H / k, W / k, C)."""
    if k == 1:
        return image
    h, w, c = image.shape
    return image.reshape(h // k, k, w // k, k, c).mean(axis=(1, 3))
