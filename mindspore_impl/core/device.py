"""Device and execution-mode setup, in one place."""
import logging
import os

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


HOST_BLOCKING_VAR = "MS_DEV_HOST_BLOCKING_RUN"


def dispatch_for(device: str) -> None:
    """On a CPU target, dispatch operators from the calling thread (MS_DEV_HOST_BLOCKING_RUN=1) unless the
    user set that variable. MindSpore's default hands each PyNative operator (and each compiled graph's launch)
    to dispatch threads that spin (sched_yield) on the cores the CPU kernels need; on Ascend they overlap host
    work with the device and stay. MindSpore reads the variable once, at the first operator of the process, so
    call this before any operator runs (setup() does). The results are bit-identical; the times are in the
    README ("Ascend", "CPU dispatch"). The variable: "whether dynamic graph operators are dispatched in a single thread"
    (MindSpeed-LLM's docs, "Environment variables", for MindSpore)."""
    if device == "CPU":
        os.environ.setdefault(HOST_BLOCKING_VAR, "1")


def setup(device: str = "CPU", mode: str = "pynative", seed: int | None = None) -> None:
    """Select the device target and execution mode (and the CPU's dispatch, dispatch_for); seed MindSpore's
    global RNG."""
    check_device(device)
    mode_key = mode.lower()
    if mode_key not in _MODES:
        raise ValueError(f"mode must be 'pynative' or 'graph', got {mode!r}")
    dispatch_for(device)
    ms.set_device(device)
    ms.set_context(mode=_MODES[mode_key])
    if seed is not None:
        ms.set_seed(seed)


def current_device() -> str:
    """The device target MindSpore runs on now (CPU, Ascend or GPU): the one device check the fast paths
    and the precision rule read (tests mock it)."""
    return ms.get_context("device_target")


def is_ascend() -> bool:
    """True when MindSpore targets an Ascend NPU (gates the Ascend-only fast paths)."""
    return current_device() == "Ascend"


# Ascend chips without bfloat16 cube units and without the FlashAttentionScore kernel: Atlas training series
# (Ascend 910, "ascend910") and Atlas inference series (310P). The kernel is documented for Atlas A2 only
# (mindspore.ops.flash_attention_score, "Only support on Atlas A2 training series"); later chips
# ("ascend910b" = A2, "ascend910_93" = A3, ...) have both.
ASCEND_SOCS_WITHOUT_BF16_OR_FLASH = ("ascend910", "ascend310p")


def ascend_soc() -> str:
    """MindSpore's Ascend SoC version ('ascend910b', 'ascend910_93', ...); '' off Ascend or when unknown.
    The same query mindspore/amp.py uses to tell Atlas A2 from the first Ascend 910."""
    try:
        from mindspore._c_expression import MSContext  # noqa: PLC0415 (no public accessor in 2.7)
        return str(MSContext.get_instance().get_ascend_soc_version() or "").lower()
    except Exception:  # pragma: no cover (older/newer MindSpore without it)
        return ""


class PrecisionError(DeviceError):
    """A low-precision setting the device cannot run (found before any model is built)."""


_PRECISION_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
                    "bfloat16": "bfloat16", "bf16": "bfloat16"}


def check_precision(dtype: str, device: str | None = None, setting: str | None = None,
                    instead: str = "float16 (or float32)") -> str:
    """The device-support rule for the dtype of model weights and math, in one place; returns the canonical
    name (float32, float16, bfloat16) or raises PrecisionError (one line: the setting, the device, what to
    use instead).

    - float32 and float16 are allowed everywhere. Measured on CPU (MindSpore 2.7.2): the tiny UNet with float16
      Dense/Conv weights runs forward, the SDS loss and the backward through the VAE in PyNative and GRAPH.
    - bfloat16 runs on Ascend only: "bfloat16 Datatype Support Status" (mindspore/docs repository,
      docs/mindspore/source_en/api_python/bfloat16_support.md) says only the Ascend backend has bfloat16
      operators, and on CPU the UNet's first MatMul fails kernel selection mid-run ("Select CPU
      operator[MatMul] fail! Unsupported data type", measured in PyNative and GRAPH). On Ascend it needs
      Atlas A2 or later (not the first Ascend 910, nor 310P: ASCEND_SOCS_WITHOUT_BF16_OR_FLASH).
    Tests: tests/test_device_paths.py.

    device: CPU / Ascend / GPU; None reads the current target (call after setup()).
    setting: how the user asked for it, e.g. "system.amp_dtype=bfloat16"; instead: the alternative to name.
    """
    name = _PRECISION_NAMES.get(str(dtype).lower())
    what = setting or f"dtype {dtype}"
    if name is None:
        raise PrecisionError(f"{what}: unknown dtype {dtype!r}; use one of float32, float16, bfloat16")
    device = device or current_device()
    if name != "bfloat16":
        return name
    if device != "Ascend":
        raise PrecisionError(f"{what}: bfloat16 does not run on {device} (MindSpore {ms.__version__} has "
                             f"bfloat16 kernels on Ascend only); use {instead} on {device}, or bfloat16 with "
                             f"--device Ascend")
    soc = ascend_soc()
    if soc in ASCEND_SOCS_WITHOUT_BF16_OR_FLASH:
        raise PrecisionError(f"{what}: bfloat16 does not run on this Ascend chip ({soc}; it needs Atlas A2 "
                             f"or later); use {instead}")
    return name


def release_graph_caches() -> None:
    """Drop the PyNative executor's cached grad graphs. MindSpore 2.7 keys them by Python object ids, so a new
    system built in the same process (the next prompt of `launch.py --prompts`) can meet a freed object's
    stale graph at a reused id ("For LayerNormGrad, the index 7 is out of range"). tests/conftest.py calls it
    after every test for the same reason."""
    from mindspore.common.api import _pynative_executor
    _pynative_executor.clear_res()
