"""ProjectedFeatureField: density and features at world points, read from the source views' frustum volumes
(MindSpore; twin of torch_ref/genvs/field.py).

Per point and source view (jfozard/genvs_unofficial, nerf/network_multi.py: get_cam_coords,
get_sigma_color_feat, forward):
1. into the camera: p_cam = R^T (p - t) for c2w = [R | t] in the project's OpenGL convention (columns right,
   up, -forward; neutral/lift3d/multiview_cameras.py), depth = -p_cam.z;
2. to the volume: pixel u = cx + fx x / depth, v = cy - fy y / depth (pixel i covers [i, i + 1], so its centre
   is voxel i of an align_corners=True grid), plane index (depth - near) / (far - near) (D - 1) with the planes
   of neutral/genvs/model_config.py plane_depths: uniform, inclusive, in [d - plane_radius, d + plane_radius]
   (d the camera's distance to the origin, upstream's camera_d, bound 1) or a fixed [plane_near, plane_far];
3. trilinear sampling (grid_sample, align_corners=True), zero outside the frustum. Upstream clamps the
   coordinates into its box instead, so a point outside a frustum reads the border features there;
4. the shared MLP (Linear 16 -> 64, softplus, Linear 64 -> 17, biases; no positional input) on each view's
   feature, averaged over the source views before the activations; sigma = softplus, features = sigmoid.
"""
from __future__ import annotations

from mindspore import nn, ops

from neutral.genvs.model_config import parse_field

_MIN_DEPTH = 1e-6   # upstream clips the divisor at 1e-6 as well; such points fall outside the planes anyway
_GRID_LIMIT = 3.0   # |coordinate| >= 3 reads only zero padding for any side >= 2; bounding it keeps the
                    # sampler's integer indices small for points near the camera plane
_MIN_NEAR = 1e-4    # a camera inside the plane radius: planes start just in front of it


class ProjectedFeatureField(nn.Cell):
    """construct(points (B, P, 3), c2w (B, N, 4, 4), intrinsics (B, N, 4) [fx, fy, cx, cy] in pixels of the
    volume, volumes (B, N, C, D, H, W), view_mask (B, N) or None) -> sigma (B, P), features (B, P, out_features).
    view_mask: 1 for the source slots in use, 0 for padding slots (they get no weight in the mean over views;
    None: all views count)."""

    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = parse_field(cfg)
        cfg = self.cfg
        dims = [cfg.feature_channels] + [cfg.hidden] * cfg.n_hidden_layers + [1 + cfg.out_features]
        self.layers = nn.CellList([nn.Dense(dims[i], dims[i + 1], has_bias=True) for i in range(len(dims) - 1)])
        self.fixed_planes = cfg.plane_near is not None

    def plane_range(self, c2w):
        """near, far (B, N, 1) of each source view's depth planes."""
        if self.fixed_planes:
            ones = ops.ones(c2w.shape[:2] + (1,), c2w.dtype)
            return ones * self.cfg.plane_near, ones * self.cfg.plane_far
        dist = ops.sqrt((c2w[:, :, :3, 3] ** 2).sum(axis=-1, keepdims=True))
        r = self.cfg.plane_radius
        return ops.clamp(dist - r, min=_MIN_NEAR), dist + r

    def grid_coords(self, points, c2w, intrinsics, size):
        """points (B, P, 3) -> grid_sample coordinates (B, N, P, 3) ordered (x: W, y: H, z: D) in [-1, 1]
        across the volume of (D, H, W) = size."""
        n_planes, height, width = size
        if height < 2 or width < 2:
            raise ValueError(f"ProjectedFeatureField: volumes need H, W >= 2, got {height}x{width}")
        rel = ops.expand_dims(points, 1) - ops.expand_dims(c2w[:, :, :3, 3], 2)  # (B, N, P, 3)
        cam = ops.matmul(rel, c2w[:, :, :3, :3])                                # rows: R^T (p - t)
        depth = -cam[..., 2]
        inv = 1.0 / ops.clamp(depth, min=_MIN_DEPTH)
        k = ops.expand_dims(intrinsics, 2)                                      # (B, N, 1, 4)
        u = k[..., 2] + k[..., 0] * cam[..., 0] * inv
        v = k[..., 3] - k[..., 1] * cam[..., 1] * inv
        near, far = self.plane_range(c2w)
        gx = (u - 0.5) * (2.0 / (width - 1)) - 1.0
        gy = (v - 0.5) * (2.0 / (height - 1)) - 1.0
        gz = (depth - near) / (far - near) * 2.0 - 1.0
        return ops.clamp(ops.stack([gx, gy, gz], -1), -_GRID_LIMIT, _GRID_LIMIT)

    def sample_features(self, points, c2w, intrinsics, volumes):
        """Trilinear features (B, N, P, C) of every point in every source volume (zero outside)."""
        b, n, c, d, h, w = volumes.shape
        p = points.shape[1]
        grid = self.grid_coords(points, c2w, intrinsics, (d, h, w)).reshape(b * n, 1, 1, p, 3)
        feat = ops.grid_sample(volumes.reshape(b * n, c, d, h, w), grid, "bilinear", "zeros", True)
        return feat.reshape(b, n, c, p).transpose(0, 1, 3, 2)

    def mlp(self, x):
        n_layers = len(self.layers)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < n_layers - 1:
                x = ops.softplus(x)
        return x

    def construct(self, points, c2w, intrinsics, volumes, view_mask=None):
        raw = self.mlp(self.sample_features(points, c2w, intrinsics, volumes))  # (B, N, P, 1 + F)
        if view_mask is None:
            raw = raw.mean(axis=1)  # over source views
        else:
            # a static number of slots with a varying number of real views: the mean over the valid ones
            m = view_mask.astype(raw.dtype).reshape(view_mask.shape + (1, 1))
            raw = (raw * m).sum(axis=1) / ops.clamp(m.sum(axis=1), min=1.0)
        return ops.softplus(raw[..., 0]), ops.sigmoid(raw[..., 1:])
