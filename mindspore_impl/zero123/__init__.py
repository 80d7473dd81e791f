"""Zero-1-to-3 view-conditioned diffusion model (MindSpore): model.py, clip_image_encoder.py, loading.py."""
