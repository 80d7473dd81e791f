"""Parity report: every module with numerics, MindSpore (mindspore_impl) vs its PyTorch twin (torch_ref), on the
devices you choose, as one table (module, check, max abs error, relative error, tolerance, pass).

    python scripts/parity_report.py                                   # MindSpore CPU vs torch cpu
    python scripts/parity_report.py --ms-device Ascend --torch-device cpu --md parity.md --json parity.json
    python scripts/parity_report.py --only hashgrid,converter         # a subset (names: --list)

The checks are the parity tests' own (tests/parity_cases.py builds the twins with random weights, moves the
weights through the project's converter and runs both sides on the same inputs; tests/parity.py holds the
devices and the tolerance table), at tiny sizes: a few minutes on 2 CPU cores. Relative error is
max |MindSpore - torch| / max(1, max |torch|); a row passes when it is at most the tolerance (the test's
tolerance on CPU, raised per device and dtype by tests/parity.py TOLERANCE_FLOORS, times --tolerance-scale).
Gradients that are small by nature (SDS d loss / d rgb, Adam moments) are compared divided by their max |torch|,
as the tests do.

Markdown goes to stdout (and --md FILE), JSON to --json FILE, with the MindSpore, CANN, torch and CUDA versions
and the device names. Exit code 0 when every row passes, 1 when a row fails or a check crashes, 2 for a bad
option or a device this machine does not have.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from neutral.errors import UserError, run_cli  # noqa: E402
from tests import parity  # noqa: E402


@dataclass
class Row:
    module: str
    check: str
    max_abs_error: float
    relative_error: float
    tolerance: float
    passed: bool


class Report:
    """Collects rows; `scale` multiplies every tolerance (--tolerance-scale)."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.rows: list[Row] = []

    def evaluate(self, module, check, actual, reference, rel=1e-4, dtype="float32") -> Row:
        err, ref_scale = parity.parity_error(actual, reference)
        tol = parity.tolerance(rel, dtype) * self.scale
        return Row(module, check, err, err / ref_scale, tol, err <= tol * ref_scale)

    def add(self, module, check, actual, reference, rel=1e-4, dtype="float32") -> None:
        self.rows.append(self.evaluate(module, check, actual, reference, rel, dtype))

    def add_worst(self, module, check, pairs, rel=1e-4, dtype="float32") -> None:
        """One row for several tensors compared alike (parameter gradients): the one furthest from passing."""
        rows = [(label, self.evaluate(module, check, a, r, rel, dtype)) for label, a, r in pairs]
        label, worst = max(rows, key=lambda lr: (not lr[1].passed, lr[1].relative_error))
        worst.check = f"{check} (worst of {len(rows)}: {label})"
        self.rows.append(worst)

    def add_relative(self, module, check, actual, reference, rel=1e-4) -> None:
        """actual and reference divided by max |reference| (small gradients, as the tests compare them)."""
        from tests.parity_cases import relative_to_max
        a, r, _ = relative_to_max(actual, reference)
        self.add(module, f"{check}, relative to its max", a, r, rel)


# ---------------------------------------------------------------------------------------------- the checks


def check_unet(report, tmp):
    from tests import parity_cases as pc
    params, pt, msm = pc.unet_pair(tmp, seed=0)
    inputs = pc.unet_inputs(8, params["context_dim"], camera=True, seed=1)
    got, ref = pc.unet_ms_run(msm, *inputs, num_frames=4), pc.unet_torch_run(pt, *inputs, num_frames=4)
    for name, a, r in zip(("output", "d/dx", "d/dcontext"), got, ref):
        report.add("UNet, 2 objects x 4 views + camera", name, a, r)
    inputs = pc.unet_inputs(2, params["context_dim"], camera=False, seed=2)
    got, ref = pc.unet_ms_run(msm, *inputs, num_frames=1), pc.unet_torch_run(pt, *inputs, num_frames=1)
    report.add("UNet, 1 view, no camera", "output", got[0], ref[0])


