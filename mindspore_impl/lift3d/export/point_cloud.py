"""Point-cloud export: the points of a `papr-point-cloud` as a binary PLY (what the mesh export is for a field).

One vertex per real point (padding rows are not written), with the properties
    x y z                 float   world units
    red green blue        uchar   the influence score through a fixed colour ramp (blue: lowest, yellow: highest),
                                  as upstream zvict/papr colours its point plots by influence
    influence             float   the point's influence score
    f_0 ... f_{F-1}       float   the point's feature vector (with_features)
so viewers show the cloud and a later fit can start from it (papr-point-cloud init from a cloud, the next frame of a
multi-frame fit). Readable by trimesh, Open3D, MeshLab and Blender. Written atomically (neutral/files.py).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from neutral.files import write_atomically

# influence colour ramp: dark blue -> teal -> yellow
_RAMP = np.array([[0.12, 0.16, 0.55], [0.13, 0.57, 0.55], [0.99, 0.91, 0.14]])


def influence_colors(influence: np.ndarray) -> np.ndarray:
    """(n,) scores -> (n, 3) uint8 colours, the range of the scores spread over the ramp."""
    x = np.asarray(influence, np.float64).reshape(-1)
    if x.size == 0:
        return np.zeros((0, 3), np.uint8)
    lo, hi = float(x.min()), float(x.max())
    t = (x - lo) / (hi - lo) if hi > lo else np.full_like(x, 0.5)
    pos = t * (len(_RAMP) - 1)
    i = np.minimum(pos.astype(int), len(_RAMP) - 2)
    frac = (pos - i)[:, None]
    rgb = _RAMP[i] * (1.0 - frac) + _RAMP[i + 1] * frac
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def write_point_cloud_ply(path: str, positions: np.ndarray, influence: Optional[np.ndarray] = None,
                          features: Optional[np.ndarray] = None, colors: Optional[np.ndarray] = None) -> str:
    """Write n points (positions (n, 3)) with optional influence (n,) or (n, 1), features (n, F) and colours (n, 3)
    uint8 (default: from the influence) as binary little-endian PLY; returns path."""
    positions = np.asarray(positions, np.float32).reshape(-1, 3)
    n = positions.shape[0]
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    columns = [positions[:, 0], positions[:, 1], positions[:, 2]]
    if colors is None and influence is not None:
        colors = influence_colors(influence)
    if colors is not None:
        colors = np.asarray(colors, np.uint8).reshape(n, 3)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        columns += [colors[:, 0], colors[:, 1], colors[:, 2]]
    if influence is not None:
        fields.append(("influence", "f4"))
        columns.append(np.asarray(influence, np.float32).reshape(n))
    if features is not None:
        features = np.asarray(features, np.float32).reshape(n, -1)
        fields += [(f"f_{i}", "f4") for i in range(features.shape[1])]
        columns += [features[:, i] for i in range(features.shape[1])]
    table = np.empty(n, dtype=np.dtype([(name, "<" + kind if kind != "u1" else kind) for name, kind in fields]))
    for (name, _), column in zip(fields, columns):
        table[name] = column
    ply_type = {"f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment papr-point-cloud export", f"element vertex {n}"]
    header += [f"property {ply_type[kind]} {name}" for name, kind in fields]
    header.append("end_header")

    def write(f):
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(table.tobytes())

    return write_atomically(path, write)


def read_point_cloud_ply(path: str) -> dict[str, np.ndarray]:
    """Read a file written by write_point_cloud_ply -> {positions (n,3), influence (n,1) and features (n,F) when
    present, colors (n,3) uint8 when present}. Only this binary layout (one vertex element of float / uchar
    properties) is supported."""
    kinds = {"float": "<f4", "uchar": "u1"}
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply" or f.readline().strip() != b"format binary_little_endian 1.0":
            raise ValueError(f"{path}: not a binary little-endian PLY")
        n, fields = None, []
        for raw in iter(f.readline, b""):
            words = raw.decode("ascii").split()
            if words[:2] == ["element", "vertex"]:
                n = int(words[2])
            elif words and words[0] == "element":
                raise ValueError(f"{path}: unexpected element {words[1]!r}")
            elif words[:1] == ["property"]:
                fields.append((words[2], kinds[words[1]]))
            elif words == ["end_header"]:
                break
        if n is None:
            raise ValueError(f"{path}: no vertex element")
        table = np.frombuffer(f.read(), dtype=np.dtype(fields), count=n)
    names = [name for name, _ in fields]
    out = {"positions": np.stack([table[c] for c in ("x", "y", "z")], -1).astype(np.float32)}
    if "red" in names:
        out["colors"] = np.stack([table[c] for c in ("red", "green", "blue")], -1)
    if "influence" in names:
        out["influence"] = table["influence"].astype(np.float32).reshape(n, 1)
    feature_names = [name for name in names if name.startswith("f_")]
    if feature_names:
        out["features"] = np.stack([table[c] for c in feature_names], -1).astype(np.float32)
    return out


def export_point_cloud(out_dir: str, positions: np.ndarray, influence: np.ndarray, features: np.ndarray,
                       name: str = "points", with_features: bool = True) -> list[str]:
    """out_dir/<name>.ply of the given real points; returns [its path]."""
    path = os.path.join(out_dir, f"{name}.ply")
    return [write_point_cloud_ply(path, positions, influence, features if with_features else None)]
