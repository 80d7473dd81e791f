"""Score-distillation guidance (registered by name: "multiview-diffusion-guidance")."""
from mindspore_impl.lift3d.guidance.multiview_diffusion_guidance import (  # noqa: F401
    Config, GuidanceError, MultiviewDiffusionGuidance)
