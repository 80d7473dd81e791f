"""Shared parity assertions and the suite's devices (docs/architecture.md, "The twin-tree rule").

One place for:
- the devices a run uses: MindSpore's (`--ms-device`, set once per process) and torch's (`--torch-device`);
  tests/conftest.py and scripts/parity_report.py both call `configure_devices`;
- the tolerances per (MindSpore device, torch device, dtype): `TOLERANCE_FLOORS`, applied by `tolerance`;
- moving test data to the torch device (`to_torch`, `torch_module`) and back (`to_numpy`).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from neutral.errors import UserError

MS_DEVICES = ("CPU", "Ascend", "GPU")
TORCH_DEVICES = ("cpu", "cuda")

# (MindSpore device, torch device, dtype) -> the smallest relative tolerance a comparison gets on that pair.
# A test's own `rel` states how close the two trees come on CPU (same math libraries, fp32): on CPU/cpu the
# floors are 0 or the old fp16 value, so no CPU tolerance changes. Other devices reorder reductions and use
# other exp/tanh/softmax kernels; with HF32/TF32 off (configure_devices) a fp32 whole network stays near
# 1e-5 relative, and the floors leave room above that. The non-CPU values are starting points that no run
# has measured yet (no such device was at hand): scripts/parity_report.py prints the measured errors to
# tighten them against. bfloat16 runs on Ascend only (mindspore_impl/core/device.py check_precision).
TOLERANCE_FLOORS = {
    ("CPU", "cpu", "float32"): 0.0,
    ("CPU", "cpu", "float16"): 1e-2,
    ("CPU", "cuda", "float32"): 1e-4,
    ("CPU", "cuda", "float16"): 1e-2,
    ("GPU", "cpu", "float32"): 1e-4,
    ("GPU", "cpu", "float16"): 1e-2,
    ("GPU", "cuda", "float32"): 1e-4,
    ("GPU", "cuda", "float16"): 1e-2,
    ("Ascend", "cpu", "float32"): 1e-3,
    ("Ascend", "cpu", "float16"): 1e-2,
    ("Ascend", "cpu", "bfloat16"): 5e-2,
    ("Ascend", "cuda", "float32"): 1e-3,
    ("Ascend", "cuda", "float16"): 1e-2,
    ("Ascend", "cuda", "bfloat16"): 5e-2,
}

_devices = {"ms": "CPU", "torch": "cpu"}


class DeviceOptionError(UserError, ValueError):
    """A device option this machine cannot honour; the message is one line (conftest turns it into a usage
    error, scripts/parity_report.py into `error: ...` with exit code 2)."""


def check_ms_device(name: str) -> str:
    """Canonical MindSpore device name (CPU, Ascend, GPU) or DeviceOptionError naming what MindSpore found."""
    import mindspore as ms

    from mindspore_impl.core.device import available_devices
    canonical = {d.lower(): d for d in MS_DEVICES}.get(str(name).lower())
    found = ", ".join(available_devices())
    if canonical is None:
        raise DeviceOptionError(f"--ms-device {name}: not a MindSpore device; use one of {', '.join(MS_DEVICES)} "
                                f"(this MindSpore {ms.__version__} found: {found})")
    if canonical not in available_devices():
        raise DeviceOptionError(f"--ms-device {canonical}: this MindSpore {ms.__version__} has no {canonical} "
                                f"backend (found: {found}); install the MindSpore package for {canonical} or "
                                f"use --ms-device CPU")
    return canonical


def check_torch_device(name: str) -> str:
    """Canonical torch device ('cpu', 'cuda', 'cuda:1') or DeviceOptionError naming what torch found."""
    import torch
    text = str(name).strip().lower()
    kind, _, index = text.partition(":")
    cuda_found = (f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available()
                  else f"no CUDA device (torch.cuda.is_available() is False; torch built with CUDA "
                       f"{torch.version.cuda or 'none'})")
    if kind not in TORCH_DEVICES or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise DeviceOptionError(f"--torch-device {name}: not a torch device this suite runs on; use cpu or cuda "
                                f"(or cuda:N) (torch {torch.__version__} found: cpu, {cuda_found})")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceOptionError(f"--torch-device {text}: torch {torch.__version__} found {cuda_found}; "
                                    f"install a CUDA build of torch or use --torch-device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceOptionError(f"--torch-device {text}: torch {torch.__version__} found {cuda_found}")
    return text


def configure_devices(ms_device: str = "CPU", torch_device: str = "cpu") -> tuple[str, str]:
    """Check both devices (DeviceOptionError, nothing set, if either is unusable), then select them.

    MindSpore's device is fixed once per process (mindspore.set_device). Off the CPU both frameworks are told
    to keep fp32 matmuls and convolutions in fp32, so a parity run compares the port's math, not the cards'
    fast modes (README, "Parity and measured numbers"):
    - Ascend: precision_mode("must_keep_origin_dtype") (the default on Atlas training series is force_fp16)
      and matmul_allow_hf32 / conv_allow_hf32 False (CANN converts fp32 convolutions to HF32 by default);
      mindspore repository, mindspore/python/mindspore/device_context/ascend/op_precision.py (MindSpore 2.7);
    - GPU: matmul_allow_tf32 / conv_allow_tf32 False (conv TF32 is on by default; same repository,
      mindspore/python/mindspore/device_context/gpu/op_precision.py);
    - torch cuda: torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 False (cuDNN
      convolutions use TF32 by default; pytorch repository, docs/source/notes/cuda.rst, "TensorFloat-32").
    On Ascend and GPU MindSpore also runs deterministic kernels (mindspore.set_deterministic), so the
    same-device checks (GRAPH vs PyNative, recompute vs plain) compare like with like. CPU is left as it was.
    """
    import mindspore as ms
    import torch
    from mindspore_impl.core.device import dispatch_for
    ms_device, torch_device = check_ms_device(ms_device), check_torch_device(torch_device)
    dispatch_for(ms_device)  # before the session's first operator (the CPU's single-thread dispatch)
    ms.set_device(ms_device)
    if ms_device == "Ascend":
        from mindspore.device_context.ascend import op_precision
        op_precision.precision_mode("must_keep_origin_dtype")
        op_precision.matmul_allow_hf32(False)
        op_precision.conv_allow_hf32(False)
    elif ms_device == "GPU":
        from mindspore.device_context.gpu import op_precision
        op_precision.matmul_allow_tf32(False)
        op_precision.conv_allow_tf32(False)
    if ms_device != "CPU":
        ms.set_deterministic(True)
    if torch_device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if ":" in torch_device:  # cuda:N also becomes the current CUDA device (plain cuda keeps device 0)
            torch.cuda.set_device(torch.device(torch_device))
    _devices.update(ms=ms_device, torch=torch_device)
    return ms_device, torch_device


def ms_device() -> str:
    """The MindSpore device of this run (CPU unless configure_devices chose another)."""
    return _devices["ms"]


def torch_device():
    """The torch device of this run, a torch.device (cpu unless configure_devices chose another)."""
    import torch
    return torch.device(_devices["torch"])


def to_torch(x, requires_grad: bool = False, dtype=None):
    """A copy of a numpy array (or anything np.asarray takes) as a torch tensor on the run's torch device;
    a leaf that records gradients when requires_grad."""
    import torch
    t = torch.tensor(np.asarray(x), dtype=dtype, device=torch_device())
    return t.requires_grad_(True) if requires_grad else t


def torch_module(module):
    """module moved to the run's torch device (in place, as nn.Module.to does), returned for chaining."""
    return module.to(torch_device())


