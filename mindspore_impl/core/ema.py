"""Exponential moving average of trained weights, and its place in checkpoints.

The diffusion-training systems (mvdream/diffusion_system.py, zero123/diffusion_system.py) keep one as
`after_update` of their compiled step (core/train_step.py) and save it as extra state under "ema.<name>"; their
exports hold the EMA weights in place of the trained ones (ldm's `model_ema`, which upstream samples with).
"""
from __future__ import annotations

from typing import Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mindspore_impl.core.checkpoint import CheckpointError, check_state_dict
from mindspore_impl.core.parameters import write_parameter

EMA_PREFIX = "ema."


_HYPER_MAP = ops.HyperMap()
_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Number", "Tensor", "Tensor")
def _tensor_ema_update(decay, shadow, param):
    ops.assign(shadow, shadow * decay + param * (1.0 - decay))
    return True


class EMA(nn.Cell):
    """ema = decay * ema + (1 - decay) * p for each parameter. Called with no arguments after each optimizer update
    (core/train_step.py make_train_step(..., after_update=ema))."""

    def __init__(self, params, decay: float):
        super().__init__(auto_prefix=False)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.params = ms.ParameterTuple(params)
        self.shadow = self.params.clone(prefix="ema", init="same")
        self.decay = float(decay)

    def construct(self):
        # one sub-graph mapped over the weights: a Python loop compiles slower (core/optim.py)
        return ops.depend(self.decay, _HYPER_MAP(ops.partial(_ema_update, self.decay), self.shadow, self.params))


def ema_weights(ema: Optional[EMA], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """{name: EMA weight} for the trained parameters `keys` (in the EMA's order); empty without an EMA."""
    return {} if ema is None else {k: p.asnumpy() for k, p in zip(keys, ema.shadow)}


def ema_state(ema: Optional[EMA], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The checkpoint's extra arrays: "ema.<name>" per trained parameter."""
    return {EMA_PREFIX + k: v for k, v in ema_weights(ema, keys).items()}


def load_ema_state(ema: Optional[EMA], keys: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
    """Restore ema_state's arrays strictly: CheckpointError for unknown arrays, an EMA where the config has none
    (or the reverse), or other names and shapes."""
    saved = {k[len(EMA_PREFIX):]: v for k, v in arrays.items() if k.startswith(EMA_PREFIX)}
    others = sorted(set(arrays) - {EMA_PREFIX + k for k in saved})
    if others:
        raise CheckpointError(f"checkpoint has extra arrays this system does not know: {others[:10]}")
    if ema is None:
        if saved:
            raise CheckpointError("the checkpoint holds EMA weights but system.ema_decay is null; set it to "
                                  "continue that run")
        return
    if not saved:
        raise CheckpointError("the checkpoint holds no EMA weights but system.ema_decay is set")
    shadow = dict(zip(keys, ema.shadow))
    check_state_dict({k: tuple(p.shape) for k, p in shadow.items()}, saved, "checkpoint (EMA)")
    for k, p in shadow.items():
        write_parameter(p, saved[k])