def check_vae(report, tmp):
    import mindspore as ms

    from tests import parity_cases as pc
    from tests.parity import to_torch
    tiny = pc.load_model_params()
    for variant, mp in (("", tiny), (" with attention", pc.vae_with_attention(tiny))):
        pt, msm = pc.vae_pair(mp)
        x, noise, z, g = pc.vae_inputs()
        post_pt, post_ms = pt.encode(to_torch(x)), msm.encode(ms.Tensor(x))
        report.add(f"VAE{variant}", "encode mean", post_ms.mean, post_pt.mean)
        report.add(f"VAE{variant}", "posterior sample", post_ms.sample(ms.Tensor(noise)),
                   post_pt.sample(to_torch(noise)))
        report.add(f"VAE{variant}", "decode", msm.decode(ms.Tensor(z)), pt.decode(to_torch(z)))
        xt = to_torch(x, requires_grad=True)
        (pt.encode(xt).sample(to_torch(noise)) * 0.18215 * to_torch(g)).sum().backward()
        grad_ms = ms.grad(pc.sds_latents_loss(msm, ms.Tensor(noise), ms.Tensor(g)))(ms.Tensor(x))
        report.add(f"VAE{variant}", "encoder input gradient", grad_ms, xt.grad)


def check_text_encoder(report, tmp):
    import mindspore as ms

    from convert.keymaps import TEXT_ENCODER
    from tests import parity_cases as pc
    for layer in ("penultimate", "last"):
        mp = pc.text_with_layer(pc.load_model_params(), layer)
        pt = pc.text_torch_model(mp)
        msm = pc.text_ms_from_original(mp, pc.numpy_state(pt, TEXT_ENCODER.prefix))
        ids = pc.text_tokens()
        report.add("OpenCLIP text tower", f"output ({layer})", msm(ms.Tensor(ids)), pc.text_run_torch(pt, ids))


def check_samplers(report, tmp):
    from tests import parity_cases as pc
    from tests.parity import torch_module
    from tests.tiny_mvdream_models import tiny_unet_pair
    x_T, c, uc, cam = pc.sampler_inputs(8)
    for sampler, eta, karras, steps in (("ddim", 0.0, False, 50), ("ddim", 1.0, False, 50), ("dpmpp2m", 0.0, True, 20)):
        out_ms, out_t = pc.run_samplers(pc.stand_in_ms, pc.stand_in_torch, x_T, c, uc, cam, sampler, steps, eta,
                                        karras, 7.5)
        name = f"{'DDIM' if sampler == 'ddim' else 'DPM++ 2M'} {steps} steps" + (f", eta {eta}" if eta else "") \
            + (", Karras" if karras else "")
        report.add("samplers, stand-in model, CFG 7.5", name, out_ms, out_t)
    ms_unet, t_unet, ctx_dim = tiny_unet_pair(seed=0)
    torch_module(t_unet)
    x_T, c, uc, cam = pc.sampler_inputs(ctx_dim)
    for sampler, eta, karras in (("ddim", 0.5, False), ("dpmpp2m", 0.0, True)):
        out_ms, out_t = pc.run_samplers(pc.ms_unet_fn(ms_unet), pc.torch_unet_fn(t_unet), x_T, c, uc, cam, sampler, 4,
                                        eta, karras, 3.0)
        name = f"{'DDIM' if sampler == 'ddim' else 'DPM++ 2M'} 4 steps"
        report.add("samplers, tiny UNet, CFG 3", name, out_ms, out_t)