def to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().float().numpy()
    if hasattr(x, "asnumpy"):
        return x.asnumpy().astype(np.float32)
    return np.asarray(x, dtype=np.float32)


def tolerance(rel: float = 1e-4, dtype: str = "float32") -> float:
    """The relative tolerance of a comparison stated as `rel` on CPU, on this run's devices and dtype:
    max(rel, TOLERANCE_FLOORS[(ms device, torch device, dtype)])."""
    key = (_devices["ms"], _devices["torch"].split(":")[0], dtype)
    if key not in TOLERANCE_FLOORS:
        raise KeyError(f"no parity tolerance for MindSpore {key[0]} / torch {key[1]} / {dtype} "
                       f"(tests/parity.py TOLERANCE_FLOORS)")
    return max(rel, TOLERANCE_FLOORS[key])


def parity_error(actual, reference) -> tuple[float, float]:
    """(max |actual - reference|, max(1, max |reference|)): the error and the scale the tolerance multiplies."""
    a, r = to_numpy(actual), to_numpy(reference)
    if a.shape != r.shape:
        raise AssertionError(f"shape {a.shape} vs reference {r.shape}")
    err = float(np.max(np.abs(a - r))) if a.size else 0.0
    scale = max(1.0, float(np.max(np.abs(r))) if r.size else 0.0)
    return err, scale


