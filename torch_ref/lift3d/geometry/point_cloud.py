"""`papr-point-cloud` (PyTorch reference; twin of mindspore_impl/lift3d/geometry/point_cloud.py).

Upstream zvict/papr models/model.py keeps `points`, `points_influ_scores` and `pc_feats` as Parameters of the
model; here they are the geometry's, padded to a bucketed capacity with the `point_mask` buffer
(neutral/lift3d/papr.py, the padding rule)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from neutral.lift3d import papr


class PAPRPointCloud(nn.Module):
    Config = papr.PointCloudConfig

    def __init__(self, cfg: Any = None, cloud: Optional[np.ndarray] = None) -> None:
        super().__init__()
        self.cfg = papr.parse_point_cloud_config(cfg)
        pos, infl, feats = papr.init_points(self.cfg, cloud)
        self.num_active = int(pos.shape[0])
        pos, infl, feats, mask = papr.pad_points(pos, infl, feats,
                                                 papr.bucketed_count(pos.shape[0], self.cfg.point_buckets))
        self.points = nn.Parameter(torch.from_numpy(pos))
        self.points_influ_scores = nn.Parameter(torch.from_numpy(infl))
        self.pc_feats = nn.Parameter(torch.from_numpy(feats))
        self.register_buffer("point_mask", torch.from_numpy(mask))

    @property
    def capacity(self) -> int:
        return int(self.points.shape[0])

    def forward(self):
        return self.points, self.points_influ_scores, self.pc_feats, self.point_mask

    def active_arrays(self):
        n = self.num_active
        return tuple(x.detach().cpu().numpy()[:n] for x in (self.points, self.points_influ_scores, self.pc_feats))

    def set_points(self, positions, influence, features) -> bool:
        """Replace the point set (new Parameters, as upstream prune_points/add_points do); returns whether the
        capacity changed."""
        capacity = papr.bucketed_count(positions.shape[0], self.cfg.point_buckets)
        pos, infl, feats, mask = papr.pad_points(positions, influence, features, capacity)
        changed = capacity != self.capacity
        device = self.points.device
        self.points = nn.Parameter(torch.from_numpy(pos).to(device))
        self.points_influ_scores = nn.Parameter(torch.from_numpy(infl).to(device))
        self.pc_feats = nn.Parameter(torch.from_numpy(feats).to(device))
        self.point_mask = torch.from_numpy(mask).to(device)
        self.num_active = int(positions.shape[0])
        return changed

    def prune(self, threshold: float):
        pos, infl, feats, keep = papr.prune_points(*self.active_arrays(), threshold)
        return int((~keep).sum()), self.set_points(pos, infl, feats)

    def grow(self, count: int, rng: np.random.Generator):
        n = self.num_active
        pos, infl, feats, _ = papr.grow_points(*self.active_arrays(), count, rng, self.cfg.grow_sample_k,
                                               self.cfg.grow_interp_k, self.cfg.max_points)
        return int(pos.shape[0] - n), self.set_points(pos, infl, feats)
