"""Typed configs: a dataclass per module, parsed with OmegaConf so a misspelt key fails loudly."""
from __future__ import annotations

from dataclasses import is_dataclass
from typing import Any, Type, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, missing or has the wrong type."""


def parse_structured(cls: Type[T], cfg: Any = None, where: str = "") -> T:
    """Build `cls` (a dataclass) from a dict / DictConfig / instance, rejecting unknown keys."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if isinstance(cfg, cls):
        return cfg
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, cfg if cfg is not None else {})
    except (ConfigKeyError, ValidationError) as exc:
        allowed = ", ".join(sorted(schema.keys()))
        raise ConfigError(f"bad config{' for ' + where if where else ''}: {exc.msg}. "
                          f"Allowed keys: {allowed}") from None
    return OmegaConf.to_object(merged)


def to_container(cfg: Any) -> Any:
    """Plain python dicts/lists from a DictConfig (passthrough for other values)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
