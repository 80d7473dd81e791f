"""The LDM noise schedule of MVDream (sd-v2-base.yaml): "scaled linear" betas and q_sample.

betas = linspace(sqrt(linear_start), sqrt(linear_end), timesteps) ** 2 (LDM's beta_schedule "linear", the
default), or linspace(linear_start, linear_end, timesteps) (LDM's "sqrt_linear": DDPM's true linear
schedule, which the pixel-space demo model uses: it ends at sqrt(alpha_bar) 0.006 where SD's ends at 0.068,
and the latter leaves so much of a white-background image in x_T that a pixel-space model never learns to
start from pure noise nor to need the text), computed in float64 as upstream does; alphas_cumprod is kept in float64 (host math) and float32 (tensors), the
float32 values being what the original sampler and guidance read.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops


BETA_SCHEDULES = ("linear", "sqrt_linear")


def make_beta_schedule(timesteps: int = 1000, linear_start: float = 0.00085,
                       linear_end: float = 0.0120, beta_schedule: str = "linear") -> np.ndarray:
    """Betas, float64, shape (timesteps,): "linear" (scaled linear, SD) or "sqrt_linear" (true linear)."""
    if beta_schedule == "linear":
        return np.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=np.float64) ** 2
    if beta_schedule == "sqrt_linear":
        return np.linspace(linear_start, linear_end, timesteps, dtype=np.float64)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")


def make_alphas_cumprod(timesteps: int = 1000, linear_start: float = 0.00085,
                        linear_end: float = 0.0120, beta_schedule: str = "linear") -> np.ndarray:
    """prod_{s<=t} (1 - beta_s) as float32, the values upstream registers as a buffer."""
    betas = make_beta_schedule(timesteps, linear_start, linear_end, beta_schedule)
    return np.cumprod(1.0 - betas, axis=0).astype(np.float32)


def schedule_args(model_params: dict) -> tuple:
    """(timesteps, linear_start, linear_end, beta_schedule) of an original config's `model.params`."""
    return (int(model_params.get("timesteps", 1000)), float(model_params.get("linear_start", 0.00085)),
            float(model_params.get("linear_end", 0.0120)), str(model_params.get("beta_schedule", "linear")))


def schedule_from_config(model_params: dict) -> np.ndarray:
    """alphas_cumprod (float32) from an original config's `model.params`."""
    return make_alphas_cumprod(*schedule_args(model_params))


class NoiseSchedule(nn.Cell):
    """q_sample and x0 prediction; static shapes, usable inside a GRAPH-mode step.

    The per-timestep tables are plain tensors (not Parameters), so they never enter a checkpoint.
    """

    def __init__(self, timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.0120,
                 beta_schedule: str = "linear"):
        super().__init__()
        ac = np.cumprod(1.0 - make_beta_schedule(timesteps, linear_start, linear_end, beta_schedule))
        self.num_timesteps = timesteps
        self.alphas_cumprod_np = ac.astype(np.float32)
        self.alphas_cumprod = ms.Tensor(ac.astype(np.float32))
        self.sqrt_alphas_cumprod = ms.Tensor(np.sqrt(ac).astype(np.float32))
        self.sqrt_one_minus_alphas_cumprod = ms.Tensor(np.sqrt(1.0 - ac).astype(np.float32))

    @classmethod
    def from_config(cls, model_params: dict) -> "NoiseSchedule":
        return cls(*schedule_args(model_params))

    @staticmethod
    def _extract(table, t, ndim: int):
        out = ops.gather(table, t, 0)
        return out.reshape((-1,) + (1,) * (ndim - 1))

    def q_sample(self, x_start, t, noise):
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise; x (B,...), t (B,) int."""
        nd = x_start.ndim
        return (self._extract(self.sqrt_alphas_cumprod, t, nd).astype(x_start.dtype) * x_start
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, nd).astype(x_start.dtype) * noise)

    def predict_start_from_noise(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
        nd = x_t.ndim
        return ((x_t - self._extract(self.sqrt_one_minus_alphas_cumprod, t, nd) * eps)
                / self._extract(self.sqrt_alphas_cumprod, t, nd))

    def construct(self, x_start, t, noise):
        return self.q_sample(x_start, t, noise)
