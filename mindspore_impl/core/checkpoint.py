"""Parameter loading and saving for MindSpore cells.

Checks are strict by default: a missing key, an unexpected key or a shape mismatch
raises `CheckpointError` listing every offending key, and nothing is loaded.
"""
from __future__ import annotations

import os
import tempfile
from typing import Mapping

import mindspore as ms
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def _listing(title: str, items: list[str], limit: int = 40) -> str:
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def check_state_dict(expected: Mapping[str, tuple], state: Mapping[str, np.ndarray], what: str) -> None:
    """Raise CheckpointError unless `state` has exactly the keys and shapes of `expected`."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        parts = [f"{what} does not match the model:"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if wrong:
            parts.append(_listing("shape mismatches", wrong))
        raise CheckpointError("\n".join(parts))


def load_state_dict(cell: ms.nn.Cell, state: Mapping[str, np.ndarray], prefix: str = "",
                    strict: bool = True, what: str = "checkpoint") -> list[str]:
    """Copy `state[prefix + name]` into each parameter of `cell`; returns the names loaded.

    With strict=True the keys under `prefix` must equal the cell's parameter names exactly.
    """
    params = {p.name: p for p in cell.get_parameters()}
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if strict:
        check_state_dict({k: tuple(p.shape) for k, p in params.items()}, sub, what)
    loaded = []
    for name, p in params.items():
        if name in sub:
            arr = np.asarray(sub[name])
            if tuple(arr.shape) != tuple(p.shape):
                raise CheckpointError(f"{what}: shape mismatch for {name}: {arr.shape} vs {tuple(p.shape)}")
            p.set_data(ms.Tensor(arr, dtype=p.dtype))
            loaded.append(name)
    return loaded


def state_dict(cell: ms.nn.Cell, prefix: str = "") -> dict[str, np.ndarray]:
    """Parameters of `cell` as numpy arrays, keyed by prefix + MindSpore name."""
    return {prefix + p.name: p.asnumpy() for p in cell.get_parameters()}


def _atomic_target(path: str):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.splitext(path)[1])
    os.close(fd)
    return tmp


def save_params(state: Mapping[str, np.ndarray], path: str) -> None:
    """Write name->array to a MindSpore `.ckpt` or a `.safetensors` file, atomically."""
    tmp = _atomic_target(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import save_file
            save_file({k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in state.items()}, tmp)  # keep 0-d
        elif path.endswith(".ckpt"):
            ms.save_checkpoint([{"name": k, "data": ms.Tensor(np.asarray(v))} for k, v in state.items()], tmp)
        else:
            raise ValueError(f"unknown checkpoint extension for {path!r}: use .ckpt or .safetensors")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_params(path: str) -> dict[str, np.ndarray]:
    """Read a MindSpore `.ckpt` or a `.safetensors` file into name->numpy array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return dict(load_file(path))
    if path.endswith(".ckpt"):
        try:
            params = ms.load_checkpoint(path)
        except Exception as exc:  # MindSpore raises ValueError/RuntimeError on corrupt files
            raise CheckpointError(f"could not read MindSpore checkpoint {path}: {exc}") from exc
        return {k: v.asnumpy() for k, v in params.items()}
    raise ValueError(f"unknown checkpoint extension for {path!r}: use .ckpt or .safetensors")