def assert_parity(actual, reference, name: str, rel: float = 1e-4, dtype: str = "float32") -> float:
    """max |actual - reference| <= tolerance(rel, dtype) * max(1, max |reference|); prints and returns the error."""
    try:
        err, scale = parity_error(actual, reference)
    except AssertionError as exc:
        raise AssertionError(f"{name}: {exc}") from None
    tol = tolerance(rel, dtype) * scale
    print(f"[parity] {name}: max abs err {err:.3e} (tolerance {tol:.3e}, max |ref| {scale:.3e})")
    assert err <= tol, f"{name}: max abs err {err:.3e} exceeds tolerance {tol:.3e}"
    return err


def assert_first_adam_step_parity(new, ref_new, moment, ref_moment, old, name: str, rel: float = 1e-4) -> int:
    """Parameters after one Adam step equal the reference's, except where the gradient is rounding noise of 0.

    Adam's first step moves an element by lr * g / (|g| + eps): about lr * sign(g) whatever the gradient's size
    (upstream's eps is 1e-15). Where both first moments are within the gradient tolerance of 0 (rel of the largest
    moment), rounding decides the sign and the size, and another CPU may step the other way: such elements may
    differ by up to twice the reference's largest step. Every other element must agree to `rel`.
    Returns how many noise elements differ beyond `rel`."""
    new, ref_new, moment, ref_moment, old = (to_numpy(x) for x in (new, ref_new, moment, ref_moment, old))
    m_tol = tolerance(rel) * max(float(np.abs(ref_moment).max()), 1e-30)
    noise = (np.abs(ref_moment) <= m_tol) & (np.abs(moment) <= m_tol)
    assert_parity(np.where(noise, ref_new, new), ref_new, name, rel)
    diff = np.abs(new - ref_new)
    off = noise & (diff > tolerance(rel) * max(1.0, float(np.abs(ref_new).max())))
    if off.any():
        bound = 2.0 * float(np.abs(ref_new - old).max()) * (1.0 + rel) + tolerance(rel)
        err = float(diff[off].max())
        print(f"[parity] {name}: {int(off.sum())} of {off.size} elements whose gradient is rounding noise of 0 "
              f"stepped differently (max abs err {err:.3e}, bound {bound:.3e})")
        assert err <= bound, f"{name}: an element with a rounding-noise gradient moved {err:.3e} > {bound:.3e}"
    return int(off.sum())


# Compiled steps a test replaces are kept for the whole session. MindSpore 2.7.2 keys the graphs of a grad
# (ms.grad / ms.value_and_grad) by the differentiated function's id(); a new closure that CPython puts at a
# freed one's address then met that function's dropped graph inside the full suite ("func_graph->get_return()
# is null" while compiling).
_RETIRED_STEPS: list = []


def fresh_steps(system) -> None:
    """Forget the system's compiled steps (the next step builds and compiles anew) without freeing them."""
    _RETIRED_STEPS.append(dict(system._steps))
    system._steps.clear()


def in_fresh_interpreter(test_file: str, node: str, flag: str, timeout: int = 900) -> bool:
    """Run one test in a fresh interpreter (pytest with this session's devices) unless this is that run: True when
    the caller is the fresh run and should test; otherwise asserts the fresh run passed and returns False.
    For GRAPH-mode tests that MindSpore 2.7.2's graph manager failed inside the full suite ("func_graph->
    get_return() is null", MaybeDropFuncGraphs) and never alone."""
    if os.environ.get(flag) == "1":
        return True
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           f"{os.path.abspath(test_file)}::{node}", f"--ms-device={ms_device()}",
                           f"--torch-device={_devices['torch']}"],
                          cwd=root, env={**os.environ, flag: "1"}, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return False
