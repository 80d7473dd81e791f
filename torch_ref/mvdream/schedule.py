"""PyTorch twin of mindspore_impl/mvdream/schedule.py (LDM register_schedule numerics)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def make_beta_schedule(timesteps: int = 1000, linear_start: float = 0.00085,
                       linear_end: float = 0.0120, beta_schedule: str = "linear") -> np.ndarray:
    """Betas, float64 (torch.linspace in float64, as upstream): "linear" (scaled) or "sqrt_linear" (true linear)."""
    if beta_schedule == "linear":
        return (torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2).numpy()
    if beta_schedule == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64).numpy()
    raise ValueError(f"beta_schedule must be 'linear' or 'sqrt_linear', got {beta_schedule!r}")


def make_alphas_cumprod(timesteps: int = 1000, linear_start: float = 0.00085,
                        linear_end: float = 0.0120, beta_schedule: str = "linear") -> np.ndarray:
    betas = make_beta_schedule(timesteps, linear_start, linear_end, beta_schedule)
    return np.cumprod(1.0 - betas, axis=0).astype(np.float32)


def schedule_args(model_params: dict) -> tuple:
    return (int(model_params.get("timesteps", 1000)), float(model_params.get("linear_start", 0.00085)),
            float(model_params.get("linear_end", 0.0120)), str(model_params.get("beta_schedule", "linear")))


def schedule_from_config(model_params: dict) -> np.ndarray:
    return make_alphas_cumprod(*schedule_args(model_params))


def extract_into_tensor(a, t, x_shape):
    b = t.shape[0]
    return a.gather(-1, t).reshape(b, *((1,) * (len(x_shape) - 1)))


class NoiseSchedule(nn.Module):
    def __init__(self, timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.0120,
                 beta_schedule: str = "linear"):
        super().__init__()
        ac = np.cumprod(1.0 - make_beta_schedule(timesteps, linear_start, linear_end, beta_schedule))
        self.num_timesteps = timesteps
        self.alphas_cumprod_np = ac.astype(np.float32)
        f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        self.register_buffer("alphas_cumprod", f32(ac), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", f32(np.sqrt(ac)), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", f32(np.sqrt(1.0 - ac)), persistent=False)

    @classmethod
    def from_config(cls, model_params: dict) -> "NoiseSchedule":
        return cls(*schedule_args(model_params))

    def q_sample(self, x_start, t, noise):
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape).to(x_start.dtype) * x_start
                + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape).to(x_start.dtype)
                * noise)

    def predict_start_from_noise(self, x_t, t, eps):
        return ((x_t - extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * eps)
                / extract_into_tensor(self.sqrt_alphas_cumprod, t, x_t.shape))

    def forward(self, x_start, t, noise):
        return self.q_sample(x_start, t, noise)
