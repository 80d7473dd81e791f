from torch_ref.lift3d.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance  # noqa: F401
from torch_ref.lift3d.guidance.zero123_guidance import Zero123Guidance  # noqa: F401
