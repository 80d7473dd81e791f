"""The loader of the Zero-1-to-3 model: build it from the model YAML's `model.params` and load a converted
checkpoint (.ckpt / .safetensors, MindSpore names, written by `python -m convert.zero123`) strictly.

    from neutral.mvdream.model_config import load_model_config
    params = load_model_config("configs/sd-objaverse-finetune-c_concat-256.yaml")
    model = load_zero123("zero123-xl-ms.ckpt", params)          # Zero123 cell, eval mode

Errors (one line each, neutral/errors.py): a missing file is a MissingFileError that says where the original
weights are and how to convert them; the original PyTorch file itself, another format, or keys / shapes that
differ from the model raise CheckpointError naming the file and every offending key.
The layout (key prefixes) is neutral/zero123/checkpoint_layout.py.
"""
from __future__ import annotations

import os
import zipfile
from typing import Mapping, Optional

import numpy as np

from mindspore_impl.core.checkpoint import CheckpointError, load_state_dict, read_params
from mindspore_impl.zero123.model import Zero123
from neutral.errors import MissingFileError

CHECKPOINT_HINT = (
    "Get the original weights zero123-xl.ckpt (https://zero123.cs.columbia.edu/assets/zero123-xl.ckpt) or "
    "105000.ckpt (https://huggingface.co/cvlab/zero123-weights) and convert them once: "
    "python -m convert.zero123 --src zero123-xl.ckpt --dst zero123-xl-ms.ckpt")
CHECKPOINT_EXTENSIONS = (".ckpt", ".safetensors")


def check_checkpoint_file(ckpt_path: Optional[str]) -> None:
    """MissingFileError (with the download + convert hint) unless `ckpt_path` is a file; CheckpointError when it is
    not a converted checkpoint (an original PyTorch .ckpt is a zip archive; a MindSpore .ckpt is not)."""
    if not ckpt_path or not os.path.isfile(ckpt_path):
        raise MissingFileError(f"Zero123 checkpoint not found: {ckpt_path!r}. {CHECKPOINT_HINT}")
    if not ckpt_path.endswith(CHECKPOINT_EXTENSIONS):
        raise CheckpointError(f"{ckpt_path}: expected a converted .ckpt or .safetensors file. {CHECKPOINT_HINT}")
    if ckpt_path.endswith(".ckpt") and zipfile.is_zipfile(ckpt_path):
        raise CheckpointError(f"{ckpt_path} is an original PyTorch checkpoint, not a converted one. {CHECKPOINT_HINT}")


def load_weights(model: Zero123, state: Mapping[str, np.ndarray], source: str) -> None:
    """Load `state` (MindSpore names with the layout's prefixes) into the whole model, strictly: the keys must be
    exactly its parameters, with their shapes; nothing is copied otherwise."""
    load_state_dict(model, state, "", strict=True, what=f"{source} (Zero123)")


def load_zero123(ckpt_path: str, model_params: dict) -> Zero123:
    """Build Zero123 from `model_params` and load the converted checkpoint at `ckpt_path`; eval mode."""
    check_checkpoint_file(ckpt_path)
    model = Zero123(model_params)
    load_weights(model, read_params(ckpt_path), ckpt_path)
    model.set_train(False)
    return model
