"""The Ascend fast paths, checked on CPU (issue 14, item 3).

- Attention dispatch (mindspore_impl/mvdream/attention.py): 'flash' only on Ascend (A2 or later) for head
  shapes and call shapes FlashAttentionScore accepts, 'math' otherwise; the device check is mocked
  (core/device.py current_device / ascend_soc) and the layer is shown to call the backend it chose.
- Precision (core/device.py check_precision, the one rule): float32 and float16 run here, bfloat16 does not;
  system.amp_level / amp_dtype / guidance.half_precision_weights, the model YAML's use_bf16, t2i --fp16 and
  MVDreamPipeline's dtype give one line before any model is built.
- `launch.py --device Ascend` on a machine without Ascend: one line naming what MindSpore found, exit 2.
- CPU dispatch (core/device.py dispatch_for): on CPU, operators are dispatched from the calling thread, so
  MindSpore starts none of its dispatch-queue threads; a user's own MS_DEV_HOST_BLOCKING_RUN is kept.
"""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

import launch
from mindspore_impl.core import device
from mindspore_impl.mvdream import attention, loading
from neutral.lift3d.multiview_diffusion_guidance import GuidanceError, unet_precision
from neutral.mvdream.model_config import load_model_config
from neutral.mvdream.unet import attention_heads
from tests import parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = os.path.join(ROOT, "configs", "tiny-mvdream.yaml")
TINY_SDS = os.path.join(ROOT, "configs", "tiny-sds.yaml")


def on(monkeypatch, target: str, soc: str = "") -> None:
    """Pretend MindSpore targets `target` (and, on Ascend, the SoC `soc`)."""
    monkeypatch.setattr(device, "current_device", lambda: target)
    monkeypatch.setattr(device, "ascend_soc", lambda: soc if target == "Ascend" else "")


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[WARNING]")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one `error:` line, got:\n{err}"
    return lines[0]


# ----------------------------------------------------------------------------- attention dispatch


@pytest.mark.parametrize("target,soc,head_dim,heads,expected", [
    ("Ascend", "ascend910b", 64, 5, "flash"),      # SD 2.1 / MVDream: 64-wide heads
    ("Ascend", "ascend910_93", 16, 2, "flash"),    # Atlas A3; the tiny model's 16-wide heads
    ("Ascend", "", 512, 1, "flash"),               # SoC not reported: trust the device target
    ("Ascend", "ascend910b", 40, 8, "math"),       # not a multiple of 16
    ("Ascend", "ascend910b", 8, 8, "math"),        # below 16
    ("Ascend", "ascend910b", 528, 1, "math"),      # above 512
    ("Ascend", "ascend910b", 64, 257, "math"),     # more than 256 heads
    ("Ascend", "ascend910", 64, 5, "math"),        # first Ascend 910: no FlashAttentionScore
    ("Ascend", "ascend310p", 64, 5, "math"),
    ("CPU", "", 64, 5, "math"),
    ("GPU", "", 64, 5, "math"),
])
def test_attention_backend(monkeypatch, target, soc, head_dim, heads, expected):
    on(monkeypatch, target, soc)
    assert attention.attention_backend(head_dim, heads) == expected


def test_flash_call_shape_limits():
    """B 1..2048 and S1, S2 1..512k (mindspore.ops.flash_attention_score)."""
    assert attention.flash_fits(2048, 512 * 1024, 512 * 1024)
    assert attention.flash_fits(1, 1, 77)
    assert not attention.flash_fits(2049, 16, 16)
    assert not attention.flash_fits(1, 512 * 1024 + 1, 16)
    assert not attention.flash_fits(1, 16, 512 * 1024 + 1)


def test_real_model_heads_take_flash_on_ascend(monkeypatch):
    """Every transformer width of sd-v2-base.yaml (64-wide heads) qualifies on Atlas A2."""
    on(monkeypatch, "Ascend", "ascend910b")
    p = load_model_config(os.path.join(ROOT, "configs", "sd-v2-base.yaml"))["unet_config"]["params"]
    for mult in p["channel_mult"]:
        heads, dim_head = attention_heads(p["model_channels"] * mult, p.get("num_heads", -1),
                                          p.get("num_head_channels", -1), p.get("legacy", True))
        assert attention.attention_backend(dim_head, heads) == "flash", (mult, heads, dim_head)


