"""Benchmark the static-shape NeRF renderer: forward + backward at 64x64 x 8 views, MindSpore vs torch_ref.

Each framework runs in its own subprocess of this run (same machine, same inputs, same parameters) so its peak
memory (ru_maxrss) is its own. Geometry is the upstream implicit-volume (HashGrid 16 levels, 2^19 table,
VanillaMLP 64x1), no-material, neural environment map background.

  python scripts/bench_render.py --repeat 2                       # uniform 64 samples/ray
  python scripts/bench_render.py --samples 32 --importance 32     # 32 coarse + 32 importance
  python scripts/bench_render.py --quality                        # sampler error vs a 512-sample reference
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def make_rays(views: int, res: int, distance: float = 2.0, fovy_deg: float = 40.0):
    """Pinhole cameras on a ring at 15 degrees elevation looking at the origin -> o, d (V,res,res,3), light (V,3)."""
    az = np.deg2rad(np.arange(views) * 360.0 / views)
    el = np.deg2rad(15.0)
    eye = distance * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full(views, np.sin(el))], -1)
    forward = -eye / np.linalg.norm(eye, axis=-1, keepdims=True)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    up = np.cross(right, forward)
    f = 0.5 * res / np.tan(np.deg2rad(fovy_deg) / 2)
    px = (np.arange(res) + 0.5 - res / 2) / f
    x, y = np.meshgrid(px, -px, indexing="xy")
    d = x[None, ..., None] * right[:, None, None] + y[None, ..., None] * up[:, None, None] + forward[:, None, None]
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(eye[:, None, None], d.shape)
    return o.astype(np.float32), d.astype(np.float32), (eye * 1.5).astype(np.float32)


def param_values(names_shapes, seed: int, sharp: bool):
    """The same numbers for both frameworks, by parameter name."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in sorted(names_shapes):
        if "encoding" in name:
            out[name] = rng.uniform(-1e-4, 1e-4, shape) if not sharp else rng.uniform(-0.5, 0.5, shape)
        else:
            out[name] = rng.normal(0.0, 1.0 / np.sqrt(shape[-1]), shape)
    return {k: v.astype(np.float32) for k, v in out.items()}


def geometry_cfg(args):
    scale = args.blob_scale if args.blob_scale else (50.0 if args.sharp else 10.0)
    return {"radius": 1.0, "normal_type": None, "density_blob_scale": scale}


def renderer_cfg(samples: int, importance: int, randomized: bool = True):
    return {"num_samples_per_ray": samples, "num_importance_samples": importance, "randomized": randomized,
            "eval_chunk_size": 1024}


def build_ms(args, samples, importance, randomized=True):
    import mindspore as ms
    from mindspore_impl.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground
    from mindspore_impl.lift3d.geometry.implicit_volume import ImplicitVolume
    from mindspore_impl.lift3d.materials.no_material import NoMaterial
    from mindspore_impl.lift3d.renderers import NeRFVolumeRenderer
    geo, bg = ImplicitVolume(geometry_cfg(args)), NeuralEnvironmentMapBackground()
    for cell in (geo, bg):
        values = param_values([(p.name, tuple(p.shape)) for p in cell.get_parameters()], args.seed, args.sharp)
        for p in cell.get_parameters():
            p.set_data(ms.Tensor(values[p.name]))
    r = NeRFVolumeRenderer(renderer_cfg(samples, importance, randomized), geo, NoMaterial(), bg)
    r.update_step(0, np.random.default_rng(args.seed))
    return r


def build_torch(args, samples, importance):
    import torch
    from torch_ref.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground
    from torch_ref.lift3d.geometry.implicit_volume import ImplicitVolume
    from torch_ref.lift3d.materials.no_material import NoMaterial
    from torch_ref.lift3d.renderers import NeRFVolumeRenderer
    geo, bg = ImplicitVolume(geometry_cfg(args)), NeuralEnvironmentMapBackground()
    for mod in (geo, bg):
        values = param_values([(n, tuple(p.shape)) for n, p in mod.named_parameters()], args.seed, args.sharp)
        with torch.no_grad():
            for n, p in mod.named_parameters():
                p.copy_(torch.from_numpy(values[n]))
    r = NeRFVolumeRenderer(renderer_cfg(samples, importance), geo, NoMaterial(), bg)
    r.update_step(0, np.random.default_rng(args.seed))
    return r


