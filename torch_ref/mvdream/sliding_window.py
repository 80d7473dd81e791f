"""PyTorch twin of mindspore_impl/mvdream/sliding_window.py (same window plan, torch tensors)."""
from __future__ import annotations

from typing import Optional

import torch

from neutral.mvdream.sliding_window import DEFAULT_WINDOW, window_indices


@torch.no_grad()
def sliding_window_eps_fn(model_fn, context, uncontext, camera, scale: float,
                          window: Optional[int] = DEFAULT_WINDOW):
    """One UNet call per view (no batching of windows): the plain reading of the scheme."""
    num_views = camera.shape[0]
    guided = uncontext is not None and scale != 1.0

    def eps_fn(x, t: int):
        out = []
        for n in range(num_views):
            w = list(window_indices(n, num_views, window))
            length = len(w)
            x_w, cam_w = x[w], camera[w]
            ctx = context.repeat(length, 1, 1)
            if guided:
                x_w, cam_w = torch.cat([x_w] * 2), torch.cat([cam_w] * 2)
                ctx = torch.cat([uncontext.repeat(length, 1, 1), ctx])
            e = model_fn(x_w, torch.full((x_w.shape[0],), t, dtype=torch.long, device=x.device), ctx, cam_w, length)
            if guided:
                e_u, e_c = e.chunk(2)
                e = e_u + scale * (e_c - e_u)
            out.append(e[w.index(n)])
        return torch.stack(out)
    return eps_fn
