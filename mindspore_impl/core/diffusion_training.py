"""The base of the systems that train a diffusion model (mvdream/diffusion_system.py, zero123/diffusion_system.py).

What they share: one compiled step (core/train_step.py) of `self.loss_cell`, a cell that returns the loss alone,
with the EMA of the trained weights (core/ema.py) as the step's `after_update`; a smoothed loss for the progress
bar; the export of the model (`self.named`: its checkpoint names -> Parameters) with the EMA weights in place of
the trained ones; and the EMA and the smoothed loss as extra checkpoint state.

A subclass's configure() calls check_ema_decay() first (a config error before any model is built), sets
`self.named`, `self.trainable_keys` (the names that train) and `self.loss_cell`, then calls
start_training_state(); it implements step_tensors(batch) -> the loss cell's inputs.
"""
from __future__ import annotations

import os
from abc import abstractmethod
from typing import Any, Optional

import numpy as np

from mindspore_impl.core.checkpoint import save_params
from mindspore_impl.core.ema import EMA, ema_state, ema_weights, load_ema_state
from mindspore_impl.core.system import BaseSystem
from mindspore_impl.core.train_step import loss_forward
from neutral.config import ConfigError

SMOOTHING = 0.98  # loss_smooth = SMOOTHING * loss_smooth + (1 - SMOOTHING) * loss


class DiffusionTrainingSystem(BaseSystem):
    # the loss cell holds the models (saved under their own attributes); the EMA goes into extra_state
    unsaved_modules = ("loss_cell", "ema")

    def check_ema_decay(self) -> None:
        decay = self.cfg.ema_decay
        if decay is not None and not 0.0 < decay < 1.0:
            raise ConfigError(f"system.ema_decay must be in (0, 1) or null, got {decay}")

    def start_training_state(self) -> None:
        """The EMA of the trained weights (when system.ema_decay is set), no smoothed loss, no step built yet."""
        decay = self.cfg.ema_decay
        self.ema = EMA([self.named[k] for k in self.trainable_keys], decay) if decay else None
        self.loss_smooth: Optional[float] = None
        self._step = None

    @abstractmethod
    def step_tensors(self, batch: dict) -> tuple:
        """A data-module batch -> the loss cell's positional inputs (ConfigError when it does not fit the model)."""

    def training_step(self, batch: dict, global_step: int) -> dict[str, Any]:
        if self._step is None:
            self._step = self.make_train_step(loss_forward(self.loss_cell), jit=True if self.cfg.jit else None,
                                              after_update=self.ema)
        loss, _ = self._step(*self.step_tensors(batch))
        value = float(loss.asnumpy())
        if np.isfinite(value):
            self.loss_smooth = value if self.loss_smooth is None else \
                SMOOTHING * self.loss_smooth + (1.0 - SMOOTHING) * value
        return {"loss": value, "loss_smooth": self.loss_smooth if self.loss_smooth is not None else value}

    def export_arrays(self) -> dict[str, np.ndarray]:
        """The model alone under its checkpoint names; EMA weights in place of the trained ones when on."""
        out = {k: p.asnumpy() for k, p in self.named.items()}
        out.update(ema_weights(self.ema, self.trainable_keys))
        return out

    def export(self, out_dir: str) -> list[str]:
        path = os.path.join(out_dir, "model.ckpt")
        save_params(self.export_arrays(), path)
        return [path]

    def extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ema_state(self.ema, self.trainable_keys), {"loss_smooth": self.loss_smooth}

    def load_extra_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        load_ema_state(self.ema, self.trainable_keys, arrays)
        self.loss_smooth = meta.get("loss_smooth")
