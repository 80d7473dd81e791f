"""Backgrounds (PyTorch reference)."""
from torch_ref.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground  # noqa: F401
from torch_ref.lift3d.background.solid_color import SolidColorBackground  # noqa: F401