@pytest.fixture
def calls(monkeypatch):
    """Record which kernel CrossAttention calls; the flash stand-in computes the math result on CPU."""
    log = []
    real_math = attention.math_attention

    def record(name):
        def fn(q, k, v, heads, scale):
            log.append((name, tuple(q.shape), tuple(k.shape), heads, scale))
            return real_math(q, k, v, heads, scale)
        return fn

    monkeypatch.setattr(attention, "flash_attention", record("flash"))
    monkeypatch.setattr(attention, "math_attention", record("math"))
    return log


@pytest.mark.parametrize("target,soc,batch,expected", [
    ("Ascend", "ascend910b", 2, "flash"),
    ("Ascend", "ascend910b", 2049, "math"),  # over the kernel's batch limit: math for this call
    ("Ascend", "ascend910", 2, "math"),
    ("CPU", "", 2, "math"),
    ("GPU", "", 2, "math"),
])
def test_layer_calls_the_chosen_backend(monkeypatch, calls, target, soc, batch, expected):
    on(monkeypatch, target, soc)
    layer = attention.CrossAttention(32, context_dim=24, heads=2, dim_head=16)
    assert layer.backend == ("flash" if expected == "flash" or batch > 2048 else "math")
    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 6, 32)).astype(np.float32))
    ctx = ms.Tensor(np.random.default_rng(1).standard_normal((batch, 5, 24)).astype(np.float32))
    out = layer(x, ctx)
    assert out.shape == (batch, 6, 32)
    assert calls == [(expected, (batch, 6, 32), (batch, 5, 32), 2, 16 ** -0.5)]


def test_unet_on_ascend_routes_every_attention_through_flash(monkeypatch, calls):
    """The tiny UNet built 'on Ascend' calls flash in every self- and cross-attention (with the joint
    multiview batch: b (f l) for self-attention), and gives the math UNet's output."""
    params = dict(load_model_config(TINY_MODEL)["unet_config"]["params"])
    from mindspore_impl.mvdream import unet as ms_unet
    on(monkeypatch, "CPU")
    ms.set_seed(0)
    ref = ms_unet.build_from_config(params)
    on(monkeypatch, "Ascend", "ascend910b")
    fast = ms_unet.build_from_config(params)
    for pf, pr in zip(fast.get_parameters(), ref.get_parameters()):
        assert pf.name == pr.name
        pf.set_data(pr.data.copy())
    rng = np.random.default_rng(0)
    f = 4
    x = ms.Tensor(rng.standard_normal((f, 4, 8, 8)).astype(np.float32))
    t = ms.Tensor(np.full((f,), 500, np.int32))
    ctx = ms.Tensor(rng.standard_normal((f, 77, params["context_dim"])).astype(np.float32))
    cam = ms.Tensor(rng.standard_normal((f, params["camera_dim"])).astype(np.float32))
    want = ref(x, t, ctx, cam, num_frames=f).asnumpy()
    n_math = len(calls)
    assert n_math > 0 and {c[0] for c in calls} == {"math"}
    got = fast(x, t, ctx, cam, num_frames=f).asnumpy()
    flash = calls[n_math:]
    assert len(flash) == n_math and {c[0] for c in flash} == {"flash"}
    self_attn = [c for c in flash if c[2][1] != 77]
    cross_attn = [c for c in flash if c[2][1] == 77]
    assert len(self_attn) == len(cross_attn) > 0
    assert all(c[1][0] == 1 and c[1] == c[2] for c in self_attn)  # one object: its 4 views jointly
    assert all(c[1][0] == f for c in cross_attn)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- precision: the rule


@pytest.mark.parametrize("target", ["CPU", "GPU", "Ascend"])
def test_float32_and_float16_run_everywhere(target):
    assert device.check_precision("float32", target) == "float32"
    assert device.check_precision("fp16", target) == "float16"


