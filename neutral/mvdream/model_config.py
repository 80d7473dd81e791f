"""The original LDM / MVDream model YAML (for example configs/sd-v2-base.yaml): read once, here, by the converter,
both model trees and the scripts."""
from __future__ import annotations

import os

from omegaconf import OmegaConf

from neutral.config import ConfigError, to_container
from neutral.errors import MissingFileError


def load_model_config(path: str) -> dict:
    """`model.params` of an original LDM/MVDream YAML (e.g. configs/sd-v2-base.yaml)."""
    if not os.path.isfile(path):
        raise MissingFileError(f"model config not found: {path} (the original model YAML, e.g. configs/sd-v2-base.yaml)")
    try:
        cfg = to_container(OmegaConf.load(path))
    except Exception as exc:  # YAML scanner / parser errors
        raise ConfigError(f"cannot parse model config {path}: {str(exc).splitlines()[0]}") from None
    try:
        return cfg["model"]["params"]
    except (KeyError, TypeError):
        raise ConfigError(f"{path} is not an original model config: it needs model.params") from None
