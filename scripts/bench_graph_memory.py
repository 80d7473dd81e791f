"""How MindSpore's CPU runtime holds the intermediates of a compiled graph, against PyNative.

A chain of --ops elementwise ops (add a broadcast row, exp, scale) on one (--rows, 4) float32 tensor runs
in GRAPH mode and in PyNative, each in its own process. It prints the process's resident memory after the
call, the size of one tensor, and in GRAPH mode what MindSpore's memory pool says its peak was. On MindSpore
2.7.2 (CPU), 48 ops on a 61 MB tensor: GRAPH +4048 MB (about one tensor per kernel, held for the graph's
lifetime) while its pool reports a 122 MB peak; PyNative +377 MB (its pool). The loop is unrolled (a constant
trip count); a loop MindSpore compiles as a loop reuses its buffers. This is why the deferred training step
(README, "Real size") keeps its graphs small.

  python scripts/bench_graph_memory.py                    # 48 ops on a 64 MB tensor
  python scripts/bench_graph_memory.py --ops 96 --rows 2000000
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys


def rss_mb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2 ** 20


def worker(mode: str, ops_count: int, rows: int) -> None:
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    x = ms.Tensor(np.random.default_rng(0).random((rows, 4), dtype=np.float32))
    row = ms.Tensor(np.array([[0.3, 0.5, 0.7, 0.9]], np.float32))

    class Chain(nn.Cell):
        def __init__(self, steps: int):
            super().__init__()
            self.steps = steps  # a constant: the loop unrolls into 3 kernels per step

        def construct(self, z):
            for _ in range(self.steps):
                z = ops.exp(z + row) * 0.1
            return z.sum()

    chain = Chain(ops_count // 3)
    before = rss_mb()
    float(chain(x).asnumpy())
    print(f"{mode:9s}: {ops_count} ops on a {rows * 16 / 2 ** 20:.0f} MB tensor: resident memory "
          f"+{rss_mb() - before} MB after the call", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=48, help="ops in the chain (a multiple of 3)")
    ap.add_argument("--rows", type=int, default=4_000_000, help="rows of the (rows, 4) float32 tensor")
    ap.add_argument("--worker", choices=["graph", "pynative"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.ops, args.rows)
        return 0
    for mode in ("graph", "pynative"):
        env = dict(os.environ, MS_DEV_RUNTIME_CONF="memory_statistics:True") if mode == "graph" else None
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--ops", str(args.ops),
                               "--rows", str(args.rows)], capture_output=True, text=True, env=env)
        lines = (proc.stdout + proc.stderr).splitlines()
        for line in lines:
            if line.startswith(mode) or "dynamic memory pool total allocated" in line:
                print(line.replace("[MS_RUNTIME_PROF]", "  memory pool: ")[:260])
        if proc.returncode != 0:
            print(f"{mode} worker failed (exit code {proc.returncode})")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