@pytest.mark.parametrize("target", ["CPU", "GPU"])
def test_bfloat16_is_ascend_only(target):
    with pytest.raises(device.PrecisionError) as info:
        device.check_precision("bfloat16", target, setting="system.amp_dtype=bfloat16", instead="float16")
    msg = str(info.value)
    assert "\n" not in msg
    for needle in ("system.amp_dtype=bfloat16", f"does not run on {target}", "use float16",
                   "--device Ascend"):
        assert needle in msg, msg


def test_bfloat16_on_ascend_needs_a2(monkeypatch):
    monkeypatch.setattr(device, "ascend_soc", lambda: "ascend910b")
    assert device.check_precision("bf16", "Ascend") == "bfloat16"
    monkeypatch.setattr(device, "ascend_soc", lambda: "ascend910")
    with pytest.raises(device.PrecisionError, match=r"this Ascend chip \(ascend910; it needs Atlas A2"):
        device.check_precision("bfloat16", "Ascend", setting="x")


def test_unknown_dtype():
    with pytest.raises(device.PrecisionError, match="unknown dtype 'float8'"):
        device.check_precision("float8", "CPU")


def test_current_device_is_read_when_not_given(monkeypatch):
    on(monkeypatch, "CPU")
    with pytest.raises(device.PrecisionError, match="does not run on CPU"):
        device.check_precision("bfloat16")
    on(monkeypatch, "Ascend", "ascend910b")
    assert device.check_precision("bfloat16") == "bfloat16"


# ----------------------------------------------------------------------------- precision: measured on CPU


def _sds_step(dtype: str):
    """Tiny guidance (random UNet + VAE): forward, SDS loss and d loss / d rgb through the VAE."""
    from mindspore_impl.lift3d.guidance.multiview_diffusion_guidance import Config, MultiviewDiffusionGuidance
    from mindspore_impl.mvdream.cameras import create_camera_to_world_matrix
    from mindspore_impl.mvdream.schedule import NoiseSchedule

    mp = load_model_config(TINY_MODEL)
    models = loading.build_models(mp, ("unet", "vae"), use_fp16=dtype == "float16")
    g = MultiviewDiffusionGuidance(Config(n_view=4, image_size=32), models["unet"], models["vae"],
                                   NoiseSchedule.from_config(mp))
    if dtype == "bfloat16":
        g.set_weights_dtype(ms.bfloat16)
    rng = np.random.default_rng(0)
    g.update_step(4000)
    inp = g.sample_inputs(rng, 4)
    c2w = np.stack([create_camera_to_world_matrix(15.0, 90.0 * v) for v in range(4)]).astype(np.float32)
    rest = [ms.Tensor(a) for a in (c2w, rng.standard_normal((8, 77, 32)).astype(np.float32), inp["t"],
                                   inp["noise"], inp["vae_noise"])]
    rgb = ms.Tensor(rng.uniform(0, 1, (4, 24, 24, 3)).astype(np.float32))
    (loss, _), grad = ms.value_and_grad(lambda x: g(x, *rest), grad_position=0, has_aux=True)(rgb)
    return float(loss.asnumpy()), grad.asnumpy()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_allowed_precisions_run_on_cpu(dtype):
    assert device.check_precision(dtype, "CPU") == dtype
    loss, grad = _sds_step(dtype)
    assert np.isfinite(loss) and grad.dtype == np.float32 and np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_bfloat16_really_fails_on_cpu():
    """Why the rule refuses it: without the check the first UNet MatMul fails mid-run. If this starts to pass,
    MindSpore gained CPU bfloat16 kernels and check_precision can allow it."""
    if ms.get_context("device_target") != "CPU":
        pytest.skip("measures the CPU kernels; the suite runs on " + ms.get_context("device_target"))
    with pytest.raises((TypeError, RuntimeError), match="MatMul"):
        _sds_step("bfloat16")


# ----------------------------------------------------------------------------- precision: the settings


def test_unet_precision():
    assert unet_precision(False, {}) == ("float32", "half_precision_weights=false")
    assert unet_precision(True, None)[0] == "float16"
    assert unet_precision(False, {"use_fp16": True})[0] == "float16"
    assert unet_precision(False, {"use_bf16": True})[0] == "bfloat16"
    with pytest.raises(GuidanceError, match="half_precision_weights=true .* conflicts with use_bf16"):
        unet_precision(True, {"use_bf16": True})
    with pytest.raises(GuidanceError, match="both unet_config.params.use_fp16 and use_bf16"):
        unet_precision(False, {"use_fp16": True, "use_bf16": True})


