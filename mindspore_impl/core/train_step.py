"""The one training-step builder every system uses: forward, backward, optional loss scale and gradient clip,
optimizer update.

    step = make_train_step(forward, optimizer, grad_clip=1.0, loss_scale=1.0)
    loss, aux = step(*tensors)      # forward(*tensors) -> (loss, aux); aux is returned without gradient

With a static loss scale s != 1 the gradients are those of s * loss, divided by s before clipping and the update
(half-precision backward keeps small gradients above fp16's underflow). With a grad_reducer (data parallel under
msrun, core/distributed.py: grad_reducer) the gradients and the loss are replaced by their means across ranks right
after the backward, so clipping, the optimizer's finite check and the update see the combined batch and every rank
applies the same update; the loss returned is that mean. The optimizer (core/optim.py) skips
the update when the loss or a gradient is not finite. With jit (the default in GRAPH mode) forward, backward and
update compile as one graph; its inputs must then keep their shapes and dtypes, or each new shape compiles again.
"""
from __future__ import annotations

from typing import Callable, Optional

import mindspore as ms
from mindspore import ops


def make_train_step(forward: Callable, optimizer, grad_clip: Optional[float] = None, loss_scale: float = 1.0,
                    jit: Optional[bool] = None, after_update: Optional[Callable] = None,
                    grad_reducer: Optional[Callable] = None) -> Callable:
    """step(*inputs) -> (loss, aux) for forward(*inputs) -> (loss, aux), updating optimizer.parameters.

    after_update: called with no arguments after the optimizer, inside the step (an EMA of the weights).
    grad_reducer: (grads, loss) -> (grads, loss), called inside the step before the update (None: the single
    process, unchanged)."""
    if jit is None:
        jit = ms.get_context("mode") == ms.GRAPH_MODE
    scale = float(loss_scale)
    if not scale > 0:
        raise ValueError(f"loss_scale must be > 0, got {loss_scale}")

    if scale == 1.0:
        grad_fn = ms.value_and_grad(forward, None, optimizer.parameters, has_aux=True)
    else:
        def scaled_forward(*inputs):
            loss, aux = forward(*inputs)
            return loss * scale, loss, aux
        grad_fn = ms.value_and_grad(scaled_forward, None, optimizer.parameters, has_aux=True)

    def step(*inputs):
        if scale == 1.0:
            (loss, aux), grads = grad_fn(*inputs)
        else:
            (_, loss, aux), grads = grad_fn(*inputs)
        if grad_reducer is not None:
            grads, loss = grad_reducer(grads, loss)
        apply_gradients(optimizer, grads, loss, grad_clip, scale)
        if after_update is not None:
            after_update()
        return loss, aux

    return ms.jit(step) if jit else step


def apply_gradients(optimizer, grads: tuple, loss, grad_clip: Optional[float] = None, loss_scale: float = 1.0):
    """The update half of a step, for gradients computed elsewhere (a chunked backward): undo the loss scale,
    clip the global norm, update (skipped when the loss or a gradient is not finite)."""
    if loss_scale != 1.0:
        grads = tuple(g / loss_scale for g in grads)
    if grad_clip is not None:
        grads = ops.clip_by_global_norm(grads, grad_clip)
    return optimizer(grads, loss)


def loss_forward(loss_cell) -> Callable:
    """The forward make_train_step takes, for a cell that returns the loss alone: (*tensors) -> (loss, aux), aux
    being the loss again (returned without gradient)."""
    def forward(*inputs):
        loss = loss_cell(*inputs)
        return loss, ops.stop_gradient(loss)
    return forward


def batch_tensors(batch: dict, names) -> tuple:
    """Host arrays of a batch -> tensors in the order `names` (a step's positional inputs); KeyError naming
    what is missing."""
    import numpy as np
    missing = [k for k in names if k not in batch]
    if missing:
        raise KeyError(f"training batch lacks {missing}")
    return tuple(ms.Tensor(np.ascontiguousarray(batch[k])) for k in names)
