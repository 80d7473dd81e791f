"""Adam / AdamW with torch.optim semantics, as a MindSpore Cell that also compiles inside `ms.jit`.

Why not a MindSpore optimizer: `nn.AdamWeightDecay` has no bias correction (its first steps differ
from torch's by orders of magnitude with eps 1e-15), and `mindspore.experimental.optim.AdamW` fails to
compile inside a jitted train step (MindSpore 2.7.2). This one follows torch's single-tensor update:

    p *= 1 - lr * wd                          (AdamW only; Adam adds wd * p to the gradient instead)
    m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

State (all Parameters, so checkpoints hold it): `exp_avg.<param name>`, `exp_avg_sq.<param name>`,
`optimizer_step`. Parameter groups carry their own lr and weight_decay, as in torch.

NaN guard: an update whose gradients (or the loss, when given) are not all finite is skipped, as AMP's
overflow skip does: parameters, moments and the step count stay as they were, and `update_skipped` is 1
until the next update (the trainer counts consecutive skips and stops the run past its limit).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from neutral.config import ConfigError

_DEFAULTS = {
    "AdamW": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
    "Adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
}


_HYPER_MAP = ops.HyperMap()
_all_finite = ops.MultitypeFuncGraph("all_finite")
_adam_update = ops.MultitypeFuncGraph("torch_adam_update")


@_all_finite.register("Tensor")
def _tensor_all_finite(x):
    return ops.isfinite(x).all()


@_adam_update.register("Bool", "Number", "Number", "Number", "Tensor", "Tensor", "Tensor", "Number", "Number",
                       "Tensor", "Tensor", "Tensor", "Tensor")
def _tensor_adam_update(decoupled, beta1, beta2, eps, finite, bias1, bias2_sqrt, lr, wd, p, m, v, grad):
    """One parameter's update (torch's single-tensor Adam / AdamW), kept as it was when `finite` is False."""
    g = ops.cast(grad, p.dtype)
    p_new = p
    if wd != 0.0:
        if decoupled:
            p_new = p * (1.0 - lr * wd)
        else:
            g = g + wd * p
    m_new = m * beta1 + g * (1.0 - beta1)
    v_new = v * beta2 + g * g * (1.0 - beta2)
    denom = ops.sqrt(v_new) / bias2_sqrt + eps
    ops.assign(m, ops.where(finite, m_new, m))
    ops.assign(v, ops.where(finite, v_new, v))
    ops.assign(p, ops.where(finite, p_new - (lr / bias1) * (m_new / denom), p))
    return True


class TorchAdam(nn.Cell):
    """Adam (decoupled=False) or AdamW (decoupled=True) over parameter groups.

    groups: [{"params": [Parameter, ...], "lr": float, "weight_decay": float, "name": str}, ...]
    Call with the gradients in the order of `self.parameters` (as `ms.value_and_grad` returns them).
    """

    def __init__(self, groups: Sequence[dict], betas=(0.9, 0.999), eps: float = 1e-8, decoupled: bool = True):
        super().__init__(auto_prefix=False)
        params, lrs, wds = [], [], []
        for g in groups:
            for p in g["params"]:
                params.append(p)
                lrs.append(float(g["lr"]))
                wds.append(float(g.get("weight_decay", 0.0)))
        names = [p.name for p in params]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"optimizer parameter names must be unique; repeated: {dup}")
        self.param_groups = [dict(g) for g in groups]
        self.parameters = ms.ParameterTuple(params)
        self.exp_avg = self.parameters.clone(prefix="exp_avg", init="zeros")
        self.exp_avg_sq = self.parameters.clone(prefix="exp_avg_sq", init="zeros")
        self.optimizer_step = ms.Parameter(ms.Tensor(0, ms.int32), name="optimizer_step", requires_grad=False)
        # not saved: it describes the last call only
        self.update_skipped = ms.Parameter(ms.Tensor(0, ms.int32), name="optimizer_update_skipped",
                                           requires_grad=False)
        self.lrs = tuple(lrs)
        self.wds = tuple(wds)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.decoupled = decoupled

    def construct(self, grads, loss=None):
        finite = all_finite(grads if loss is None else tuple(grads) + (loss,))
        step = self.optimizer_step + ops.cast(finite, ms.int32)
        ops.assign(self.optimizer_step, step)
        ops.assign(self.update_skipped, 1 - ops.cast(finite, ms.int32))
        t = ops.cast(ops.maximum(step, 1), ms.float32)  # a skip at step 0 must not divide by 1 - b^0 = 0
        bias1 = 1.0 - ops.pow(ms.Tensor(self.beta1, ms.float32), t)
        bias2_sqrt = ops.sqrt(1.0 - ops.pow(ms.Tensor(self.beta2, ms.float32), t))
        # one sub-graph mapped over the parameters: with a Python loop here and in all_finite, the tiny
        # multiview-diffusion step (188 parameters) compiled in 45 s instead of 15 (docs/architecture.md)
        done = _HYPER_MAP(ops.partial(_adam_update, self.decoupled, self.beta1, self.beta2, self.eps, finite, bias1,
                                      bias2_sqrt),
                          self.lrs, self.wds, self.parameters, self.exp_avg, self.exp_avg_sq, tuple(grads))
        return ops.depend(step, done)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Optimizer state as name -> array (moments and step count; not the parameters themselves)."""
        out = {p.name: p.asnumpy() for p in list(self.exp_avg) + list(self.exp_avg_sq)}
        out[self.optimizer_step.name] = self.optimizer_step.asnumpy()
        return out

    def state_parameters(self) -> dict[str, ms.Parameter]:
        out = {p.name: p for p in list(self.exp_avg) + list(self.exp_avg_sq)}
        out[self.optimizer_step.name] = self.optimizer_step
        return out


