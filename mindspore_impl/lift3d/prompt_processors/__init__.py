"""Prompt processors (registered: "mvdream-prompt-processor", "stable-diffusion-prompt-processor")."""
from mindspore_impl.lift3d.prompt_processors.prompt_processor import PromptProcessor  # noqa: F401
