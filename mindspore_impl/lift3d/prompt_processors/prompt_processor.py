"""The MindSpore prompt processor ("mvdream-prompt-processor", "stable-diffusion-prompt-processor"): the
framework-neutral processor of neutral/lift3d/prompt_processor.py (prompts, cache, view-dependent selection)
with the frozen MindSpore text encoder.
Twin: torch_ref/lift3d/prompt_processors/prompt_processor.py (same cache, torch text encoder).
"""
from __future__ import annotations

from typing import Callable

import mindspore as ms
import numpy as np

from neutral.lift3d import prompt_processor as neutral_pp
from neutral.registry import register


def make_encode_fn(tokenize: Callable[[list], np.ndarray], text_encoder) -> neutral_pp.EncodeFn:
    """tokenize(texts) -> (N, 77) int ids; MindSpore text encoder (N, 77) int32 -> (N, 77, C)."""

    def encode(texts):
        tokens = ms.Tensor(np.asarray(tokenize(list(texts)), dtype=np.int32))
        return text_encoder(tokens).asnumpy().astype(np.float32)
    return encode


@register("mvdream-prompt-processor")
@register("stable-diffusion-prompt-processor")
class PromptProcessor(neutral_pp.PromptProcessor):
    def load_encode_fn(self) -> neutral_pp.EncodeFn:
        """The frozen MindSpore text encoder from the converted checkpoint (its tokenizer already loaded; the
        truncation warnings were given when it was)."""
        from mindspore_impl.lift3d.guidance.multiview_diffusion_guidance import load_frozen_models

        def tokenize(texts):
            return self.tokenizer(texts, warn=False)
        models, _ = load_frozen_models(self.ckpt_path, self.config_path, ("text_encoder",))
        return make_encode_fn(tokenize, models["text_encoder"])