def check_hashgrid(report, tmp):
    import mindspore as ms
    import torch

    from tests import parity_cases as pc
    from tests.parity import to_torch
    cfg = pc.HASHGRID_SMALL
    params = pc.hashgrid_params(pc.hashgrid_rows(cfg) * cfg["n_features_per_level"])
    x = pc.hashgrid_points(300)
    ref, _, _ = pc.np_encode(x, params, cfg)
    mgrid, tgrid = pc.ms_hashgrid(cfg, params), pc.torch_hashgrid(cfg, params)
    out_ms, out_t = mgrid(ms.Tensor(x)), tgrid(to_torch(x))
    report.add("hash grid (8 levels, dense + hashed)", "MindSpore vs numpy tcnn grid.h", out_ms, ref, rel=1e-5)
    report.add("hash grid (8 levels, dense + hashed)", "torch_ref vs numpy tcnn grid.h", out_t, ref, rel=1e-5)
    report.add("hash grid (8 levels, dense + hashed)", "output (MindSpore vs torch_ref)", out_ms, out_t, rel=1e-5)
    dout = np.random.RandomState(1).randn(len(x), cfg["n_levels"] * cfg["n_features_per_level"]).astype(np.float32)
    g_ms = ms.grad(lambda p: (mgrid(p) * ms.Tensor(dout)).sum(), None, mgrid.trainable_params())(ms.Tensor(x))[0]
    (g_t,) = torch.autograd.grad((tgrid(to_torch(x)) * to_torch(dout)).sum(), [tgrid.params])
    report.add("hash grid (8 levels, dense + hashed)", "d/d table", g_ms, g_t, rel=1e-5)


def check_geometry(report, tmp):
    from tests import parity_cases as pc
    for case in ("analytic-softplus-magic3d", "fd-softplus-magic3d"):
        cfg = dict(pc.GEOMETRY_CASES[case], pos_encoding_config=pc.GEOMETRY_SMALL_GRID)
        tgeo, mgeo = pc.geometry_pair(cfg)
        x, w = pc.geometry_inputs()
        (td, tf, tn), tgrads, tgx = pc.geometry_torch_run(tgeo, x, w)
        (md, mf, mn), mgrads, mgx = pc.geometry_ms_run(mgeo, x, w)
        module = f"implicit-volume geometry ({case})"
        report.add(module, "density", md, td)
        report.add(module, "features", mf, tf)
        report.add(module, "normal", mn, tn)
        report.add_worst(module, "d loss / d params", [(n, mgrads[n], tgrads[n]) for n in sorted(tgrads)])
        report.add(module, "d loss / d points", mgx, tgx)


def check_renderer(report, tmp):
    """The two configurations of tests/test_renderer_parity.py (same seeds, rays and jitter)."""
    from tests import parity_cases as pc
    cases = (  # name, renderer config, renderer_pair arguments, (b, h, w), ray seed, jitter seed, background colour
        ("uniform samples, grid pruning", {"num_samples_per_ray": 24, "num_importance_samples": 0,
                                           "occ_update_interval": 1}, dict(seed=0), (2, 3, 4), 1, 3, None),
        ("importance samples, normals, diffuse shading", {"num_samples_per_ray": 12, "num_importance_samples": 12,
                                                          "return_comp_normal": True},
         dict(normal_type="analytic", material="diffuse", seed=1), (2, 3, 3), 2, 4,
         np.array([0.2, 0.5, 0.9], np.float32)))
    for name, cfg, kw, (b, h, w), ray_seed, jitter_seed, bg_aug in cases:
        pt_r, ms_r = pc.renderer_pair(cfg, **kw)
        for step in (0, 1) if cfg.get("occ_update_interval") == 1 else ():  # EMA updates: empty cells are pruned
            pt_r.update_step(step, np.random.default_rng(100 + step))
            ms_r.update_step(step, np.random.default_rng(100 + step))
        o, d, light = pc.make_rays(b, h, w, seed=ray_seed)
        jitter = np.random.default_rng(jitter_seed).random((b, h, w, pt_r.jitter_samples), dtype=np.float32)
        pt_out, ms_out, grads = pc.render_both(pt_r, ms_r, (o, d, light, jitter), bg_aug=bg_aug)
        keys = [k for k in pc.IMAGE_KEYS + pc.SAMPLE_KEYS if k in pt_out]
        report.add_worst(f"NeRF renderer, {name}", "outputs", [(k, ms_out[k], pt_out[k]) for k in keys])
        report.add_worst(f"NeRF renderer, {name}", "d loss / d params",
                         [(n, g_ms, np.zeros(g_ms.shape, np.float32) if g_pt is None else g_pt)
                          for n, g_pt, g_ms in grads])


