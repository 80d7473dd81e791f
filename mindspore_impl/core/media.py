"""Images, side-by-side strips and videos (mp4 via imageio-ffmpeg, gif via Pillow)."""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

Image = np.ndarray
Images = Union[Sequence[Image], Mapping[str, Image]]


def to_uint8_rgb(img: Image) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) float in [0, 1] or uint8 -> (H, W, 3) uint8."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.round(np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    return a


def strip(images: Images) -> np.ndarray:
    """Images of one height side by side (e.g. rgb | normal | opacity) -> (H, sum W, 3) uint8."""
    items = list(images.values()) if isinstance(images, Mapping) else list(images)
    if not items:
        raise ValueError("strip needs at least one image")
    rgb = [to_uint8_rgb(x) for x in items]
    heights = {x.shape[0] for x in rgb}
    if len(heights) != 1:
        names = list(images.keys()) if isinstance(images, Mapping) else list(range(len(rgb)))
        raise ValueError(f"strip images differ in height: {dict(zip(names, (x.shape for x in rgb)))}")
    return np.concatenate(rgb, axis=1)


def contact_sheet(rows: Sequence[Sequence[Image]], gap: int = 2) -> np.ndarray:
    """A grid of images (rows of images, each row one height) with `gap` white pixels between cells ->
    (H, W, 3) uint8; shorter rows are padded with white on the right."""
    strips = []
    for row in rows:
        cells = [to_uint8_rgb(x) for x in row]
        if not cells:
            continue
        h = cells[0].shape[0]
        if any(c.shape[0] != h for c in cells):
            raise ValueError(f"contact sheet row images differ in height: {[c.shape for c in cells]}")
        sep = np.full((h, gap, 3), 255, np.uint8)
        joined = [cells[0]]
        for c in cells[1:]:
            joined += [sep, c]
        strips.append(np.concatenate(joined, axis=1))
    if not strips:
        raise ValueError("contact_sheet needs at least one image")
    width = max(x.shape[1] for x in strips)
    out = []
    for i, x in enumerate(strips):
        if i:
            out.append(np.full((gap, width, 3), 255, np.uint8))
        out.append(np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)), constant_values=255))
    return np.concatenate(out, axis=0)


def save_image(path: str, img: Image) -> str:
    import imageio.v3 as iio
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    iio.imwrite(path, to_uint8_rgb(img))
    return path


def _even(frame: np.ndarray) -> np.ndarray:
    """yuv420p (what players expect from H.264) needs even width and height: pad by edge replication."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def save_video(frames: Iterable[Image], path_stem: str, fps: int = 30,
               formats: Sequence[str] = ("mp4", "gif")) -> list[str]:
    """Write `<path_stem>.mp4` / `.gif`; returns the written paths."""
    import imageio.v2 as imageio2
    import imageio.v3 as iio

    rgb = [to_uint8_rgb(f) for f in frames]
    if not rgb:
        raise ValueError("save_video got no frames")
    if len({f.shape for f in rgb}) != 1:
        raise ValueError(f"video frames differ in shape: {sorted({f.shape for f in rgb})}")
    unknown = sorted(set(formats) - {"mp4", "gif"})
    if unknown:
        raise ValueError(f"unknown video formats {unknown}; use mp4 and/or gif")
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    written = []
    if "mp4" in formats:
        path = path_stem + ".mp4"
        imageio2.mimwrite(path, [_even(f) for f in rgb], fps=fps, codec="libx264", quality=8,
                          macro_block_size=1, pixelformat="yuv420p")
        written.append(path)
    if "gif" in formats:
        path = path_stem + ".gif"
        iio.imwrite(path, np.stack(rgb), extension=".gif", duration=1000.0 / fps, loop=0)
        written.append(path)
    return written
