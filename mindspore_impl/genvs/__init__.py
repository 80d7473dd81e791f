"""GeNVS (jfozard/genvs_unofficial) model family, MindSpore: the EDM building blocks (edm.py). Public names
load on first use (PEP 562)."""
import importlib

_EXPORTS = {
    "EDMPrecond": "edm",
    "edm_loss": "edm",
    "uniform_noise_dropout": "edm",
    "sample_edm": "edm",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