@pytest.fixture
def bf16_yaml(tmp_path):
    """configs/tiny-mvdream.yaml with unet_config.params.use_bf16: true."""
    text = open(TINY_MODEL).read().replace("        use_checkpoint: False\n",
                                           "        use_checkpoint: False\n        use_bf16: True\n")
    assert "use_bf16: True" in text
    path = tmp_path / "tiny-bf16.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def no_model_build(monkeypatch):
    """A precision error must come before any model is built."""
    def refuse(*a, **k):
        raise AssertionError("a model was built before the precision check")
    monkeypatch.setattr(loading, "build_models", refuse)
    monkeypatch.setattr(loading, "build_model", refuse)


def launch_line(capsys, tmp_path, *overrides) -> str:
    capsys.readouterr()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        launch._cli(["--config", TINY_SDS, "--train", f"exp_root_dir={out}",
                     f"system.guidance.config_path={TINY_MODEL}", *overrides])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert not out.exists() or not any(out.iterdir()), "an error must come before the trial folder"
    return one_error_line(err)


@pytest.mark.parametrize("overrides,needles", [
    (["system.amp_level=O2", "system.amp_dtype=bfloat16"],
     ["system.amp_dtype=bfloat16 (system.amp_level=O2)", "does not run on CPU",
      "use system.amp_dtype=float16 or system.amp_level=O0"]),
    (["system.amp_level=O2", "system.amp_dtype=bfloat16", "system.guidance.half_precision_weights=true"],
     ["half_precision_weights=true (float16 UNet weights) conflicts with system.amp_level=O2 amp_dtype=bfloat16"]),
])
def test_system_precision_errors(capsys, tmp_path, no_model_build, overrides, needles):
    line = launch_line(capsys, tmp_path, *overrides)
    for n in needles:
        assert n in line, line


def test_system_yaml_bf16(capsys, tmp_path, no_model_build, bf16_yaml):
    line = launch_line(capsys, tmp_path, f"system.guidance.config_path={bf16_yaml}")
    assert f"use_bf16: true in {bf16_yaml}" in line and "does not run on CPU" in line, line
    line = launch_line(capsys, tmp_path, f"system.guidance.config_path={bf16_yaml}",
                       "system.guidance.half_precision_weights=true")
    assert "system.guidance: half_precision_weights=true" in line and "conflicts with use_bf16" in line, line
    line = launch_line(capsys, tmp_path, f"system.guidance.config_path={bf16_yaml}", "system.amp_level=O2")
    assert line.startswith("error: system.amp_level=O2 amp_dtype=float16"), line


@pytest.mark.parametrize("overrides", [[], ["system.amp_level=O2"], ["system.guidance.half_precision_weights=true"],
                                       ["system.amp_dtype=bfloat16"]])  # O0 ignores amp_dtype
def test_system_cpu_precisions_pass_the_check(capsys, tmp_path, no_model_build, overrides):
    """fp32, O2 float16 and half_precision_weights pass the precision check on CPU: the next check (the
    missing checkpoint) is what stops them here."""
    line = launch_line(capsys, tmp_path, "system.guidance.ckpt_path=" + str(tmp_path / "none.ckpt"), *overrides)
    assert "none.ckpt" in line and "bfloat16" not in line, line


def test_pipeline_dtype(monkeypatch, no_model_build, bf16_yaml):
    from mindspore_impl.mvdream.pipeline import MVDreamPipeline, SamplingError, check_dtype
    tiny, bf16 = load_model_config(TINY_MODEL), load_model_config(bf16_yaml)
    assert check_dtype("fp32", tiny, "CPU") == "float32"
    assert check_dtype("fp16", tiny, "CPU") == "float16"
    with pytest.raises(device.PrecisionError, match=r"use_bf16: true in the model config .* does not run on CPU"):
        MVDreamPipeline.build(bf16, tokenizer=None, dtype="fp32")
    with pytest.raises(SamplingError, match="conflicts with use_bf16"):
        check_dtype("fp16", bf16, "CPU")
    with pytest.raises(SamplingError, match="dtype must be fp32 or fp16, got 'int8'"):
        check_dtype("int8", tiny)
    on(monkeypatch, "Ascend", "ascend910b")
    assert check_dtype("fp32", bf16) == "bfloat16"


