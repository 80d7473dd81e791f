"""Backgrounds: colour for rays that leave the scene (MindSpore)."""
from mindspore_impl.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground  # noqa: F401
from mindspore_impl.lift3d.background.solid_color import SolidColorBackground  # noqa: F401
