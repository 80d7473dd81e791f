"""Benchmark ONE full MVDream SDS training step at the real config's sizes: MindSpore (GRAPH mode) vs torch_ref.

The step is the text-to-3D step of configs/mvdream-sd21.yaml:
    render (implicit-volume: HashGrid 16 levels x 2^19, VanillaMLP 64x1; no-material; neural environment map
    background; nerf-volume-renderer with the YAML's renderer settings) -> composite the background colour
    -> bilinear resize to 256 -> VAE encode WITH gradient -> UNet with classifier-free guidance (batch doubled)
    -> x0-reconstruction SDS loss -> backward -> AdamW update of the 3D field and the background.
MindSpore runs it through MVDreamSystem.run_step (the system's own step, compiled as one graph with
ms.set_context(mode=GRAPH_MODE), or as deferred backpropagation over ray chunks when system.render_chunk_rays > 0,
as the config sets); torch_ref through its twin, torch_ref/lift3d/systems/mvdream_system.py (training_step, or
deferred_training_step with the same chunks and compaction buckets). The frozen UNet (~865M parameters) and VAE have random weights in configs/sd-v2-base.yaml's
shapes, built in memory (no checkpoint file, no text tower: the text embeddings are random (2B, 77, 1024)).
Every weight is a function of its name and a seed (numpy), so both frameworks hold the same numbers and
report the same loss for the same inputs (rays, jitter, background colour, timestep and noises, all numpy).

Each framework runs in its own child process (its peak RSS, ru_maxrss, is its own), under a watchdog that
kills it above --max-rss-gb (summed RSS of its process tree, polled from /proc) or after --timeout seconds;
the child prints its measurements as it goes, so a killed or failed child still reports what it measured.

Measured, per framework (warm-up = first call, which includes GRAPH compilation, then the median of --repeat):
  step        the full training step (forward + backward + AdamW), after one warm-up step (reported as
              `first_step_s`: MindSpore's graph compile + first run)
  render      render forward + background composite alone (forward only, no gradient tape)
  vae         VAE encode of the rendered batch alone (resize 256, forward only)
  unet        the CFG UNet call alone (2B samples, forward only)
  optimizer   the AdamW update alone (zero gradients)
  backward    derived: step - (render + vae + unet + optimizer), i.e. the backward pass plus the small
              SDS/composite math
  steps       one row per step: its time, evaluated fraction, whether a chunk overflowed its compaction bucket
              (every chunk rendered twice), and with deferred backpropagation its sections (render: the chunks
              without a graph; image: VAE, UNet and the VAE's vector-Jacobian product; backward: the chunks with
              a graph, gradients accumulated; update: the optimizer)
The phases are measured (warm-up + --phase-repeat calls each) BEFORE the full step, so a full step that does
not fit still leaves the forward timings. `evaluated_fraction` is the renderer's output key of that name when
it has one (fraction of samples the renderer evaluated), else 1.0 (today's dense renderer). `loss` is the loss
of the warm-up step (the initial parameters).

Examples:
  python scripts/bench_sds_step.py --tiny --repeat 1                       # seconds; what the test runs
  python scripts/bench_sds_step.py --stage 1 --frameworks torch --timeout 900   # 64x64 x 8 views, batch 8
  python scripts/bench_sds_step.py --stage 2 --timeout 900                 # 256x256 x 4 views, batch 4
  python scripts/bench_sds_step.py --res 32 --views 4 --json bench.json
  python scripts/bench_sds_step.py --res 64 --views 4 --samples 32 --importance 0
  python scripts/bench_sds_step.py --res 32 --views 4 --set renderer.grid_prune=false \\
      --set geometry.pos_encoding_config.n_levels=8 --set system.use_recompute=true
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SYSTEM_CONFIG = os.path.join(ROOT, "configs", "mvdream-sd21.yaml")
FULL_MODEL = os.path.join(ROOT, "configs", "sd-v2-base.yaml")
TINY_MODEL = os.path.join(ROOT, "configs", "tiny-mvdream.yaml")
STAGES = {1: (64, 8), 2: (256, 4)}  # stage -> (resolution, views = batch size), mvdream-sd21.yaml
PHASES = ("render", "vae", "unet", "optimizer")
PHASE_NOTES = {
    "render": "render forward + background composite alone (no gradient tape)",
    "vae": "VAE encode alone (resize to image_size, forward only)",
    "unet": "CFG UNet call alone (2B samples, forward only)",
    "backward": "derived: step - (render + vae + unet + optimizer)",
    "optimizer": "AdamW update alone (zero gradients)",
}
GB = 2 ** 30


# ============================================================================ config (shared by parent and children)


def config_overrides(args) -> list[str]:
    """key=value overrides of configs/mvdream-sd21.yaml for the chosen size, then the user's --set flags."""
    res, views = resolution_and_views(args)
    n_view = 4 if views % 4 == 0 else views
    out = [f"data.width={res}", f"data.height={res}", f"data.batch_size={views}", "data.resolution_milestones=[]",
           f"data.n_view={n_view}", f"system.guidance.n_view={n_view}",
           "system.prompt_processor.prompt=benchmark"]
    if args.tiny:
        out += [f"system.guidance.config_path={TINY_MODEL}", "system.guidance.image_size=32",
                "system.geometry.pos_encoding_config.n_levels=4",
                "system.renderer.num_samples_per_ray=16", "system.renderer.num_importance_samples=16"]
    else:
        out += [f"system.guidance.config_path={FULL_MODEL}"]
    if args.samples is not None:
        out.append(f"system.renderer.num_samples_per_ray={args.samples}")
    if args.importance is not None:
        out.append(f"system.renderer.num_importance_samples={args.importance}")
    for item in args.set:
        key = item.split("=", 1)[0]
        out.append(item if key.startswith(("system.", "data.")) else "system." + item)
    return out


