"""PyTorch twin of the MVDream system's training step (torch_ref/lift3d/systems/mvdream_system.py)."""
