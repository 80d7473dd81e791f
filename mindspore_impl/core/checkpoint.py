"""Parameter loading and saving for MindSpore cells, and the checkpoint errors users see.

Checks are strict by default: a missing key, an unexpected key or a shape mismatch
raises `CheckpointError` listing every offending key, and nothing is loaded.

`save_params` writes under a temporary name `.tmp_*` in the target folder (MindSpore itself writes a
second temporary `.tmp_*.tmp` beside it), fsyncs, and publishes with one `os.replace`; on any failure
both temporaries are removed and the target is untouched. A disk error (no space, I/O error, read-only
folder) becomes a one-line `CheckpointWriteError`. The training-checkpoint layout built on top of this
(arrays + a JSON record with their sha256, `last`) is described in core/train_state.py.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import Mapping, Optional

import mindspore as ms
import numpy as np

from neutral.errors import MissingFileError, UserError
from mindspore_impl.core.parameters import write_parameter


class CheckpointError(UserError, ValueError):
    """A checkpoint problem the user can fix (launch.py prints `error: <message>` and exits 2).

    Also raised when a checkpoint does not fit the model it is loaded into."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, I/O error, read-only folder); no partial file was left."""


class NonFiniteCheckpointError(CheckpointError):
    """Arrays to be saved hold NaN or inf; nothing was written. `key` names the first such array."""

    def __init__(self, message: str, key: Optional[str] = None, kind: str = "NaN or inf") -> None:
        super().__init__(message)
        self.key, self.kind = key, kind


class IncompleteCheckpointError(CheckpointError):
    """A checkpoint on disk is incomplete or corrupt (an interrupted write, a truncated file)."""


_WRITE_HINTS = {
    errno.ENOSPC: "free space on that disk, or keep fewer checkpoints (checkpoint.save_top_k)",
    errno.EDQUOT: "free space within your disk quota, or keep fewer checkpoints (checkpoint.save_top_k)",
    errno.EFBIG: "the file system refuses a file this large; write checkpoints to another disk",
    errno.EIO: "the disk reported an I/O error; check the disk, or write checkpoints to another one",
    errno.EROFS: "the folder is on a read-only file system; write checkpoints to another folder",
    errno.EACCES: "make the folder writable, or write checkpoints to another folder",
    errno.EPERM: "make the folder writable, or write checkpoints to another folder",
}


def write_error(path: str, exc: OSError) -> CheckpointWriteError:
    """A one-line CheckpointWriteError for an OSError met while writing `path`."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    hint = _WRITE_HINTS.get(exc.errno, "check the folder and the disk")
    return CheckpointWriteError(f"could not write checkpoint {path}: {reason}; {hint}")


def check_finite(arrays: Mapping[str, np.ndarray], what: str = "checkpoint") -> None:
    """Raise NonFiniteCheckpointError naming the first floating-point array holding NaN or inf."""
    for key, value in arrays.items():
        arr = np.asarray(value)
        if (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating)) \
                and not np.isfinite(arr).all():
            kind = "NaN" if np.isnan(arr).any() else "inf"
            raise NonFiniteCheckpointError(f"{what}: array {key} holds {kind} values; refusing to write it",
                                           key, kind)


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    """`title (n): a, b, c, ... and k more` on one line (user errors are one line)."""
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}): {', '.join(items[:limit])}{more}"


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
        parts = []
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if wrong:
            parts.append(_listing("shape mismatches", wrong))
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(parts))


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
            write_parameter(p, arr)
            loaded.append(name)
    return loaded


def state_dict(cell: ms.nn.Cell, prefix: str = "") -> dict[str, np.ndarray]:
    """Parameters of `cell` as numpy arrays, keyed by prefix + MindSpore name."""
    return {prefix + p.name: p.asnumpy() for p in cell.get_parameters()}


TMP_PREFIX = ".tmp_"  # every temporary file a checkpoint write creates starts with this


def _atomic_target(path: str):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1])
    os.close(fd)
    return tmp


def fsync_path(path: str) -> None:
    """Flush a written file (or a folder's entries) to disk; best effort where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (errno.EIO, errno.ENOSPC):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _quiet_mindspore_save_failure():
    """MindSpore logs a CRITICAL line of its own when a save fails; the error we raise says it all."""
    try:
        from mindspore import log as ms_log
        logger = ms_log._get_logger()  # noqa: SLF001 (no public handle on MindSpore's logger)
    except Exception:  # pragma: no cover - a MindSpore without that logger
        yield
        return

    def drop(record):
        return "Failed to save the checkpoint file" not in record.getMessage()

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _write_ms_ckpt(state: Mapping[str, np.ndarray], tmp: str) -> None:
    """The low-level MindSpore writer (tests replace it to inject disk errors)."""
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(np.asarray(v))} for k, v in state.items()], tmp)


def _write_safetensors(state: Mapping[str, np.ndarray], tmp: str) -> None:
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in state.items()}, tmp)  # keep 0-d


def save_params(state: Mapping[str, np.ndarray], path: str) -> None:
    """Write name->array to a MindSpore `.ckpt` or a `.safetensors` file, atomically.

    An OSError while writing raises CheckpointWriteError (one line) after removing the temporaries."""
    if path.endswith(".safetensors"):
        writer = _write_safetensors
    elif path.endswith(".ckpt"):
        writer = _write_ms_ckpt
    else:
        raise CheckpointError(f"unknown checkpoint extension for {path!r}: use .ckpt or .safetensors")
    try:
        tmp = _atomic_target(path)
    except OSError as exc:
        raise write_error(path, exc) from None
    leftovers = (tmp, os.path.splitext(tmp)[0] + ".tmp")  # ours, and MindSpore's own partial file
    try:
        with _quiet_mindspore_save_failure():
            writer(state, tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        for p in leftovers:
            if os.path.lexists(p):
                try:
                    os.remove(p)
                except OSError:
                    pass


def read_params(path: str) -> dict[str, np.ndarray]:
    """Read a MindSpore `.ckpt` or a `.safetensors` file into name->numpy array."""
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint not found: {path}")
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