def resolution_and_views(args) -> tuple[int, int]:
    if args.tiny:
        res, views = 16, 4
    elif args.stage is not None:
        res, views = STAGES[args.stage]
    else:
        res, views = 64, 8
    return (args.res or res), (args.views or views)


def stage_label(args):
    if args.tiny:
        return "tiny"
    if args.stage is not None and args.res is None and args.views is None:
        return args.stage
    return "custom"


def load_configs(args) -> tuple[dict, dict]:
    """(data config, system config) as plain dicts, through the project's config loader (launch.load_config)."""
    import launch
    from omegaconf import OmegaConf
    cfg = launch.load_config(args.config, config_overrides(args))
    return (OmegaConf.to_container(cfg.data, resolve=True), OmegaConf.to_container(cfg.system, resolve=True))


# ============================================================================ weights and inputs (numpy, by name)


def named_value(name: str, shape: tuple, seed: int) -> np.ndarray:
    """Deterministic random value of a diffusion-model tensor from its (MindSpore) name: norms ~1, biases small,
    weights N(0, 1/fan_in). The same in both frameworks (torch names go through convert.keymaps.ms_name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name.endswith(".gamma"):
        value = 1.0 + 0.1 * rng.standard_normal(shape, np.float32)
    elif len(shape) >= 2:
        value = rng.standard_normal(shape, np.float32) / np.float32(math.sqrt(int(np.prod(shape[1:]))))
    else:
        value = 0.02 * rng.standard_normal(shape, np.float32)
    return value.astype(np.float32)


def field_value(name: str, shape: tuple, seed: int) -> np.ndarray:
    """A textured 3D field and background (the init renders a uniform grey, where the VAE's GroupNorm is
    ill-conditioned): hash tables U(-1, 1), dense weights He-normal x 3, the rest small."""
    rng = np.random.default_rng([seed, 1, zlib.crc32(name.encode())])
    if name.endswith("encoding.params"):
        value = rng.uniform(-1.0, 1.0, shape)
    elif len(shape) == 2:
        value = rng.standard_normal(shape) * 3.0 * np.sqrt(2.0 / shape[1])
    else:
        value = 0.02 * rng.standard_normal(shape)
    return value.astype(np.float32)


def model_params(system_cfg: dict) -> dict:
    from neutral.mvdream.model_config import load_model_config
    return load_model_config(system_cfg["guidance"]["config_path"])


def latent_shape(params: dict, image_size: int) -> tuple[int, int, int]:
    dd = params["first_stage_config"]["params"]["ddconfig"]
    f = 2 ** (len(dd["ch_mult"]) - 1)
    return int(params["first_stage_config"]["params"]["embed_dim"]), image_size // f, image_size // f


def draw_inputs(args, data_cfg: dict, system_cfg: dict, jitter_samples: int) -> dict:
    """Every input of one step as numpy arrays (the keys of MVDreamSystem.STEP_INPUTS + shading)."""
    from neutral.schedule import C
    from neutral.lift3d.multiview_cameras import RandomMultiviewCameraDataModule
    from neutral.lift3d.multiview_diffusion_guidance import Config, GuidanceSchedule, sample_inputs
    from neutral.config import parse_structured
    batch = RandomMultiviewCameraDataModule(data_cfg, seed=args.seed).sample(args.global_step)
    b, h, w, _ = batch["rays_o"].shape
    rng = np.random.default_rng(args.seed + 1)
    params = model_params(system_cfg)
    g_cfg = parse_structured(Config, system_cfg["guidance"], "guidance")
    schedule = GuidanceSchedule(g_cfg, int(params.get("timesteps", 1000)))
    schedule.update(args.global_step)
    context = int(params["unet_config"]["params"]["context_dim"])
    loss = system_cfg.get("loss", {})
    inputs = {"shading": "diffuse", "rays_o": batch["rays_o"], "rays_d": batch["rays_d"],
              "light_positions": batch["light_positions"], "c2w": batch["c2w"],
              "jitter": rng.random((b, h, w, jitter_samples), dtype=np.float32),
              "bg_color": np.broadcast_to(rng.random(3, dtype=np.float32), (b, 3)).copy(),
              "bg_mask": np.ones((), np.float32),
              "ambient_color": np.ones(3, np.float32), "diffuse_color": np.zeros(3, np.float32),
              "text_embeddings": rng.standard_normal((2 * b, 77, context), np.float32),
              "loss_weights": np.array([float(C(loss.get(f"lambda_{t}", 0.0), args.global_step))
                                        for t in ("sds", "orient", "sparsity", "opaque", "z_variance")], np.float32)}
    inputs.update(sample_inputs(schedule, rng, b, latent_shape(params, g_cfg.image_size)))
    return inputs


# ============================================================================ the child process: measurements


def proc_kb_field_gb(path: str, key: str, missing: float) -> float:
    """A `Key:  N kB` line of a /proc file, in GiB (`missing` when absent)."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2 ** 20
    return missing


