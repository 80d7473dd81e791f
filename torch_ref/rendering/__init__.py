"""Volume-rendering math shared by lift3d and genvs (PyTorch reference)."""
