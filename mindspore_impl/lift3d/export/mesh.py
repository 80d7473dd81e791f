"""Mesh export: density grid -> marching cubes -> largest component -> vertex colours (smoothed over
neighbouring vertices) -> obj / ply / glb, and a preview picture of the mesh (matplotlib, on the CPU).

The density comes from a callable (points (N, 3) float32 in world space -> (N,) densities after the
geometry's activation, threestudio's isosurface on the density field) sampled on a regular grid over
the bounding box; `threshold` is threestudio's `isosurface_threshold` (25 for the MVDream configs).
Colours come from another callable (points -> (N, 3) rgb in [0, 1]) evaluated at the vertices.
An optional UV texture (xatlas unwrap + numpy baking) is written when xatlas is importable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from neutral.errors import UserError

PointFn = Callable[[np.ndarray], np.ndarray]
FORMATS = ("obj", "ply", "glb")


@dataclass
class MeshExportConfig:
    threshold: float = 25.0          # density level of the surface (threestudio isosurface_threshold)
    resolution: int = 128            # grid points per axis (threestudio isosurface_resolution)
    formats: list = field(default_factory=lambda: list(FORMATS))
    largest_component: bool = True   # drop floaters: keep the connected piece with most faces
    color_smoothing: int = 2         # rounds of averaging each vertex colour with its neighbours' (0: off)
    preview: bool = True             # <name>-preview.png: the coloured mesh from 4 sides
    uv_texture: bool = False         # bake a UV texture with xatlas (only when xatlas is installed)
    texture_size: int = 1024
    chunk: int = 65536               # points per density / colour query


def _query(fn: PointFn, points: np.ndarray, chunk: int, what: str) -> np.ndarray:
    outs = [np.asarray(fn(points[i:i + chunk].astype(np.float32))) for i in range(0, len(points), chunk)]
    out = np.concatenate(outs, axis=0) if outs else np.zeros((0,), np.float32)
    if out.shape[0] != len(points):
        raise ValueError(f"{what} returned {out.shape[0]} values for {len(points)} points")
    return out


def grid_points(resolution: int, bbox_min: Sequence[float], bbox_max: Sequence[float]) -> np.ndarray:
    """(R, R, R, 3) regular grid, corners included, 'ij' indexing (x is the first axis)."""
    axes = [np.linspace(lo, hi, resolution, dtype=np.float32) for lo, hi in zip(bbox_min, bbox_max)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def sample_density_grid(density_fn: PointFn, resolution: int, bbox_min, bbox_max, chunk: int = 65536) -> np.ndarray:
    pts = grid_points(resolution, bbox_min, bbox_max).reshape(-1, 3)
    dens = _query(density_fn, pts, chunk, "density_fn").reshape(-1)
    return dens.reshape(resolution, resolution, resolution).astype(np.float32)


class NoSurfaceError(UserError, ValueError):
    """The field has no surface at the isosurface threshold (an untrained or empty field)."""


def marching_cubes(grid: np.ndarray, threshold: float, bbox_min, bbox_max) -> tuple[np.ndarray, np.ndarray]:
    """Surface {density = threshold} of a (R, R, R) grid spanning the box -> (verts (V, 3), faces (F, 3)).

    Faces wind counter-clockwise seen from outside (normals point from high density to low).
    """
    from skimage import measure

    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 3 or min(grid.shape) < 2:
        raise ValueError(f"density grid must be (R, R, R) with R >= 2, got {grid.shape}")
    lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
    if not lo < threshold < hi:
        raise NoSurfaceError(f"no surface at threshold {threshold}: density ranges over [{lo:.4g}, {hi:.4g}]; set "
                             "system.geometry.isosurface_threshold inside that range, or train longer")
    bbox_min = np.asarray(bbox_min, np.float64)
    spacing = (np.asarray(bbox_max, np.float64) - bbox_min) / (np.asarray(grid.shape) - 1)
    verts, faces, _, _ = measure.marching_cubes(grid, level=threshold, spacing=tuple(spacing))
    # skimage winds faces so normals point towards increasing values; density is high inside
    return (verts + bbox_min).astype(np.float32), faces[:, ::-1].astype(np.int64)


def largest_component(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the edge-connected component with the most faces; drop unused vertices."""
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, process=False)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(faces))
    keep = labels == np.bincount(labels).argmax()
    used = np.unique(faces[keep])
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces[keep]]


