"""Framework-neutral part of the backgrounds: configs, config checks and the host-side colour
augmentation draws (numpy). Shared by mindspore_impl/ and torch_ref/lift3d/background/*.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

import numpy as np

from neutral.config import parse_structured


@dataclass
class NeuralEnvironmentMapBackgroundConfig:
    n_output_dims: int = 3
    color_activation: str = "sigmoid"
    dir_encoding_config: dict = field(default_factory=lambda: {"otype": "SphericalHarmonics", "degree": 3})
    mlp_network_config: dict = field(default_factory=lambda: {
        "otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16, "n_hidden_layers": 2})
    random_aug: bool = False
    random_aug_prob: float = 0.5


def check_env_map_config(cfg: NeuralEnvironmentMapBackgroundConfig) -> None:
    enc = cfg.dir_encoding_config
    if enc.get("otype") != "SphericalHarmonics":
        raise ValueError(f"dir_encoding_config.otype must be SphericalHarmonics, got {enc.get('otype')}")


def draw_aug_color(rng: np.random.Generator, cfg, training: bool) -> Optional[np.ndarray]:
    """Host-side: with probability random_aug_prob one random colour (n_output_dims,) for the whole batch."""
    if training and cfg.random_aug and rng.random() < cfg.random_aug_prob:
        return rng.random(cfg.n_output_dims).astype(np.float32)
    return None


@dataclass
class SolidColorBackgroundConfig:
    n_output_dims: int = 3
    color: Tuple[float, ...] = (1.0, 1.0, 1.0)
    learned: bool = False
    random_aug: bool = False
    random_aug_prob: float = 0.5


def parse_solid_color_config(cfg: Any) -> SolidColorBackgroundConfig:
    parsed = parse_structured(SolidColorBackgroundConfig, cfg, "solid-color-background")
    if len(parsed.color) != parsed.n_output_dims:
        raise ValueError(f"color {list(parsed.color)} must have n_output_dims={parsed.n_output_dims} values")
    return parsed


def draw_aug_colors(rng: np.random.Generator, cfg: SolidColorBackgroundConfig, batch_size: int,
                    training: bool) -> Optional[np.ndarray]:
    """Host-side: with probability random_aug_prob a random colour per image, (batch_size, n)."""
    if training and cfg.random_aug and rng.random() < cfg.random_aug_prob:
        return rng.random((batch_size, cfg.n_output_dims)).astype(np.float32)
    return None
