"""Device and execution-mode setup, in one place."""
import logging

import mindspore as ms

from neutral.errors import UserError

_MODES = {"pynative": ms.PYNATIVE_MODE, "graph": ms.GRAPH_MODE}
_DEVICES = ("CPU", "Ascend", "GPU")


class DeviceError(UserError, ValueError):
    """The requested device is not one this MindSpore installation can use."""


def _is_available(device: str) -> bool:
    """ms.hal.is_available without the two warnings MindSpore logs for a missing backend."""
    try:
        from mindspore import log as ms_log
        logger = ms_log._get_logger()  # noqa: SLF001 (no public handle on MindSpore's logger)
    except Exception:  # pragma: no cover
        logger = logging.getLogger("mindspore")

    def drop(record):
        return False

    logger.addFilter(drop)
    try:
        return bool(ms.hal.is_available(device))
    except Exception:
        return False
    finally:
        logger.removeFilter(drop)


def available_devices() -> list:
    """The device targets this MindSpore installation can run on (CPU always)."""
    return [d for d in _DEVICES if d == "CPU" or _is_available(d)]


def check_device(device: str) -> str:
    """DeviceError (one line, naming what MindSpore found) unless `device` is usable here."""
    if device not in _DEVICES:
        raise DeviceError(f"device must be one of {', '.join(_DEVICES)}, got {device!r}")
    if device != "CPU" and not _is_available(device):
        found = ", ".join(available_devices())
        raise DeviceError(f"--device {device}: this MindSpore {ms.__version__} has no {device} backend "
                          f"(found: {found}); install the MindSpore package for {device} or pass --device CPU")
    return device


def setup(device: str = "CPU", mode: str = "pynative", seed: int | None = None) -> None:
    """Select the device target and execution mode; seed MindSpore's global RNG."""
    check_device(device)
    mode_key = mode.lower()
    if mode_key not in _MODES:
        raise ValueError(f"mode must be 'pynative' or 'graph', got {mode!r}")
    ms.set_device(device)
    ms.set_context(mode=_MODES[mode_key])
    if seed is not None:
        ms.set_seed(seed)


def is_ascend() -> bool:
    """True when MindSpore targets an Ascend NPU (gates the Ascend-only fast paths)."""
    return ms.get_context("device_target") == "Ascend"
