"""One registry for every swappable module (threestudio's `@register("name")`)."""
from __future__ import annotations

_REGISTRY: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise KeyError(f"'{name}' is registered twice: {_REGISTRY[name]} and {cls}")
        _REGISTRY[name] = cls
        return cls
    return wrap


def find(name: str) -> type:
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "(none imported)"
        raise KeyError(f"unknown module type '{name}'. Registered: {known}")
    return _REGISTRY[name]
