"""Writing new values into Parameters so that compiled graphs see them.

MindSpore 2.7.2 (CPU, PyNative and GRAPH_MODE): a function compiled by `ms.jit` that reaches a Cell's Parameter
through a closure keeps the tensor the Parameter held when it was compiled. `Parameter.set_data` swaps in a new
tensor that such a graph never reads; `copy_` writes into the tensor it holds. The systems' compiled training
steps did see set_data (measured on the deferred SDS step: emptying the occupancy grid emptied the next step's
samples either way), but a new compiled form should not depend on that, so host-side updates (the occupancy
grid, a scheduled clip bound, checkpoint loads) go through `write_parameter`.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np


def write_parameter(p: ms.Parameter, value) -> None:
    """p <- value (array-like or Tensor), in place when the shape is unchanged (else a new tensor: graphs
    compiled against the old shape must be rebuilt anyway)."""
    t = value if isinstance(value, ms.Tensor) else ms.Tensor(np.asarray(value))
    if t.dtype != p.dtype:
        t = t.astype(p.dtype)
    if tuple(t.shape) == tuple(p.shape):
        p.copy_(t)
    else:
        p.set_data(t)
