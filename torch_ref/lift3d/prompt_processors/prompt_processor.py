"""PyTorch twin of mindspore_impl/lift3d/prompt_processors/prompt_processor.py.

The processor itself (cache, prompts, view-dependent selection) is host-side numpy in
neutral/lift3d/prompt_processor.py; only the text-encoder call differs, so parity of the whole
prompt -> embeddings path is a parity of this encode function.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from neutral.lift3d import prompt_processor as neutral_pp


def make_encode_fn(tokenize: Callable[[list], np.ndarray], text_encoder: torch.nn.Module) -> neutral_pp.EncodeFn:
    """tokenize(texts) -> (N, 77) ids; torch text encoder (N, 77) long -> (N, 77, C) numpy float32."""

    @torch.no_grad()
    def encode(texts):
        device = next(text_encoder.parameters()).device  # the ids go where the encoder's weights are
        tokens = torch.as_tensor(np.asarray(tokenize(list(texts)), dtype=np.int64), device=device)
        return text_encoder(tokens).float().cpu().numpy()
    return encode


class PromptProcessor(neutral_pp.PromptProcessor):
    """The neutral processor; its text encoder is injected as a torch encode_fn (make_encode_fn)."""