def worker(args):
    """Time `repeat` forward+backward steps after one warm-up; print one JSON line."""
    o, d, light = make_rays(args.views, args.res)
    jitter = np.random.default_rng(args.seed).random(o.shape[:-1] + (args.samples + args.importance,), np.float32)
    g = np.random.default_rng(args.seed + 1).normal(size=o.shape).astype(np.float32)
    if args.framework == "torch":
        import torch
        torch.set_num_threads(args.threads)
        r = build_torch(args, args.samples, args.importance)
        params = [p for m in (r.geometry, r.background) for p in m.parameters()]
        inputs = [torch.from_numpy(x) for x in (o, d, light, jitter)]
        gt = torch.from_numpy(g)

        def step():
            out = r(*inputs)
            loss = (out["comp_rgb"] * gt).sum()
            grads = torch.autograd.grad(loss, params)
            return float(loss), float(sum(x.abs().sum() for x in grads))
    else:
        import mindspore as ms
        from mindspore_impl.core.device import dispatch_for
        dispatch_for("CPU")  # before the first operator
        ms.set_device("CPU")
        ms.set_context(mode=ms.GRAPH_MODE if args.graph else ms.PYNATIVE_MODE)
        r = build_ms(args, args.samples, args.importance)
        params = r.geometry.trainable_params() + r.background.trainable_params()
        inputs = [ms.Tensor(x) for x in (o, d, light, jitter)]
        gt = ms.Tensor(g)

        def loss_fn(*a):
            return (r(*a)["comp_rgb"] * gt).sum()
        grad_fn = ms.value_and_grad(loss_fn, None, params)

        def step():
            loss, grads = grad_fn(*inputs)
            return float(loss.asnumpy()), float(sum(np.abs(x.asnumpy()).sum() for x in grads))
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    warm = float("nan")
    if args.warmup:  # first call (GRAPH compile, allocator growth), not counted
        t0 = time.perf_counter()
        step()
        warm = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        loss, gsum = step()
        times.append(time.perf_counter() - t0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps({"framework": args.framework, "first_s": warm, "step_s": float(np.median(times)),
                                  "peak_rss_gb": peak_kb / 2 ** 20, "render_rss_gb": (peak_kb - base_kb) / 2 ** 20,
                                  "loss": loss, "grad_abs_sum": gsum}))


def quality(args):
    """MindSpore, forward only, deterministic samples: error of each sampler vs a 512-sample uniform reference."""
    import mindspore as ms
    from mindspore_impl.core.device import dispatch_for
    dispatch_for("CPU")  # before the first operator
    ms.set_device("CPU")
    rays = make_rays(2, args.quality_res)
    o, d, light = (ms.Tensor(x) for x in rays)
    ref = build_ms(args, 512, 0, randomized=False).render_chunked(o, d, light)
    print(f"quality at {args.quality_res}x{args.quality_res} x 2 views, scene {'sharp' if args.sharp else 'init'}:"
          f" mean opacity {float(ref['opacity'].asnumpy().mean()):.3f}")
    n_rays = int(np.prod(o.shape[:-1]))
    flat = [ms.Tensor(x.reshape(n_rays, 3)) for x in rays[:2]] + [ms.Tensor(np.repeat(rays[2], n_rays // 2, 0))]
    print("  (evaluated/ray: samples the field runs on per ray with empty-space skipping, the occupied ones)")
    for samples, importance in ((64, 0), (32, 32), (128, 0), (64, 64), (256, 0), (128, 128), (512, 0)):
        r = build_ms(args, samples, importance, randomized=False)
        out = r.render_chunked(o, d, light)
        occupied = r.render_ray_chunk(*flat)["occupied"].asnumpy()  # (fine, coarse) occupied sample counts
        per_ray = (occupied[0] + occupied[1]) / n_rays
        errs = {k: float(np.abs(out[k].asnumpy() - ref[k].asnumpy()).mean()) for k in ("comp_rgb", "opacity", "depth")}
        dense = samples + importance + (samples if importance else 0)  # fine pass + density-only coarse pass
        print(f"  {samples:4d} + {importance:3d} importance: evaluated/ray dense {dense:4d},"
              f" skipping {per_ray:6.1f}; mean abs err " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--samples", type=int, default=64, help="uniform (coarse) samples per ray")
    ap.add_argument("--importance", type=int, default=0, help="importance samples per ray (0 = off)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, choices=[0, 1], help="one untimed step first")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--graph", action="store_true", help="MindSpore GRAPH mode (default PyNative)")
    ap.add_argument("--sharp", action="store_true", help="textured, sharper density field instead of the init blob")
    ap.add_argument("--blob-scale", type=float, default=0.0, help="density blob scale (default 10, 50 with --sharp)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", action="store_true", help="only the sampler-quality comparison")
    ap.add_argument("--quality-res", type=int, default=32)
    ap.add_argument("--framework", choices=["ms", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.framework:
        return worker(args)
    if args.quality:
        return quality(args)
    results = {}
    for fw in ("ms", "torch"):
        cmd = [sys.executable, os.path.abspath(__file__), "--framework", fw] + sys.argv[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{fw} worker failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[fw] = json.loads(lines[-1][7:])
    ms_r, pt_r = results["ms"], results["torch"]
    mode = "GRAPH" if args.graph else "PyNative"
    print(f"render fwd+bwd {args.views} views x {args.res}x{args.res}, {args.samples} samples"
          f" + {args.importance} importance per ray, repeat {args.repeat}")
    n_samples = args.views * args.res * args.res * (args.samples + args.importance)
    for fw, r in (("mindspore (" + mode + ")", ms_r), ("torch_ref", pt_r)):
        print(f"  {fw:22s} step {r['step_s']:.2f} s (first {r['first_s']:.2f} s), peak RSS {r['peak_rss_gb']:.2f} GB"
              f" (+{r['render_rss_gb']:.2f} GB while rendering = {r['render_rss_gb'] * 2 ** 30 / n_samples / 1024:.1f}"
              f" KB per sample), loss {r['loss']:.5f}")
    print(f"  ratio mindspore/torch: time {ms_r['step_s'] / pt_r['step_s']:.2f}x,"
          f" peak RSS {ms_r['peak_rss_gb'] / pt_r['peak_rss_gb']:.2f}x,"
          f" bytes per sample {ms_r['render_rss_gb'] / max(pt_r['render_rss_gb'], 1e-9):.2f}x,"
          f" loss rel diff {abs(ms_r['loss'] - pt_r['loss']) / max(1e-12, abs(pt_r['loss'])):.1e}")


if __name__ == "__main__":
    main()
