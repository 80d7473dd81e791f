"""Score-distillation guidance (registered by name: "multiview-diffusion-guidance", "zero123-guidance")."""
from mindspore_impl.lift3d.guidance.multiview_diffusion_guidance import (  # noqa: F401
    Config, GuidanceError, MultiviewDiffusionGuidance)
from mindspore_impl.lift3d.guidance.zero123_guidance import Zero123Guidance  # noqa: F401  ("zero123-guidance")