def check_background_material(report, tmp):
    import mindspore as ms

    from mindspore_impl.lift3d.materials import DiffuseWithPointLightMaterial as MsDiffuse
    from tests import parity_cases as pc
    from tests.parity import to_torch, torch_module
    from torch_ref.lift3d.materials import DiffuseWithPointLightMaterial as PtDiffuse
    pt, ms_bg = pc.env_map_pair(pc.MVDREAM_BG, seed=1)
    dirs = pc.unit_dirs(np.random.default_rng(1), (2, 5, 6, 3))
    out_pt, cot, (g_dirs_pt,), g_w_pt = pc.torch_grads(pt, [dirs], pt.parameters())
    out_ms, (g_dirs_ms,), g_w_ms = pc.ms_grads(ms_bg, [dirs], ms_bg.trainable_params(), cot)
    report.add("environment-map background", "output", out_ms, out_pt, rel=1e-5)
    report.add("environment-map background", "d/d dirs", g_dirs_ms, g_dirs_pt)
    report.add_worst("environment-map background", "d/d weights",
                     [(p.name, gm, gp) for p, gm, gp in zip(ms_bg.trainable_params(), g_w_ms, g_w_pt)])
    pt_mat, ms_mat = PtDiffuse(pc.MVDREAM_SHADING), MsDiffuse(pc.MVDREAM_SHADING)
    pc.copy_weights(pt_mat, ms_mat)
    torch_module(pt_mat)
    f, v, p, l, n = pc.material_inputs(f=4, seed=5)
    dif = np.full(3, 0.3, np.float32)
    amb = 1 - dif
    out_pt, cot, g_pt, _ = pc.torch_grads(
        lambda *a: pt_mat(a[0], v, *a[1:], shading="diffuse", ambient_color=to_torch(amb), diffuse_color=to_torch(dif)),
        [f, p, l, n], [])
    out_ms, g_ms, _ = pc.ms_grads(
        lambda *a: ms_mat(a[0], ms.Tensor(v), *a[1:], shading="diffuse", ambient_color=ms.Tensor(amb),
                          diffuse_color=ms.Tensor(dif)), [f, p, l, n], [], cot)
    report.add("diffuse point-light material, soft shading", "output", out_ms, out_pt, rel=1e-5)
    report.add_worst("diffuse point-light material, soft shading", "d/d inputs",
                     [(name, a, b) for name, a, b in zip(("features", "positions", "light", "normal"), g_ms, g_pt)],
                     rel=1e-5)


def check_guidance(report, tmp):
    from tests import parity_cases as pc
    models = pc.guidance_models()
    tgd, mgd = pc.guidance_pair(models, pc.guidance_cfg(guidance_mode="x0", recon_std_rescale=0.5))
    tgd.update_step(4000)
    inputs = pc.guidance_inputs(mgd, 1)
    t_loss, t_grad, t_norm = pc.guidance_torch_step(tgd, inputs)
    m_loss, m_grad, m_norm = pc.guidance_ms_step(mgd, inputs)
    module = "SDS guidance, x0 + std rescale, CFG 50"
    report.add(module, "loss", m_loss, t_loss)
    report.add(module, "grad norm", m_norm, t_norm)
    report.add_relative(module, "d loss / d rgb", m_grad, t_grad)


def check_mvdiffusion_loss(report, tmp):
    from tests import parity_cases as pc
    for config in ("pixel", "vae"):
        case = pc.mvdiffusion_loss_case(config)
        module = f"multiview diffusion training loss ({'pixel space' if config == 'pixel' else 'tiny VAE'})"
        report.add(module, "loss", *case["loss"])
        report.add_worst(module, "d loss / d weights", [(n, a, r) for n, (a, r) in case["grads"].items()])


