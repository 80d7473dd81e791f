"""Suite-wide setup: the devices (`pytest tests --ms-device CPU|Ascend|GPU --torch-device cpu|cuda`, default
CPU / cpu; tests/parity.py configure_devices) and PyNative mode around every test."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402
import torch  # noqa: E402

from mindspore_impl.core.device import release_graph_caches  # noqa: E402
from tests import parity  # noqa: E402

torch.set_num_threads(2)


def pytest_addoption(parser):
    group = parser.getgroup("devices", "devices of the parity checks (README, 'Parity and measured numbers')")
    group.addoption("--ms-device", default="CPU", metavar="CPU|Ascend|GPU",
                    help="device MindSpore runs on (default CPU)")
    group.addoption("--torch-device", default="cpu", metavar="cpu|cuda",
                    help="device the torch_ref side runs on (default cpu)")


def pytest_configure(config):
    # a device this machine lacks is a one-line usage error (exit code 4), before anything is collected
    try:
        parity.configure_devices(config.getoption("--ms-device"), config.getoption("--torch-device"))
    except parity.DeviceOptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    ms.set_context(mode=ms.PYNATIVE_MODE)


def pytest_report_header(config):
    return f"devices: MindSpore {parity.ms_device()}, torch {parity.torch_device()}"


@pytest.fixture(autouse=True)
def _pynative_mode():
    """Every test starts (and ends) in PyNative mode so a GRAPH test cannot leak its mode. Afterwards the
    PyNative executor's caches are cleared: they key grad graphs by Python object ids, and an id freed by one
    test and reused by a Cell of the next one met a stale graph inside the full suite (MindSpore 2.7 CPU:
    "For LayerNormGrad, the index 7 is out of range", "func_graph->get_return() is null")."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)
    release_graph_caches()


@pytest.fixture(autouse=True)
def _one_mindspore_device(monkeypatch):
    """MindSpore fixes its device once per process (mindspore.set_device). A test that selects another device
    in this process (launch.py, scripts/t2i.py and the benchmarks run in-process with --device CPU) cannot
    run in a --ms-device Ascend/GPU session: it is skipped, saying so. On the session's device it runs."""
    original = ms.set_device

    def set_device(device_target, device_id=None):
        if device_target != parity.ms_device():
            pytest.skip(f"selects MindSpore device {device_target} in this process, but this run uses "
                        f"--ms-device {parity.ms_device()} and MindSpore sets the device once per process; "
                        f"run it with --ms-device {device_target}")
        return original(device_target, device_id)

    monkeypatch.setattr(ms, "set_device", set_device)
    yield


@pytest.fixture
def torch_device():
    """The torch device of this run (`--torch-device`), a torch.device."""
    return parity.torch_device()
