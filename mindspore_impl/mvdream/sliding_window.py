"""Any number of views from the 4-view model: sliding-window joint attention.

At every denoising step view n is evaluated by running the UNet on its window of views as one
joint-attention group (num_frames = window length, each view with its own camera) and only
view n's eps is kept. Default window (size 3): n = 0 -> [0]; n = 1 -> [0, 1]; n >= 2 -> [n-1, n, 0]
(neighbour + anchor view 0, as marching-waifu-x / ControlVideo). All views share the timestep,
so any sampler (and a multistep sampler's per-view history) works unchanged on the (N, ...) latents.
Peak memory is bounded by the window (x windows_per_call), not by N; a window >= N makes every
view's window all views, which is exactly full joint attention.
"""
from __future__ import annotations

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import ops

from mindspore_impl.mvdream.samplers import EpsFn
from neutral.mvdream.sliding_window import DEFAULT_WINDOW, plan_windows, window_groups


def sliding_window_eps_fn(model_fn, context, uncontext, camera, scale: float,
                          window: Optional[int] = DEFAULT_WINDOW, windows_per_call: int = 1) -> EpsFn:
    """Guided eps over N views, each view from its own window.

    model_fn(x (B*L,4,h,w), t (B*L,), context (B*L,77,C), camera (B*L,16), num_frames=L) -> eps.
    context / uncontext: (1, 77, C) prompt and negative-prompt embeddings (uncontext None or
    scale 1: no guidance). camera: (N, 16) MindSpore tensor. Returns eps_fn(x (N,...), t) -> (N,...).
    """
    num_views = camera.shape[0]
    plan = plan_windows(num_views, window)
    groups = list(window_groups(plan, max(1, windows_per_call)))
    guided = uncontext is not None and scale != 1.0
    ctx_cache: dict[int, ms.Tensor] = {}

    def contexts(rows: int):
        if rows not in ctx_cache:
            c = ops.tile(context, (rows, 1, 1))
            ctx_cache[rows] = ops.concat([ops.tile(uncontext, (rows, 1, 1)), c], axis=0) if guided else c
        return ctx_cache[rows]

    def eps_fn(x, t: int):
        out: list = [None] * num_views
        for length, ws in groups:
            idx = ms.Tensor(np.asarray([v for w in ws for v in w], dtype=np.int32))
            x_w, cam_w = ops.gather(x, idx, 0), ops.gather(camera, idx, 0)
            rows = len(ws) * length
            if guided:
                x_w, cam_w = ops.concat([x_w, x_w], axis=0), ops.concat([cam_w, cam_w], axis=0)
            t_in = ms.Tensor(np.full((x_w.shape[0],), t, dtype=np.int32))
            e = model_fn(x_w, t_in, contexts(rows), cam_w, length)
            if guided:
                e = e[:rows] + scale * (e[rows:] - e[:rows])
            for j, w in enumerate(ws):
                for n in plan[w]:
                    pos = j * length + w.index(n)
                    out[n] = e[pos:pos + 1]
        return ops.concat(out, axis=0)
    return eps_fn