def current_rss_gb() -> float:
    return proc_kb_field_gb("/proc/self/status", "VmRSS", float("nan"))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


class Recorder:
    """The child's record; every update is printed as a `RESULT {json}` line (the parent keeps the last)."""

    def __init__(self, **fields):
        self.rec = dict(fields)

    def update(self, **fields):
        self.rec.update(fields)
        self.rec["peak_rss_gb"] = peak_rss_gb()
        print("RESULT " + json.dumps(self.rec), flush=True)


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """(first call seconds, median of `repeat` further calls, last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times)) if times else first, out


def fraction_of(out: dict, to_float) -> tuple[float, str]:
    if isinstance(out, dict) and "evaluated_fraction" in out:
        return float(to_float(out["evaluated_fraction"])), "renderer output"
    return 1.0, "dense renderer (no evaluated_fraction key)"


def run_measurements(rec: Recorder, args, phases: dict, step, optimizer_step):
    """phases: name -> zero-arg callable (render first: returns (rgb, out dict, fraction)); step: () -> loss."""
    for name, fn in phases.items():
        rec.update(in_progress=name)
        first, med, out = timed(fn, args.phase_repeat)
        rec.update(**{f"{name}_s": med, f"{name}_first_s": first})
        if name == "render":
            frac, source = out
            rec.update(evaluated_fraction=frac, evaluated_fraction_source=source)
    rec.update(in_progress="step")
    first, med, loss = timed(step, args.repeat)
    rec.update(first_step_s=first, s_per_step=med, loss=float(loss))
    rec.update(in_progress="optimizer")
    first, med, _ = timed(optimizer_step, args.phase_repeat)
    rec.update(optimizer_s=med, optimizer_first_s=first)
    if all(rec.rec.get(f"{p}_s") is not None for p in PHASES):
        rec.update(backward_s=med_backward(rec.rec))
    rec.update(completed=True, in_progress=None)


def record_step(rec: Recorder, seconds: float, metrics: dict, sections: dict) -> None:
    """Append one step's time, evaluated fraction and section times (deferred step: render, image, backward,
    update) to rec["steps"]; the first step's evaluated fraction is the record's."""
    row = {"s": seconds, "evaluated_fraction": metrics.get("evaluated_fraction"),
           "rerendered": metrics.get("rerendered"), "sections": dict(sections)}
    if "evaluated_fraction" in metrics and rec.rec.get("evaluated_fraction") is None:
        rec.rec.update(evaluated_fraction=float(metrics["evaluated_fraction"]),
                       evaluated_fraction_source="step metrics")
    rec.update(steps=rec.rec.get("steps", []) + [row])


def med_backward(r: dict) -> float:
    return r["s_per_step"] - sum(r[f"{p}_s"] for p in PHASES)


# ---------------------------------------------------------------------------- MindSpore


def ms_worker(args, rec: Recorder, data_cfg: dict, system_cfg: dict):
    import mindspore as ms
    from mindspore import ops

    from mindspore_impl.lift3d.guidance.multiview_diffusion_guidance import camera_condition
    from mindspore_impl.lift3d.losses import composite_background
    from mindspore_impl.lift3d.systems.mvdream_system import MVDreamSystem
    from mindspore_impl.core.device import dispatch_for
    dispatch_for("CPU")  # before the first operator
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)

    class BenchSystem(MVDreamSystem):
        """MVDreamSystem whose frozen diffusion model has random weights built in memory (no checkpoint,
        no text tower or tokenizer: the benchmark feeds random text embeddings)."""

        @staticmethod
        def _check_checkpoint(guidance_cls, g_cfg):
            return None

        @staticmethod
        def _text_embeddings(cls, pp_cfg):
            return None, None

        def _build_guidance(self, cls, g_cfg):
            from mindspore_impl.mvdream import first_stage, unet
            from mindspore_impl.mvdream.schedule import NoiseSchedule
            from neutral.mvdream.checkpoint_layout import PREFIXES
            from neutral.mvdream.model_config import load_model_config
            params = load_model_config(g_cfg.config_path)
            u_params = dict(params["unet_config"]["params"])
            if g_cfg.half_precision_weights:
                u_params["use_fp16"] = True
            models = {"unet": unet.build_from_config(u_params),
                      "vae": first_stage.build_first_stage(dict(params["first_stage_config"]))}
            for prefix, cell in ((PREFIXES["unet"], models["unet"]), (PREFIXES["vae"], models["vae"])):
                for p in cell.get_parameters():
                    p.set_data(ms.Tensor(named_value(prefix + p.name, tuple(p.shape), args.seed), dtype=p.dtype))
                cell.set_train(False)
            return cls(g_cfg, models["unet"], models["vae"], NoiseSchedule.from_config(params),
                       float(params.get("scale_factor", 0.18215)))

    t0 = time.perf_counter()
    system = BenchSystem(system_cfg, seed=args.seed)
    for p in system.geometry.trainable_params() + system.background.trainable_params():
        p.set_data(ms.Tensor(field_value(p.name, tuple(p.shape), args.seed)))
    for module in (system.geometry, system.material, system.background, system.guidance, system.renderer):
        if hasattr(module, "update_step"):
            module.update_step(args.global_step, np.random.default_rng(args.seed))
    system.configure_optimizers()
    inputs = draw_inputs(args, data_cfg, system_cfg, system.renderer.jitter_samples)
    x = {k: ms.Tensor(v) for k, v in inputs.items() if k != "shading"}
    shading = inputs["shading"]
    rec.update(build_s=time.perf_counter() - t0, rss_after_build_gb=current_rss_gb(),
               unet_params_m=sum(p.size for p in system.guidance.unet.get_parameters()) / 1e6,
               vae_params_m=sum(p.size for p in system.guidance.vae.get_parameters()) / 1e6)
    renderer, guidance = system.renderer, system.guidance

    @ms.jit
    def render_fn(rays_o, rays_d, light, jitter, bg_color, bg_mask, ambient, diffuse):
        out = renderer(rays_o, rays_d, light, jitter, None, shading, ambient, diffuse)
        return composite_background(out, bg_color, bg_mask), out

    @ms.jit
    def vae_fn(rgb, vae_noise):
        return guidance.encode_images(rgb, vae_noise)

    @ms.jit
    def unet_fn(latents, t, text, c2w):
        timesteps = ops.tile(t.astype(ms.int32), (latents.shape[0],))
        e, _ = guidance.predict_noise(latents, timesteps, text, camera_condition(c2w))
        return e

    opt = system.optimizer
    zero_grads = tuple(ops.zeros(p.shape, p.dtype) for p in opt.parameters)

    @ms.jit
    def opt_fn(grads):
        return opt(grads)

    state = {}

    def render():
        rgb, out = render_fn(x["rays_o"], x["rays_d"], x["light_positions"], x["jitter"], x["bg_color"],
                             x["bg_mask"], x["ambient_color"], x["diffuse_color"])
        state["rgb"] = ms.Tensor(rgb.asnumpy())
        return fraction_of(out, lambda v: v.asnumpy().mean())

    def vae():
        state["latents"] = ms.Tensor(vae_fn(state["rgb"], x["vae_noise"]).asnumpy())

    def unet():
        return unet_fn(state["latents"], x["t"], x["text_embeddings"], x["c2w"]).asnumpy()

    def step():
        t0 = time.perf_counter()
        metrics = system.run_step(inputs)
        sections = system.step_seconds if system.cfg.render_chunk_rays else {}
        record_step(rec, time.perf_counter() - t0, metrics, sections)
        return metrics["loss"]

    def optimizer_step():
        return opt_fn(zero_grads).asnumpy()

    phases = {"render": render, "vae": vae, "unet": unet} if args.phases else {}
    run_measurements(rec, args, phases, step, optimizer_step)


# ---------------------------------------------------------------------------- torch_ref


def torch_worker(args, rec: Recorder, data_cfg: dict, system_cfg: dict):
    from types import SimpleNamespace

    import torch

    from convert.keymaps import UNET, VAE, ms_name
    from neutral.config import parse_structured
    from neutral.lift3d.multiview_diffusion_guidance import Config
    from torch_ref.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground
    from torch_ref.lift3d.geometry.implicit_volume import ImplicitVolume
    from torch_ref.lift3d.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance
    from torch_ref.lift3d.materials.no_material import NoMaterial
    from torch_ref.lift3d.renderers import NeRFVolumeRenderer
    from torch_ref.lift3d.systems import mvdream_system as twin
    from torch_ref.mvdream import first_stage, schedule, unet
    from torch_ref.mvdream.cameras import normalize_camera
    torch.manual_seed(args.seed)
    types = {k: system_cfg.get(f"{k}_type") for k in ("geometry", "material", "background", "renderer")}
    expected = {"geometry": "implicit-volume", "material": "no-material",
                "background": "neural-environment-map-background", "renderer": "nerf-volume-renderer"}
    if types != expected:
        raise SystemExit(f"torch_ref side supports {expected} only, got {types}")

    t0 = time.perf_counter()
    geo = ImplicitVolume(system_cfg["geometry"])
    mat = NoMaterial(system_cfg["material"])
    bg = NeuralEnvironmentMapBackground(system_cfg["background"])
    renderer = NeRFVolumeRenderer(system_cfg["renderer"], geo, mat, bg)
    modules = SimpleNamespace(geometry=geo, material=mat, background=bg, renderer=renderer)
    with torch.no_grad():
        for mod_name, mod in (("geometry", geo), ("background", bg)):
            for path, p in mod.named_parameters():
                p.copy_(torch.from_numpy(field_value(f"{mod_name}.{path}", tuple(p.shape), args.seed)))

    params = model_params(system_cfg)
    g_cfg = parse_structured(Config, system_cfg["guidance"], "guidance")
    u = unet.build_from_config(dict(params["unet_config"]["params"])).eval()
    v = first_stage.build_first_stage(dict(params["first_stage_config"])).eval()
    with torch.no_grad():
        for sub, module in ((UNET, u), (VAE, v)):
            for name, p in module.state_dict(keep_vars=True).items():
                p.copy_(torch.from_numpy(named_value(sub.prefix + ms_name(sub, name), tuple(p.shape), args.seed)))
    guidance = MultiviewDiffusionGuidance(g_cfg, u, v, schedule.NoiseSchedule.from_config(params),
                                          float(params.get("scale_factor", 0.18215)))
    for module in (geo, mat, bg, guidance, renderer):
        if hasattr(module, "update_step"):
            module.update_step(args.global_step, np.random.default_rng(args.seed))
    optimizer = twin.build_optimizer(modules, system_cfg["optimizer"])
    inputs = draw_inputs(args, data_cfg, system_cfg, renderer.jitter_samples)
    x = twin.to_torch(inputs)
    active = {t: float(w) != 0.0 for t, w in zip(twin.LOSS_TERMS, inputs["loss_weights"])}
    rec.update(build_s=time.perf_counter() - t0, rss_after_build_gb=current_rss_gb(),
               unet_params_m=sum(p.numel() for p in u.parameters()) / 1e6,
               vae_params_m=sum(p.numel() for p in v.parameters()) / 1e6)
    state = {}

    @torch.no_grad()
    def render():
        out = renderer(x["rays_o"], x["rays_d"], x["light_positions"], x["jitter"], None, inputs["shading"],
                       x["ambient_color"], x["diffuse_color"])
        state["rgb"] = twin.composite_background(out, x["bg_color"], x["bg_mask"])
        return fraction_of(out, lambda t: t.float().mean())

    @torch.no_grad()
    def vae():
        state["latents"] = guidance.encode_images(state["rgb"], x["vae_noise"])

    @torch.no_grad()
    def unet_call():
        b = state["latents"].shape[0]
        camera = normalize_camera(x["c2w"])
        return guidance.predict_noise(state["latents"], x["t"].long().repeat(b), x["text_embeddings"], camera)

    chunk_rays = int(system_cfg.get("render_chunk_rays") or 0)
    buckets = [float(f) for f in system_cfg["renderer"].get("compaction_buckets") or []]
    state["bucket_index"] = 0

    def step():
        if not chunk_rays:
            loss, _ = twin.training_step(renderer, guidance, optimizer, inputs, active)
            return loss
        # the MindSpore system's deferred step, computed the same way (tests/test_deferred_step.py)
        t0, seconds = time.perf_counter(), {}
        loss, _, metrics = twin.deferred_training_step(renderer, guidance, optimizer, inputs, active, chunk_rays,
                                                       buckets, state["bucket_index"], system_cfg.get("grad_clip"),
                                                       seconds)
        state["bucket_index"] = metrics["bucket_index"]
        record_step(rec, time.perf_counter() - t0, metrics, seconds)
        return loss

    trained = [p for g in optimizer.param_groups for p in g["params"]]

    def optimizer_step():
        for p in trained:
            p.grad = torch.zeros_like(p)
        optimizer.step()

    phases = {"render": render, "vae": vae, "unet": unet_call} if args.phases else {}
    run_measurements(rec, args, phases, step, optimizer_step)
    rec.update(mindspore_imported="mindspore" in sys.modules)


def worker(args) -> int:
    data_cfg, system_cfg = load_configs(args)
    res, views = resolution_and_views(args)
    rec = Recorder(framework=args.worker, stage=stage_label(args), res=res, views=views,
                   samples=system_cfg["renderer"].get("num_samples_per_ray"),
                   importance=system_cfg["renderer"].get("num_importance_samples", 0),
                   completed=False, evaluated_fraction=None, s_per_step=None, pid=os.getpid())
    rec.update(rss_start_gb=current_rss_gb())
    try:
        if args.worker == "mindspore":
            ms_worker(args, rec, data_cfg, system_cfg)
        else:
            torch_worker(args, rec, data_cfg, system_cfg)
    except MemoryError as exc:
        rec.update(error=f"MemoryError: {exc}", failure="out of memory (MemoryError)")
        return 3
    except RuntimeError as exc:  # MindSpore reports a failed allocation as RuntimeError
        text = str(exc)
        oom = any(s in text.lower() for s in ("memory", "malloc", "alloc"))
        rec.update(error=text[-2000:], failure="out of memory (allocation failed)" if oom else "error")
        return 3
    return 0


# ============================================================================ the parent: watchdog and report


def tree_rss_gb(pid: int) -> float:
    """Summed RSS of pid and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total / 2 ** 20


