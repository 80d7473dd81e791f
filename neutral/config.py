"""Typed configs: a dataclass per module, parsed with OmegaConf so a misspelt key fails loudly.

After parsing, every value is checked generically (one place for every module and system):
- every float anywhere in the parsed config (typed float fields, and floats inside dict / list / Any
  fields such as learning rates, loss weights and scheduled values) must be finite, unless its field
  says `metadata={"allow_nonfinite": True}`;
- a field with `metadata={"min": m}` / `{"max": m}` must lie in that range (None passes).
Both raise ConfigError naming the dotted key, e.g. `system.guidance.guidance_scale = nan is not a finite number`.
"""
from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any, Optional, Type, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from neutral.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config key is unknown, missing or has the wrong type, or a value is out of range."""


def parse_structured(cls: Type[T], cfg: Any = None, where: str = "") -> T:
    """Build `cls` (a dataclass) from a dict / DictConfig / instance, rejecting unknown keys and bad values."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if isinstance(cfg, cls):
        return cfg
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, cfg if cfg is not None else {})
    except (ConfigKeyError, ValidationError) as exc:
        allowed = ", ".join(sorted(schema.keys()))
        msg = str(exc.msg).splitlines()[0].rstrip(".")  # OmegaConf adds full_key / object_type lines
        raise ConfigError(f"bad config{' for ' + where if where else ''}: {msg}. "
                          f"Allowed keys: {allowed}") from None
    obj = OmegaConf.to_object(merged)
    check_values(obj, where)
    return obj


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _first_nonfinite(value: Any, key: str) -> Optional[tuple[str, float]]:
    """(dotted key, value) of the first NaN/inf float in a plain value (dicts, lists, nested dataclasses)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (key, value)
    if isinstance(value, dict):
        for k, v in value.items():
            found = _first_nonfinite(v, _key(key, str(k)))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _first_nonfinite(v, f"{key}[{i}]")
            if found:
                return found
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            if not f.metadata.get("allow_nonfinite"):
                found = _first_nonfinite(getattr(value, f.name), _key(key, f.name))
                if found:
                    return found
    return None


def check_values(obj: Any, where: str = "") -> None:
    """ConfigError for a non-finite float or a value outside a field's metadata min/max (see the module doc)."""
    found = _first_nonfinite(obj, where)
    if found:
        key, value = found
        raise ConfigError(f"{key} = {value} is not a finite number; set it to a finite value")
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            check_values(value, _key(where, f.name))
            continue
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bound = (f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
            hint = f.metadata.get("hint")
            raise ConfigError(f"{_key(where, f.name)} must be {bound}, got {value}" + (f"; {hint}" if hint else ""))


def to_container(cfg: Any) -> Any:
    """Plain python dicts/lists from a DictConfig (passthrough for other values)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