def all_finite(tensors) -> ms.Tensor:
    """A bool scalar: every element of every tensor is finite (no NaN, no inf)."""
    return ops.stack(_HYPER_MAP(_all_finite, tuple(tensors))).all()


def _number(value: Any, key: str, lo: float = 0.0, hi: float = math.inf, open_hi: bool = False) -> float:
    """A finite float in [lo, hi] (or [lo, hi) with open_hi), else ConfigError naming the key."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < lo or x > hi or (open_hi and x >= hi):
        rng = f"[{lo}, {hi}{')' if open_hi else ']'}" if math.isfinite(hi) else f">= {lo}"
        raise ConfigError(f"{key} must be a finite number {'in ' if math.isfinite(hi) else ''}{rng}, got {value!r}")
    return x


def build_optimizer(name: str, groups: list[dict], args: dict[str, Any]) -> TorchAdam:
    """torch.optim-style construction: `args` are the optimizer's keyword defaults, groups may override lr/wd.
    Learning rates, weight decays, betas and eps must be finite and in range (ConfigError naming the key)."""
    if name not in _DEFAULTS:
        raise ConfigError(f"unsupported optimizer '{name}': choose one of {sorted(_DEFAULTS)}")
    unknown = sorted(set(args) - set(_DEFAULTS[name]))
    if unknown:
        raise ConfigError(f"unsupported {name} args {unknown}; allowed: {sorted(_DEFAULTS[name])}")
    opts = {**_DEFAULTS[name], **args}
    where = "system.optimizer"
    betas = list(opts["betas"]) if isinstance(opts["betas"], (list, tuple)) else [opts["betas"]]
    if len(betas) != 2:
        raise ConfigError(f"{where}.args.betas needs two values, got {opts['betas']!r}")
    betas = tuple(_number(b, f"{where}.args.betas[{i}]", 0.0, 1.0, open_hi=True) for i, b in enumerate(betas))
    eps = _number(opts["eps"], f"{where}.args.eps")
    full = []
    for g in groups:
        bad = sorted(set(g) - {"params", "lr", "weight_decay", "name"})
        if bad:
            raise ConfigError(f"unsupported keys {bad} in optimizer parameter group '{g.get('name', '?')}'")
        group = {"lr": opts["lr"], "weight_decay": opts["weight_decay"], **g}
        label = f"{where}.params.{g['name']}" if g.get("name") else f"{where}.args"
        group["lr"] = _number(group["lr"], f"{label}.lr")
        group["weight_decay"] = _number(group["weight_decay"], f"{label}.weight_decay")
        full.append(group)
    return TorchAdam(full, betas=betas, eps=eps, decoupled=(name == "AdamW"))


def unique_params(params: Iterable[ms.Parameter]) -> list[ms.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