def vertex_colors(color_fn: PointFn, verts: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(V, 4) uint8 RGBA from color_fn's (V, 3) rgb (float [0, 1] or uint8)."""
    rgb = _query(color_fn, verts, chunk, "color_fn")
    if rgb.ndim != 2 or rgb.shape[1] < 3:
        raise ValueError(f"color_fn must return (N, 3) rgb, got {rgb.shape}")
    rgb = rgb[:, :3]
    if rgb.dtype != np.uint8:
        rgb = np.round(np.clip(rgb.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)


def smooth_vertex_colors(colors: np.ndarray, faces: np.ndarray, rounds: int) -> np.ndarray:
    """Each round replaces a vertex colour by the mean over the vertex and its edge neighbours: the field's
    colour is sampled exactly at the surface, where its high-frequency hash-grid noise shows as speckle."""
    if rounds <= 0 or len(faces) == 0:
        return colors
    n = len(colors)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    count = np.ones(n) + np.bincount(edges.ravel(), minlength=n)
    rgb = colors[:, :3].astype(np.float64)
    for _ in range(rounds):
        total = rgb.copy()
        np.add.at(total, edges[:, 0], rgb[edges[:, 1]])
        np.add.at(total, edges[:, 1], rgb[edges[:, 0]])
        rgb = total / count[:, None]
    out = colors.copy()
    out[:, :3] = np.clip(np.round(rgb), 0, 255).astype(colors.dtype)
    return out


def render_preview(verts: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray], path: str,
                   azimuths: Sequence[float] = (30.0, 120.0, 210.0, 300.0), elevation: float = 20.0,
                   size: float = 2.4) -> str:
    """The mesh from a few sides (matplotlib's 3D polygons, Lambert-shaded face colours) -> a PNG at `path`."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    tri = verts[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    base = (colors[faces, :3].mean(1) / 255.0) if colors is not None else np.full((len(faces), 3), 0.7)
    lo, hi = verts.min(0), verts.max(0)
    center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6)
    fig = plt.figure(figsize=(size * len(azimuths), size), dpi=100)
    for i, azim in enumerate(azimuths):
        ax = fig.add_subplot(1, len(azimuths), i + 1, projection="3d")
        # a key light above and to the side of the camera, so adjacent faces differ in brightness
        a, e = np.radians(azim - 35.0), np.radians(elevation + 35.0)
        light = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        shade = 0.35 + 0.65 * np.clip(normals @ light, 0.0, 1.0)
        ax.add_collection3d(Poly3DCollection(tri, facecolors=np.clip(base * shade[:, None], 0, 1), linewidths=0))
        for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), center):
            setter(c - half, c + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=elevation, azim=azim)
        ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1, 0, 0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def bake_texture(verts: np.ndarray, faces: np.ndarray, uvs: np.ndarray, color_fn: PointFn,
                 size: int, chunk: int = 65536) -> np.ndarray:
    """(size, size, 3) uint8 texture: each texel centre inside a UV triangle gets the colour of its 3D point.

    uvs: (V, 2) in [0, 1] per vertex (faces index both verts and uvs); row 0 of the image is v = 1.
    """
    tex_pts, tex_idx = [], []
    centers = (np.arange(size) + 0.5) / size
    for tri in faces:
        uv = uvs[tri]
        lo = np.clip(np.floor(uv.min(0) * size - 0.5), 0, size - 1).astype(int)
        hi = np.clip(np.ceil(uv.max(0) * size - 0.5), 0, size - 1).astype(int)
        us, vs = np.meshgrid(centers[lo[0]:hi[0] + 1], centers[lo[1]:hi[1] + 1], indexing="ij")
        p = np.stack([us.ravel(), vs.ravel()], -1)
        a, b, c = uv
        m = np.array([b - a, c - a]).T
        det = np.linalg.det(m)
        if abs(det) < 1e-12:
            continue
        w12 = np.linalg.solve(m, (p - a).T).T
        w = np.concatenate([1.0 - w12.sum(1, keepdims=True), w12], 1)
        inside = (w >= -1e-6).all(1)
        if inside.any():
            tex_pts.append(w[inside] @ verts[tri])
            iu = np.floor(p[inside, 0] * size).astype(int)
            iv = np.floor(p[inside, 1] * size).astype(int)
            tex_idx.append(np.stack([size - 1 - iv, iu], -1))
    image = np.zeros((size, size, 3), np.uint8)
    if tex_pts:
        pts, idx = np.concatenate(tex_pts), np.concatenate(tex_idx)
        image[idx[:, 0], idx[:, 1]] = vertex_colors(color_fn, pts.astype(np.float32), chunk)[:, :3]
    return image


def _uv_mesh(verts, faces, color_fn, cfg):
    """xatlas unwrap + baked texture -> trimesh with TextureVisuals, or None when xatlas is missing."""
    try:
        import xatlas
    except ImportError:
        return None
    import trimesh
    from PIL import Image

    vmap, new_faces, uvs = xatlas.parametrize(verts, faces.astype(np.uint32))
    new_verts = verts[vmap]
    image = bake_texture(new_verts, new_faces, uvs, color_fn, cfg.texture_size, cfg.chunk)
    visual = trimesh.visual.TextureVisuals(uv=uvs, image=Image.fromarray(image))
    return trimesh.Trimesh(new_verts, new_faces, visual=visual, process=False)


def extract_mesh(density_fn: PointFn, bbox_min, bbox_max, cfg: Optional[MeshExportConfig] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Density callable -> cleaned (verts, faces)."""
    cfg = cfg or MeshExportConfig()
    grid = sample_density_grid(density_fn, cfg.resolution, bbox_min, bbox_max, cfg.chunk)
    verts, faces = marching_cubes(grid, cfg.threshold, bbox_min, bbox_max)
    if cfg.largest_component:
        verts, faces = largest_component(verts, faces)
    return verts, faces


def write_mesh(verts: np.ndarray, faces: np.ndarray, out_dir: str, name: str = "model",
               color_fn: Optional[PointFn] = None, cfg: Optional[MeshExportConfig] = None) -> list[str]:
    """Write <name>.obj/.ply/.glb (cfg.formats) with vertex colours; <name>-uv.obj(+png) when UV is on."""
    import trimesh

    cfg = cfg or MeshExportConfig()
    bad = sorted(set(cfg.formats) - set(FORMATS))
    if bad:
        raise ValueError(f"unknown mesh formats {bad}; choose from {list(FORMATS)}")
    os.makedirs(out_dir, exist_ok=True)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    colors = None
    if color_fn is not None:
        colors = smooth_vertex_colors(vertex_colors(color_fn, verts, cfg.chunk), faces, cfg.color_smoothing)
        mesh.visual.vertex_colors = colors
    written = []
    for fmt in cfg.formats:
        path = os.path.join(out_dir, f"{name}.{fmt}")
        mesh.export(path)
        written.append(path)
    if cfg.preview:
        written.append(render_preview(verts, faces, colors, os.path.join(out_dir, f"{name}-preview.png")))
    if cfg.uv_texture and color_fn is not None:
        uv_mesh = _uv_mesh(verts, faces, color_fn, cfg)
        if uv_mesh is not None:
            uv_dir = os.path.join(out_dir, f"{name}-uv")
            os.makedirs(uv_dir, exist_ok=True)
            path = os.path.join(uv_dir, f"{name}.obj")
            uv_mesh.export(path)
            written += sorted(os.path.join(uv_dir, f) for f in os.listdir(uv_dir))
    return written


def export_mesh(density_fn: PointFn, bbox_min, bbox_max, out_dir: str, color_fn: Optional[PointFn] = None,
                cfg: Optional[MeshExportConfig] = None, name: str = "model") -> list[str]:
    """The whole export: density field -> surface -> files. Returns the paths written."""
    cfg = cfg or MeshExportConfig()
    verts, faces = extract_mesh(density_fn, bbox_min, bbox_max, cfg)
    return write_mesh(verts, faces, out_dir, name, color_fn, cfg)
