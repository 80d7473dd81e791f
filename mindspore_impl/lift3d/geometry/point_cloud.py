"""`papr-point-cloud`: PAPR's learnable points (MindSpore; twin of torch_ref/lift3d/geometry/point_cloud.py).

Positions (world units), influence scores and features are Parameters with the names of upstream zvict/papr
models/model.py (`points`, `points_influ_scores`, `pc_feats`), padded to a bucketed capacity with a
non-trainable `point_mask` (the padding rule: neutral/lift3d/papr.py). Pruning and growing run on the host
between steps and write new arrays into the same Parameters; the shapes change only when the count crosses a
bucket, and then the caller rebuilds its optimizer (upstream re-creates every optimizer after each change).
"""
from __future__ import annotations

from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn

from neutral.lift3d import papr
from neutral.registry import register


@register("papr-point-cloud")
class PAPRPointCloud(nn.Cell):
    Config = papr.PointCloudConfig

    def __init__(self, cfg: Any = None, cloud: Optional[np.ndarray] = None) -> None:
        super().__init__()
        self.cfg = papr.parse_point_cloud_config(cfg)
        pos, infl, feats = papr.init_points(self.cfg, cloud)
        self.num_active = int(pos.shape[0])
        capacity = papr.bucketed_count(pos.shape[0], self.cfg.point_buckets)
        pos, infl, feats, mask = papr.pad_points(pos, infl, feats, capacity)
        self.points = Parameter(Tensor(pos), name="points")
        self.points_influ_scores = Parameter(Tensor(infl), name="points_influ_scores")
        self.pc_feats = Parameter(Tensor(feats), name="pc_feats")
        self.point_mask = Parameter(Tensor(mask), name="point_mask", requires_grad=False)

    @property
    def capacity(self) -> int:
        return int(self.points.shape[0])

    def construct(self):
        """-> positions (P,3), influence (P,1), features (P,F), mask (P,) with P the capacity."""
        return self.points, self.points_influ_scores, self.pc_feats, self.point_mask

    def tensors(self):
        """construct's outputs without calling the Cell, for host code (eager eval renders). In GRAPH mode a Cell call
        runs the graph compiled at its first call, keyed by its inputs (here none), so after a capacity change it
        would still have the old shapes."""
        return self.points, self.points_influ_scores, self.pc_feats, self.point_mask

    # ------------------------------------------------------------------ host side (between steps)
    def active_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The real points' (positions, influence, features) as numpy."""
        n = self.num_active
        return (self.points.asnumpy()[:n], self.points_influ_scores.asnumpy()[:n], self.pc_feats.asnumpy()[:n])

    def set_points(self, positions: np.ndarray, influence: np.ndarray, features: np.ndarray) -> bool:
        """Replace the point set; returns whether the capacity (the parameter shapes) changed. When it did, the
        Parameters hold new tensors: compiled steps and optimizer moments that refer to the old ones must be
        rebuilt (a compiled ms.jit function otherwise keeps rendering the old points)."""
        capacity = papr.bucketed_count(positions.shape[0], self.cfg.point_buckets)
        arrays = papr.pad_points(positions, influence, features, capacity)
        changed = capacity != self.capacity
        for param, value in zip((self.points, self.points_influ_scores, self.pc_feats, self.point_mask), arrays):
            if changed:
                param.set_data(Tensor(value, ms.float32))
            else:
                # in place: a graph compiled by ms.jit keeps the tensor it was compiled with, and MindSpore 2.7.2
                # does not see a set_data replacement there (it does see copy_)
                param.copy_(Tensor(value, ms.float32))
        self.num_active = int(positions.shape[0])
        return changed

    def prune(self, threshold: float) -> tuple[int, bool]:
        """Remove points with influence <= threshold -> (removed count, capacity changed)."""
        pos, infl, feats, keep = papr.prune_points(*self.active_arrays(), threshold)
        return int((~keep).sum()), self.set_points(pos, infl, feats)

    def grow(self, count: int, rng: np.random.Generator) -> tuple[int, bool]:
        """Add up to `count` points where neighbour distances vary most -> (added count, capacity changed)."""
        n = self.num_active
        pos, infl, feats, _ = papr.grow_points(*self.active_arrays(), count, rng, self.cfg.grow_sample_k,
                                               self.cfg.grow_interp_k, self.cfg.max_points)
        return int(pos.shape[0] - n), self.set_points(pos, infl, feats)
