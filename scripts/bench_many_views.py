"""Peak memory and time per view of many-view sampling with the sliding-window scheme.

    python scripts/bench_many_views.py                      # tiny config, random weights, N = 4 8 16
    python scripts/bench_many_views.py --compare_full       # also full joint attention over all N views
    python scripts/bench_many_views.py --config configs/sd-v2-base.yaml --size 256 --ckpt mvdream-sd21.ckpt \
        --tokenizer tokenizer/

Each (N, mode) runs in a fresh process, so its peak RSS (resource.getrusage ru_maxrss) is its own.
Reported: RSS after the models are loaded, peak RSS during sampling + decoding, the difference
(the sampling working set), and wall time per view.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from neutral.mvdream.samplers import SAMPLERS  # noqa: E402  (no framework import)


def rss_now_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class ZeroTokenizer:
    """Stand-in when no tokenizer files are given (benchmarks only): SOT/EOT-free zero ids."""

    def __call__(self, texts):
        import numpy as np
        return np.zeros((len(texts), 77), dtype=np.int32)


def worker(args) -> dict:
    from neutral.mvdream.model_config import load_model_config
    from mindspore_impl.core.device import setup
    from mindspore_impl.mvdream.pipeline import MVDreamPipeline
    setup(args.device, "pynative", seed=0)
    dtype = "fp16" if args.fp16 else "fp32"
    if args.ckpt:
        pipe = MVDreamPipeline.from_checkpoint(args.ckpt, args.config, args.tokenizer, dtype)
    else:
        pipe = MVDreamPipeline.build(load_model_config(args.config), ZeroTokenizer(), dtype)
    base = rss_now_mb()
    full = args.mode == "full"
    t0 = time.time()
    images = pipe("a bulldozer, 3d asset", num_frames=args.n, steps=args.steps, scale=7.5, sampler=args.sampler,
                  height=args.size, width=args.size, joint_views=args.n if full else 0,
                  window=None if full else args.window, windows_per_call=args.windows_per_call,
                  seed=0)
    dt = time.time() - t0
    assert images.shape == (args.n, args.size, args.size, 3)
    peak = peak_rss_mb()
    return {"n": args.n, "mode": args.mode, "rss_loaded_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
            "sampling_mb": round(peak - base, 1), "s_per_view": round(dt / args.n, 2), "total_s": round(dt, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny-mvdream.yaml"),
                    help="model config (configs/sd-v2-base.yaml for the full model)")
    ap.add_argument("--ckpt", default=None, help="converted checkpoint; default: random weights")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--size", type=int, default=64, help="image size (tiny VAE: latent = size / 2)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--sampler", default="dpmpp2m", choices=SAMPLERS)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--windows_per_call", type=int, default=1, help="windows batched per UNet call")
    ap.add_argument("--compare_full", action="store_true", help="also run full joint attention over N views")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="window", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0
    results = []
    modes = ["window"] + (["full"] if args.compare_full else [])
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])
                   if a not in ("--compare_full",)]
    for n in args.views:
        for mode in modes:
            cmd = [sys.executable, os.path.abspath(__file__), *_strip_views(passthrough), "--worker", "--n", str(n),
                   "--mode", mode]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                return 1
            r = json.loads(line[len("RESULT "):])
            results.append(r)
            print(f"N={r['n']:3d} {r['mode']:6s}: loaded {r['rss_loaded_mb']:8.1f} MB, peak {r['peak_rss_mb']:8.1f} MB "
                  f"(+{r['sampling_mb']:7.1f} MB sampling), {r['s_per_view']:6.2f} s/view, {r['total_s']:7.1f} s total",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _strip_views(argv: list[str]) -> list[str]:
    """Drop --views and its values (each worker gets one --n)."""
    out, skip = [], False
    for a in argv:
        if a == "--views":
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
