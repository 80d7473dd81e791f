"""Multiview diffusion (MindSpore). Public names load on first use (PEP 562), so importing one submodule
does not build the others."""
import importlib

_EXPORTS = {
    "MultiViewUNetModel": "unet",
    "TextTransformer": "text_encoder",
    "AutoencoderKL": "vae",
    "NoiseSchedule": "schedule",
    "make_alphas_cumprod": "schedule",
    "get_camera": "cameras",
    "normalize_camera": "cameras",
    "guided_eps_fn": "samplers",
    "sample_ddim": "samplers",
    "sample_dpmpp_2m": "samplers",
    "sliding_window_eps_fn": "sliding_window",
    "MVDreamPipeline": "pipeline",
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