def mem_available_gb() -> float:
    return proc_kb_field_gb("/proc/meminfo", "MemAvailable", float("inf"))


def run_child(framework: str, argv: list[str], args) -> dict:
    """Run one framework's worker under the watchdog; returns its record with `completed` / `failure`.

    The memory limit is --max-rss-gb, or less when the machine has less available (other processes): the
    child is killed before the kernel's out-of-memory killer would pick a process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework] + argv
    limit = min(args.max_rss_gb, mem_available_gb() - 1.0)
    print(f"[bench_sds_step] {framework}: memory limit {limit:.1f} GB, timeout {args.timeout:.0f} s", flush=True)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env, start_new_session=True)
        t0, watch_peak, failure = time.perf_counter(), 0.0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = tree_rss_gb(proc.pid)
            watch_peak = max(watch_peak, rss)
            elapsed = time.perf_counter() - t0
            free = mem_available_gb()
            if failure is None and rss > limit:
                failure = f"out of memory (killed by the watchdog at {rss:.1f} GB > limit {limit:.1f} GB)"
            elif failure is None and free < args.min_free_gb:
                failure = (f"out of memory (killed by the watchdog at {rss:.1f} GB: the machine had only "
                           f"{free:.1f} GB available < --min-free-gb {args.min_free_gb})")
            elif failure is None and elapsed > args.timeout:
                failure = f"timeout (killed after {elapsed:.0f} s > --timeout {args.timeout})"
            if failure is not None:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    rec = json.loads(lines[-1][7:]) if lines else {"framework": framework, "stage": stage_label(args)}
    rec.setdefault("completed", False)
    rec.setdefault("s_per_step", None)
    rec.setdefault("evaluated_fraction", None)
    rec["peak_rss_gb"] = max(usage.ru_maxrss / 2 ** 20, rec.get("peak_rss_gb") or 0.0)
    rec["watchdog_peak_rss_gb"] = watch_peak
    rec["memory_limit_gb"] = limit
    rec["wall_s"] = wall
    rec["returncode"] = proc.returncode
    if failure is None and proc.returncode != 0:
        if proc.returncode < 0:
            failure = rec.get("failure") or (f"killed by signal {-proc.returncode}"
                                             + (" (likely the kernel's out-of-memory killer)"
                                                if proc.returncode == -signal.SIGKILL else ""))
        else:
            failure = rec.get("failure") or f"worker failed (exit code {proc.returncode})"
    if failure is not None:
        rec["completed"] = False
        rec["failure"] = failure
        rec["stderr_tail"] = stderr[-3000:]
    return rec


def fmt(v, spec=".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def print_report(records: list[dict], args) -> None:
    res, views = resolution_and_views(args)
    r0 = records[0]
    print(f"SDS step, stage {stage_label(args)}: {views} views x {res}x{res}, {r0.get('samples')} samples"
          f" + {r0.get('importance')} importance per ray ({views * res * res * ((r0.get('samples') or 0) + (r0.get('importance') or 0)) / 1e6:.2f}M"
          f" samples), repeat {args.repeat}, MindSpore GRAPH mode")
    head = (f"  {'framework':10s} {'done':>5s} {'s/step':>8s} {'first':>8s} {'peakGB':>7s} {'evalfr':>6s}"
            f" {'render':>7s} {'vae':>7s} {'unet':>7s} {'backwd':>7s} {'optim':>7s} {'loss':>12s}")
    print(head)
    for r in records:
        print(f"  {r['framework']:10s} {str(bool(r['completed'])):>5s} {fmt(r.get('s_per_step')):>8s}"
              f" {fmt(r.get('first_step_s')):>8s} {fmt(r.get('peak_rss_gb')):>7s} {fmt(r.get('evaluated_fraction'), '.3f'):>6s}"
              f" {fmt(r.get('render_s')):>7s} {fmt(r.get('vae_s')):>7s} {fmt(r.get('unet_s')):>7s}"
              f" {fmt(r.get('backward_s')):>7s} {fmt(r.get('optimizer_s'), '.3f'):>7s} {fmt(r.get('loss'), '.6g'):>12s}")
        if r.get("failure"):
            print(f"    {r['framework']}: NOT COMPLETED during '{r.get('in_progress')}': {r['failure']}; measured: "
                  + ", ".join(f"{k} {fmt(r[k])}" for k in ("build_s", "render_s", "vae_s", "unet_s", "first_step_s")
                              if r.get(k) is not None))
            if r.get("error"):
                print(f"    error: {r['error'].splitlines()[-1][:300] if r['error'] else ''}")
    for r in records:
        for i, row in enumerate(r.get("steps") or []):
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in row["sections"].items())
            print(f"  {r['framework']} step {i}: {row['s']:.1f} s, evaluated {fmt(row['evaluated_fraction'], '.3f')}"
                  + (" (rendered twice: a chunk overflowed its bucket)" if row.get("rerendered") else "")
                  + (f"; {parts}" if parts else ""))
    for r in records:
        print(f"  {r['framework']}: build {fmt(r.get('build_s'))} s, RSS after build {fmt(r.get('rss_after_build_gb'))} GB,"
              f" first calls (compile): render {fmt(r.get('render_first_s'))} s, vae {fmt(r.get('vae_first_s'))} s,"
              f" unet {fmt(r.get('unet_first_s'))} s, step {fmt(r.get('first_step_s'))} s; wall {fmt(r.get('wall_s'), '.0f')} s")
    done = {r["framework"]: r for r in records if r.get("s_per_step")}
    if "mindspore" in done and "torch" in done:
        m, t = done["mindspore"], done["torch"]
        rel = abs(m["loss"] - t["loss"]) / max(1e-12, abs(t["loss"]))
        print(f"  mindspore/torch: time {m['s_per_step'] / t['s_per_step']:.2f}x, peak RSS "
              f"{m['peak_rss_gb'] / t['peak_rss_gb']:.2f}x, loss rel diff {rel:.1e}")
    print("  s/step: median full step (forward + backward + AdamW) after one warm-up; first: the warm-up step "
          "(MindSpore: includes graph compilation); peakGB: the child's ru_maxrss")
    for p in ("render", "vae", "unet", "backward", "optimizer"):
        print(f"  {p}: {PHASE_NOTES[p]}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", type=int, choices=sorted(STAGES), help="1: 64x64 x 8 views; 2: 256x256 x 4 views")
    ap.add_argument("--res", type=int, help="render resolution (overrides the stage's)")
    ap.add_argument("--views", type=int, help="views = batch size (overrides the stage's)")
    ap.add_argument("--samples", type=int, help="num_samples_per_ray (default: the YAML's)")
    ap.add_argument("--importance", type=int, help="num_importance_samples (default: the YAML's)")
    ap.add_argument("--tiny", action="store_true", help="configs/tiny-mvdream.yaml models, 4-level hash grid, "
                                                        "16x16 x 4 views, 16 + 16 samples")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override: renderer.KEY=V, geometry.KEY=V (under system.), system.KEY=V, data.KEY=V")
    ap.add_argument("--frameworks", nargs="+", choices=["mindspore", "torch"], default=["mindspore", "torch"])
    ap.add_argument("--repeat", type=int, default=1, help="timed steps after the warm-up step")
    ap.add_argument("--phase-repeat", type=int, default=1, help="timed calls of each phase after its warm-up")
    ap.add_argument("--phases", type=int, default=1, choices=[0, 1], help="measure the phases separately")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per framework child")
    ap.add_argument("--max-rss-gb", type=float, default=22.0, help="kill a child whose RSS goes above this")
    ap.add_argument("--min-free-gb", type=float, default=1.5,
                    help="also kill the child when the machine's available memory drops below this")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (OMP_NUM_THREADS, torch)")
    ap.add_argument("--global-step", type=int, default=6000, help="step for the timestep range (t in [260, 620])")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=SYSTEM_CONFIG, help="system YAML (default configs/mvdream-sd21.yaml)")
    ap.add_argument("--json", help="write the records (a list) to this file")
    ap.add_argument("--worker", choices=["mindspore", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tiny and args.stage is not None:
        ap.error("--tiny and --stage exclude each other")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        if args.worker == "torch":
            import torch
            torch.set_num_threads(args.threads)
        return worker(args)
    records = []
    for fw in args.frameworks:
        print(f"[bench_sds_step] running {fw} ...", flush=True)
        records.append(run_child(fw, argv, args))
    print_report(records, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"  records written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
