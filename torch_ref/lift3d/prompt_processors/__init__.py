from torch_ref.lift3d.prompt_processors.prompt_processor import PromptProcessor, make_encode_fn  # noqa: F401