def check_sds_step(report, tmp):
    from tests import parity_cases as pc
    tiny = pc.make_tiny(tmp)
    run = pc.sds_step_pair(tiny, pc.tiny_config(tiny, shading=False))
    module = "one SDS training step (render, guidance, AdamW)"
    report.add(module, "loss", np.float32(run.metrics["loss"]), np.float32(run.t_loss))
    pairs = []
    for name in sorted(run.t_moments):
        scale = float(np.abs(run.t_moments[name]).max())
        if scale > 0:
            pairs.append((name, run.ms_moments[name] / scale, run.t_moments[name] / scale))
    report.add_worst(module, "Adam exp_avg (0.1 x grad), relative to its max", pairs)
    report.add_worst(module, "updated params", [(n, run.ms_params[n], run.t_params[n]) for n in sorted(run.t_params)])


def check_converter(report, tmp):
    from tests import parity_cases as pc
    original, restored = pc.converter_round_trip(tmp)
    if set(original) != set(restored):
        diff = sorted(set(original) ^ set(restored))
        raise AssertionError(f"round trip changed the key set ({len(diff)} keys, e.g. {diff[:3]})")
    err = max(float(np.abs(original[k].astype(np.float64) - restored[k].astype(np.float64)).max()) for k in original)
    scale = max(1.0, max(float(np.abs(v.astype(np.float64)).max()) for v in original.values()))
    kept = all(original[k].dtype == restored[k].dtype for k in original)
    # host-side key renaming: bit-exact on every device, so the tolerance is 0 and not from the table
    report.rows.append(Row("converter round trip pt -> ms -> pt",
                           f"{len(original)} tensors (UNet, VAE, text tower), dtypes {'kept' if kept else 'CHANGED'}",
                           err, err / scale, 0.0, err == 0.0 and kept))


CHECKS = {
    "unet": check_unet,
    "vae": check_vae,
    "text_encoder": check_text_encoder,
    "samplers": check_samplers,
    "hashgrid": check_hashgrid,
    "geometry": check_geometry,
    "renderer": check_renderer,
    "background_material": check_background_material,
    "guidance": check_guidance,
    "mvdiffusion_loss": check_mvdiffusion_loss,
    "sds_step": check_sds_step,
    "converter": check_converter,
}


# ---------------------------------------------------------------------------------------------- versions, devices


