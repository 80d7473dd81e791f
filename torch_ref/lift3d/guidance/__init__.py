from torch_ref.lift3d.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance  # noqa: F401
