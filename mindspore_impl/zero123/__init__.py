"""Zero-1-to-3 view-conditioned diffusion model (MindSpore). Public names load on first use (PEP 562)."""
import importlib

_EXPORTS = {
    "Zero123": "model",
    "FrozenCLIPImageEmbedder": "clip_image_encoder",
    "load_zero123": "loading",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
