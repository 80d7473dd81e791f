"""Reading and writing PyTorch weight files without executing pickled code."""
from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np

from mindspore_impl.core.checkpoint import CheckpointError
from neutral.errors import MissingFileError

DOWNLOAD_HINT = ("The original MVDream weights (sd-v2.1-base-4view.pt) are published at "
                 "https://huggingface.co/MVDream/MVDream; download the file there and pass its local path.")


def _to_numpy(t) -> np.ndarray:
    import torch
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.float()
    return t.numpy().copy()


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """name -> numpy array from a `.pt`/`.ckpt`/`.pth` (weights_only) or `.safetensors` file.

    A Lightning-style {"state_dict": ...} wrapper is unwrapped. Anything that is not a plain
    tensor dictionary is refused with a CheckpointError that says what the file holds.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint not found: {path}. {DOWNLOAD_HINT}")
    import torch
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            sd = load_file(path)
        except Exception as exc:
            raise CheckpointError(f"could not read {path} as safetensors (corrupt or truncated?): {exc}") from exc
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"refused to load {path}: it holds pickled objects other than tensors, and loading "
                f"is done with weights_only=True so no code from the file runs. Details: {exc}") from exc
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
            raise CheckpointError(
                f"could not read {path} as a PyTorch checkpoint (corrupt or truncated file?): {exc}") from exc
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(sd).__name__})")
    bad = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:20]}")
    return {k: _to_numpy(v) for k, v in sd.items()}


def write_torch_checkpoint(state: dict[str, np.ndarray], path: str) -> None:
    """Write a plain state dict as `.pt` (torch.save) or `.safetensors`, atomically."""
    import torch
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp_{os.getpid()}_{os.path.basename(path)}")
    # ascontiguousarray turns 0-d arrays (open_clip's logit_scale) into shape (1,): reshape back
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v).reshape(np.shape(v))) for k, v in state.items()}
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file
            save_file(tensors, tmp)
        else:
            torch.save(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