def cann_version():
    """The CANN toolkit version from its install info, or None (no Ascend toolkit here)."""
    homes = [os.environ.get(k) for k in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")]
    homes += ["/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/latest"]
    for home in filter(None, homes):
        for info in sorted(glob.glob(os.path.join(home, "*", "ascend_toolkit_install.info"))
                           + glob.glob(os.path.join(home, "version.cfg"))):
            try:
                text = open(info, encoding="utf-8", errors="replace").read()
            except OSError:
                continue
            match = re.search(r"^\s*(?:version|toolkit_running_version)\s*=\s*\[?([\w.\-]+)", text, re.M)
            if match:
                return match.group(1)
    return None


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    import mindspore as ms
    import torch
    ms_dev, t_dev = parity.ms_device(), parity.torch_device()
    ms_name = cpu_name()
    if ms_dev != "CPU":
        try:
            ms_name = str(ms.hal.get_device_name(0, ms_dev))
        except Exception as exc:  # the name is decoration; the report runs without it
            ms_name = f"{ms_dev} (name unavailable: {type(exc).__name__})"
    t_name = torch.cuda.get_device_name(t_dev) if t_dev.type == "cuda" else cpu_name()
    return {"versions": {"python": platform.python_version(), "mindspore": ms.__version__, "cann": cann_version(),
                         "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__},
            "devices": {"mindspore": {"device": ms_dev, "name": ms_name},
                        "torch": {"device": str(t_dev), "name": t_name}}}


# ---------------------------------------------------------------------------------------------- output


def fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def markdown(env: dict, rows: list[Row], command: str, seconds: float) -> str:
    v, d = env["versions"], env["devices"]
    failed = sum(not r.passed for r in rows)
    lines = [f"MindSpore {v['mindspore']} on {d['mindspore']['device']} ({d['mindspore']['name']}), "
             f"CANN {v['cann'] or 'none'}; torch {v['torch']} on {d['torch']['device']} ({d['torch']['name']}), "
             f"CUDA {v['cuda'] or 'none'}; Python {v['python']}.",
             f"`{command}`: {len(rows)} rows, " + ("all pass" if not failed else f"{failed} FAIL")
             + f", {seconds:.0f} s.",
             "",
             "| module | check | max abs error | relative error | tolerance | pass |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        module, check = (c.replace("|", "\\|") for c in (r.module, r.check))  # a pipe would split the cell
        lines.append(f"| {module} | {check} | {fmt(r.max_abs_error)} | {fmt(r.relative_error)} | "
                     f"{fmt(r.tolerance)} | {'yes' if r.passed else '**NO**'} |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms-device", default="CPU", help="CPU | Ascend | GPU (default CPU)")
    ap.add_argument("--torch-device", default="cpu", help="cpu | cuda (default cpu)")
    ap.add_argument("--only", action="append", default=[], metavar="NAMES",
                    help="comma-separated checks to run (default all; see --list)")
    ap.add_argument("--list", action="store_true", help="print the check names and exit")
    ap.add_argument("--md", help="also write the Markdown table to this file")
    ap.add_argument("--json", help="write the rows, versions and devices as JSON to this file")
    ap.add_argument("--tolerance-scale", type=float, default=1.0,
                    help="multiply every tolerance (0 forces a failure: a check of the exit code)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(CHECKS))
        return 0
    names = [n.strip() for part in args.only for n in part.split(",") if n.strip()] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UserError(f"--only: unknown check(s) {', '.join(unknown)}; the checks are {', '.join(CHECKS)}")
    if args.tolerance_scale < 0:
        raise UserError(f"--tolerance-scale must be >= 0, got {args.tolerance_scale}")
    parity.configure_devices(args.ms_device, args.torch_device)
    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE)
    env = environment()
    report = Report(args.tolerance_scale)
    start = time.time()
    crashed = []
    for name in names:
        t0, n0 = time.time(), len(report.rows)
        log = io.StringIO()
        with tempfile.TemporaryDirectory(prefix=f"parity-{name}-") as tmp:
            try:
                with contextlib.redirect_stdout(log):  # stdout carries the table only
                    CHECKS[name](report, tmp)
            except Exception as exc:  # a crash is a failed row, and the other checks still run
                crashed.append(name)
                print(log.getvalue() + traceback.format_exc(), file=sys.stderr)
                report.rows.append(Row(name, f"crashed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                                       if str(exc) else f"crashed: {type(exc).__name__}", float("nan"), float("nan"),
                                       float("nan"), False))
        print(f"[parity_report] {name}: {len(report.rows) - n0} rows, {time.time() - t0:.1f} s", file=sys.stderr)
    seconds = time.time() - start
    command = "python scripts/parity_report.py" + "".join(
        f" {flag} {value}" for flag, value, default in
        (("--ms-device", parity.ms_device(), "CPU"), ("--torch-device", str(parity.torch_device()), "cpu"),
         ("--only", ",".join(names) if names != list(CHECKS) else "", ""),
         ("--tolerance-scale", f"{args.tolerance_scale:g}", "1")) if value != default)
    text = markdown(env, report.rows, command, seconds)
    print(text, end="")
    if args.md:
        with open(args.md, "w", encoding="utf-8") as f:
            f.write(text)
    passed = all(r.passed for r in report.rows)
    if args.json:
        doc = dict(env, command=command, checks=names, seconds=round(seconds, 1), tolerance_scale=args.tolerance_scale,
                   passed=passed, crashed=crashed,
                   rows=[{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(r).items()}
                         for r in report.rows])
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    return 0 if passed else 1


if __name__ == "__main__":
    run_cli(main)
