"""The suite's device options (tests/conftest.py: --ms-device, --torch-device; tests/parity.py): a device this
machine lacks is a one-line pytest usage error, the tolerances come from one table, test data reaches the torch
device, and a test that switches MindSpore's device in a session on another device is skipped, saying why."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import torch

from mindspore_impl.core.device import available_devices
from tests import parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_pytest(*options):
    """pytest on a small test file with the given options, in a fresh process (MindSpore sets its device once)."""
    cmd = [sys.executable, "-m", "pytest", "tests/test_schedule.py", "-p", "no:cacheprovider", *options]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def bad_devices():
    """(option, expected texts of the one error line, run through pytest in a subprocess?). One unusable device per
    option goes through pytest's command line (the usage error, nothing collected); the others check the same
    message in this process (tests/parity.py check_ms_device / check_torch_device, what conftest reports)."""
    cases = [(("--ms-device", "TPU"), ["--ms-device TPU: not a MindSpore device", "use one of CPU, Ascend, GPU",
                                       f"this MindSpore {ms.__version__} found: CPU"], True),
             (("--torch-device", "tpu"), ["--torch-device tpu: not a torch device", "use cpu or cuda",
                                          f"torch {torch.__version__} found: cpu"], True)]
    for device in ("Ascend", "GPU"):
        cases.append(pytest.param(("--ms-device", device), [f"--ms-device {device}: this MindSpore {ms.__version__} "
                                                            f"has no {device} backend", "(found: CPU"], False,
                                  marks=pytest.mark.skipif(device in available_devices(),
                                                           reason=f"this MindSpore has {device}")))
    cases.append(pytest.param(("--torch-device", "cuda"), ["--torch-device cuda: torch", "found no CUDA device",
                                                           "use --torch-device cpu"], False,
                              marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")))
    return cases


@pytest.mark.parametrize("option, expected, through_pytest", bad_devices())
def test_unusable_device_is_a_one_line_usage_error(option, expected, through_pytest):
    if through_pytest:
        proc = run_pytest(*option)
        out = proc.stdout + proc.stderr
        print(out)
        assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
        errors = [line for line in out.splitlines() if line.startswith("ERROR: ")]
        assert len(errors) == 1, out
        assert "Traceback" not in out and "passed" not in out  # nothing ran
        line = errors[0]
    else:
        check = parity.check_ms_device if option[0] == "--ms-device" else parity.check_torch_device
        with pytest.raises(parity.DeviceOptionError) as err:
            check(option[1])
        line = str(err.value)
        print(line)
        assert "\n" not in line
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"


def test_explicit_default_devices_run_the_tests():
    proc = run_pytest("--ms-device", "cpu", "--torch-device", "CPU")  # names are case-insensitive
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout


def test_tolerance_table_keeps_cpu_values_and_covers_every_pair(monkeypatch):
    monkeypatch.setattr(parity, "_devices", {"ms": "CPU", "torch": "cpu"})
    assert [parity.tolerance(r) for r in (0.0, 1e-6, 1e-5, 1e-4, 5e-4)] == [0.0, 1e-6, 1e-5, 1e-4, 5e-4]
    assert parity.tolerance(dtype="float16") == 1e-2
    for ms_dev in parity.MS_DEVICES:
        for torch_dev in parity.TORCH_DEVICES:
            for dtype in ("float32", "float16"):
                assert (ms_dev, torch_dev, dtype) in parity.TOLERANCE_FLOORS
    monkeypatch.setattr(parity, "_devices", {"ms": "Ascend", "torch": "cuda:1"})
    assert parity.tolerance(1e-6) == parity.TOLERANCE_FLOORS[("Ascend", "cuda", "float32")]
    assert parity.tolerance(1e-2) == 1e-2  # a looser test value stays
    with pytest.raises(KeyError, match="no parity tolerance for MindSpore CPU / torch cpu / bfloat16"):
        monkeypatch.setattr(parity, "_devices", {"ms": "CPU", "torch": "cpu"})
        parity.tolerance(dtype="bfloat16")


def test_assert_parity_uses_the_table(monkeypatch):
    ref = np.ones(3, np.float32)
    parity.assert_parity(ref + 5e-5, ref, "within 1e-4 on CPU")
    with pytest.raises(AssertionError, match="exceeds tolerance"):
        parity.assert_parity(ref + 5e-5, ref, "beyond 1e-5 on CPU", rel=1e-5)
    monkeypatch.setattr(parity, "_devices", {"ms": "Ascend", "torch": "cpu"})
    parity.assert_parity(ref + 5e-5, ref, "within the Ascend floor", rel=1e-5)


def test_torch_data_goes_to_the_chosen_device(torch_device):
    x = parity.to_torch(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    assert x.device == torch_device and x.requires_grad and x.is_leaf and x.dtype == torch.float32
    m = parity.torch_module(torch.nn.Linear(3, 2))
    assert m.weight.device == torch_device
    np.testing.assert_array_equal(parity.to_numpy(m(x) * 0), np.zeros((2, 2), np.float32))


def test_switching_mindspore_device_in_another_session_skips(monkeypatch):
    ms.set_device(parity.ms_device())  # the session's own device: runs
    monkeypatch.setattr(parity, "_devices", {"ms": "Ascend", "torch": "cpu"})
    with pytest.raises(pytest.skip.Exception, match="this run uses --ms-device Ascend"):
        ms.set_device("CPU")  # what launch.py --device CPU does in-process
