"""A full-size MVDream checkpoint with random weights (sd-v2-base shapes), written and converted the way a
user converts the real sd-v2.1-base-4view.pt, for plumbing and timing at the real size without a download.

    python scripts/make_random_checkpoint.py                          # -> pretrained/sd-v2.1-base-4view.ckpt
    python scripts/make_random_checkpoint.py --out outputs/random-sd21 --delete-pt
    python launch.py --config configs/mvdream-sd21.yaml --train system.prompt_processor.prompt="a red cube" \
        system.guidance.ckpt_path=outputs/random-sd21/sd-v2.1-base-4view.ckpt \
        system.prompt_processor.tokenizer_path=outputs/random-sd21/tokenizer

(This is a new script beside scripts/make_tiny_checkpoint.py, whose model builders it reuses.) Steps:
1. build the torch_ref UNet + VAE + OpenCLIP ViT-H-14 text tower of configs/sd-v2-base.yaml (1.3 B parameters,
   5.2 GB in fp32) from a fixed seed, with make_tiny_checkpoint's init fixes (zero-initialised output convs and
   open_clip's torch.empty tensors get values);
2. save them as ONE `.pt` in the original layout (a key prefix per sub-model, as
   neutral/mvdream/checkpoint_layout.py defines them); the numpy arrays handed to torch.save are
   views of the module tensors, so only one copy of the weights is held; then the modules are freed;
3. convert that file with the project's converter, in a child process, exactly as a user runs it on the real
   file: `python -m convert.pt2ms --src <out>/sd-v2.1-base-4view.pt --dst <out>/sd-v2.1-base-4view.ckpt
   --config configs/sd-v2-base.yaml`. Its peak memory (about two copies of the weights) is reported separately;
4. write a tokenizer folder `<out>/tokenizer` with the TINY CLIP BPE files of make_tiny_checkpoint (512 byte
   tokens + a few merges + the specials), not the real 49408-token SD 2.1 vocabulary: enough to tokenize prompts,
   and text embeddings of random weights mean nothing anyway. An existing `<out>/tokenizer/vocab.json` (e.g. the
   real one) is left alone.

The weights mean nothing: this is for memory/time measurements and end-to-end plumbing at the real size, not for
pictures. Note: only /pretrained/tiny-mvdream/ is git-ignored; a 5 GB file written to pretrained/ must not be
committed (write it to outputs/, which is ignored, or add it to .gitignore).
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FULL_CONFIG = os.path.join(ROOT, "configs", "sd-v2-base.yaml")
DEFAULT_OUT = "pretrained"
PT_NAME, CKPT_NAME, TOKENIZER_DIR = "sd-v2.1-base-4view.pt", "sd-v2.1-base-4view.ckpt", "tokenizer"


def _gb(kb: int) -> float:
    return kb / 2 ** 20


def write_original_pt(pt_path: str, seed: int, config_path: str, log=print) -> dict:
    """Build the random torch_ref models and torch.save them in the original layout; frees them afterwards.

    Returns {"params": number of values, "tensors": number of tensors}.
    """
    from convert.io import write_torch_checkpoint
    from scripts.make_tiny_checkpoint import build_torch_models, original_state_dict
    t0 = time.perf_counter()
    models = build_torch_models(seed, config_path)
    state = original_state_dict(models)  # numpy views of the module tensors: no copy
    info = {"params": int(sum(v.size for v in state.values())), "tensors": len(state)}
    log(f"built UNet + VAE + text tower: {info['params'] / 1e9:.3f} B values in {info['tensors']} tensors "
        f"({time.perf_counter() - t0:.0f} s)")
    t1 = time.perf_counter()
    write_torch_checkpoint(state, pt_path)
    log(f"wrote {pt_path} ({os.path.getsize(pt_path) / 1e9:.2f} GB, {time.perf_counter() - t1:.0f} s)")
    del models, state
    gc.collect()
    return info


def run_converter(pt_path: str, ckpt_path: str, config_path: str, log=print) -> dict:
    """`python -m convert.pt2ms` in a child process; returns {"seconds", "peak_rss_gb", "rc"} of that child."""
    cmd = [sys.executable, "-m", "convert.pt2ms", "--src", pt_path, "--dst", ckpt_path, "--config", config_path]
    log("converting: " + " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - t0, "peak_rss_gb": _gb(usage.ru_maxrss), "rc": proc.returncode}


def write_tokenizer_once(folder: str, log=print) -> str:
    from scripts.make_tiny_checkpoint import write_tokenizer
    if os.path.isfile(os.path.join(folder, "vocab.json")):
        log(f"tokenizer: {folder} already has vocab.json, left as it is")
        return folder
    return write_tokenizer(folder)


def make_random_checkpoint(out_dir: str = DEFAULT_OUT, seed: int = 0, config_path: str = FULL_CONFIG,
                           delete_pt: bool = False, log=print) -> dict:
    """Write <out_dir>/sd-v2.1-base-4view.pt (original layout), .ckpt (converted) and tokenizer/.

    Returns the paths and the measurements (seconds, peak RSS of this process and of the converter)."""
    os.makedirs(out_dir, exist_ok=True)
    pt_path, ckpt_path = os.path.join(out_dir, PT_NAME), os.path.join(out_dir, CKPT_NAME)
    t0 = time.perf_counter()
    info = write_original_pt(pt_path, seed, config_path, log)
    write_s = time.perf_counter() - t0
    writer_peak = _gb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    conv = run_converter(pt_path, ckpt_path, config_path, log)
    if conv["rc"] != 0:
        raise RuntimeError(f"converting {pt_path} failed (exit code {conv['rc']})")
    tokenizer = write_tokenizer_once(os.path.join(out_dir, TOKENIZER_DIR), log)
    if delete_pt:
        os.remove(pt_path)
        log(f"deleted {pt_path}")
    result = {"pt": None if delete_pt else pt_path, "ckpt": ckpt_path, "tokenizer": tokenizer,
              "config": config_path, **info, "write_pt_s": write_s, "writer_peak_rss_gb": writer_peak,
              "convert_s": conv["seconds"], "convert_peak_rss_gb": conv["peak_rss_gb"],
              "total_s": time.perf_counter() - t0, "ckpt_gb": os.path.getsize(ckpt_path) / 1e9}
    log(f"ckpt: {ckpt_path} ({result['ckpt_gb']:.2f} GB); tokenizer: {tokenizer}")
    log(f"time: build + write .pt {write_s:.0f} s (peak RSS {writer_peak:.2f} GB), "
        f"convert {conv['seconds']:.0f} s (converter peak RSS {conv['peak_rss_gb']:.2f} GB), "
        f"total {result['total_s']:.0f} s")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=FULL_CONFIG, help="original model YAML (default configs/sd-v2-base.yaml)")
    ap.add_argument("--delete-pt", action="store_true", help="remove the original-layout .pt after converting it")
    args = ap.parse_args(argv)
    make_random_checkpoint(args.out, args.seed, args.config, args.delete_pt)
    return 0


if __name__ == "__main__":
    from neutral.errors import run_cli
    run_cli(main)
