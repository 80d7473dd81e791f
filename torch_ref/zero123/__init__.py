"""Zero-1-to-3 view-conditioned diffusion model, PyTorch reference (twin of mindspore_impl/zero123)."""
