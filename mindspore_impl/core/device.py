"""Device and execution-mode setup, in one place."""
import mindspore as ms

_MODES = {"pynative": ms.PYNATIVE_MODE, "graph": ms.GRAPH_MODE}
_DEVICES = ("CPU", "Ascend", "GPU")


def setup(device: str = "CPU", mode: str = "pynative", seed: int | None = None) -> None:
    """Select the device target and execution mode; seed MindSpore's global RNG."""
    if device not in _DEVICES:
        raise ValueError(f"device must be one of {_DEVICES}, got {device!r}")
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