def _t2i_line(capsys, tmp_path, *args) -> str:
    from scripts import t2i
    capsys.readouterr()
    rc = t2i.main(["--ckpt", str(tmp_path / "none.ckpt"), "--tokenizer", str(tmp_path), "--size", "16",
                   "--outdir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not (tmp_path / "out").exists()
    return one_error_line(err)


def test_t2i_precision(capsys, tmp_path, no_model_build, bf16_yaml):
    line = _t2i_line(capsys, tmp_path, "--config", bf16_yaml)
    assert "use_bf16: true in the model config" in line and "does not run on CPU" in line, line
    line = _t2i_line(capsys, tmp_path, "--config", bf16_yaml, "--fp16")
    assert "--fp16 (float16 UNet weights) conflicts with use_bf16" in line, line
    # --fp16 on CPU passes the check: the missing checkpoint is what stops it
    line = _t2i_line(capsys, tmp_path, "--config", TINY_MODEL, "--fp16")
    assert "none.ckpt" in line, line


# ----------------------------------------------------------------------------- --device Ascend without Ascend


def test_launch_device_ascend_without_ascend(tmp_path):
    if "Ascend" in device.available_devices():
        pytest.skip("this MindSpore has Ascend")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config", TINY_SDS, "--train",
                           "--device", "Ascend", f"exp_root_dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    found = ", ".join(device.available_devices())
    assert line.startswith("error: --device Ascend: this MindSpore"), line
    assert f"has no Ascend backend (found: {found})" in line and "--device CPU" in line, line
    assert not out.exists()


QUEUE_THREADS = ("frontend_queue", "backend_queue")  # MindSpore 2.7's operator dispatch threads (thread names)


def thread_names() -> list:
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))


def test_dispatch_for_sets_the_variable_on_cpu_only(monkeypatch):
    monkeypatch.delenv(device.HOST_BLOCKING_VAR, raising=False)
    device.dispatch_for("Ascend")
    assert device.HOST_BLOCKING_VAR not in os.environ
    device.dispatch_for("CPU")
    assert os.environ[device.HOST_BLOCKING_VAR] == "1"
    monkeypatch.setenv(device.HOST_BLOCKING_VAR, "0")
    device.dispatch_for("CPU")
    assert os.environ[device.HOST_BLOCKING_VAR] == "0"  # the user's choice


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread names are read from /proc (Linux)")
def test_cpu_runs_without_dispatch_threads():
    """This session (tests/parity.configure_devices) and a fresh process through device.setup (launch.py and the
    scripts) run operators with no dispatch-queue thread; MS_DEV_HOST_BLOCKING_RUN=0 from the user brings them
    back (the control: the check sees the threads when they exist)."""
    if parity.ms_device() != "CPU":
        pytest.skip(f"checks the CPU's dispatch; this run uses --ms-device {parity.ms_device()}")
    x = ms.Tensor(np.ones((4, 4), np.float32))
    assert float((x * 2).sum().asnumpy()) == 32.0
    assert not set(QUEUE_THREADS) & set(thread_names()), thread_names()
    code = ("import os, sys, numpy as np, mindspore as ms; sys.path.insert(0, sys.argv[1]); "
            "from mindspore_impl.core import device; device.setup('CPU'); "
            "x = ms.Tensor(np.ones((4, 4), np.float32)); (x * 2).sum().asnumpy(); "
            "print(sorted(open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')))")
    env = {k: v for k, v in os.environ.items() if k != device.HOST_BLOCKING_VAR}
    for user_value, expect_queues in ((None, False), ("0", True)):
        run_env = env if user_value is None else {**env, device.HOST_BLOCKING_VAR: user_value}
        proc = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, env=run_env,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        names = proc.stdout.strip().splitlines()[-1]
        print(f"{device.HOST_BLOCKING_VAR}={user_value}: threads {names}")
        assert all((q in names) == expect_queues for q in QUEUE_THREADS), names
