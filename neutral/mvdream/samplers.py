"""Framework-neutral part of the samplers: sampler names, argument checks and LDM's DDIM timesteps (numpy).
Shared by mindspore_impl/ and torch_ref/mvdream/samplers.py.
"""
from __future__ import annotations

import numpy as np


SAMPLERS = ("ddim", "dpmpp2m")


def check_sampler(name: str, eta: float) -> None:
    """Raise for an unknown sampler name, or eta != 0 with the deterministic dpmpp2m."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
    if name == "dpmpp2m" and eta != 0.0:
        raise ValueError("dpmpp2m is deterministic: eta must be 0")


# ----------------------------------------------------------------------------- DDIM
def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """LDM "uniform" discretization: range(0, T, T // S) + 1 (ascending, int64)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {num_steps}")
    c = num_train_timesteps // num_steps
    steps_out = np.asarray(list(range(0, num_train_timesteps, c)), dtype=np.int64) + 1
    # like upstream, S that does not divide T gives ceil(T / c) steps; a last step at T is invalid
    if steps_out[-1] >= num_train_timesteps:
        raise ValueError(f"DDIM with {num_steps} steps would sample timestep {steps_out[-1]} "
                         f"(uniform spacing {c} + 1 >= {num_train_timesteps}); pick another step count")
    return steps_out
