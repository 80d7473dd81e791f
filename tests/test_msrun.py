"""Many processes through MindSpore's own launcher (msrun, 2 workers on CPU: mccl over loopback):
mindspore_impl/core/distributed.py, launch.py --prompts, the data-parallel shard of
mindspore_impl/mvdream/data/datamodule.py and the gradient mean of core/train_step.py.

(a) Multiview diffusion training on 2 ranks (configs/tiny-mvdiffusion.yaml, global batch 4 objects = 2 per rank)
    gives the losses and the updated parameters of one process on the combined batch; only rank 0 writes, and
    rank 0's checkpoints equal one process's, data stream included.
(b) A prompt list of 3 prompts on 2 ranks (configs/tiny-sds.yaml with the tiny checkpoint of
    scripts/make_tiny_checkpoint.py) writes one trial folder per prompt; one process trains a list in turn.
(c) A batch that does not split over the ranks, and bad prompt files, stop with one error line before any work.

The step runs in PyNative here (system.jit=false) to keep this file within a few minutes on 2 CPU cores: the
compiled step wraps the same step function in ms.jit, and was measured the same way by hand (2 ranks vs one
process, tiny-mvdiffusion, batch 4, 2 steps, jit=true): step-2 loss 6e-8 apart (relative), averaged gradients
1.9e-7 of the largest apart, parameters at most 1.6e-5 apart (a bias whose gradient is rounding noise), 0.007 of
the bound of `_compare`.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import launch
from mindspore_impl.core.train_state import load_training_state
from scripts.make_tiny_checkpoint import make_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")
TINY_MV = os.path.join(ROOT, "configs", "tiny-mvdiffusion.yaml")
TINY_SDS = os.path.join(ROOT, "configs", "tiny-sds.yaml")
BIN = os.path.dirname(sys.executable)
MSRUN = os.path.join(BIN, "msrun") if os.path.exists(os.path.join(BIN, "msrun")) else shutil.which("msrun")
WORKERS = 2
LR, BETA1, BETA2, EPS = 3e-3, 0.9, 0.999, 1e-8  # AdamW of configs/tiny-mvdiffusion.yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun(log_dir, args, timeout=400):
    """Run launch.py under msrun with WORKERS workers on loopback: (exit code, msrun's output, {log name: text})."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_")}  # no cluster variables of our own
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")  # msrun starts `python`: this interpreter's
    cmd = [MSRUN, f"--worker_num={WORKERS}", f"--local_worker_num={WORKERS}", f"--master_port={free_port()}",
           f"--log_dir={log_dir}", "--join=True", "--cluster_time_out=120", LAUNCH, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    logs = {}
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        if name.endswith(".log"):
            with open(os.path.join(log_dir, name), errors="replace") as f:
                logs[name[:-4]] = f.read()
    return proc.returncode, proc.stdout, logs


def own_lines(log: str) -> list[str]:
    """What launch.py printed (MindSpore's own log lines start with [LEVEL])."""
    return [line for line in log.splitlines() if line.strip() and not line.startswith("[")]


def failure(out, logs) -> str:
    return "\n".join([out[-3000:]] + [f"--- {k}\n{v[-3000:]}" for k, v in logs.items()])


def metrics(root):
    with open(os.path.join(root, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def launch_process(args, timeout=400) -> str:
    """launch.py in its own process (as msrun's workers are: no state from earlier tests in this one) -> the
    trial folder it printed."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path = next(ln for ln in proc.stdout.splitlines() if ln.startswith("trial folder: "))[len("trial folder: "):]
    return path if os.path.isabs(path) else os.path.join(ROOT, path)


def only_dir(path):
    entries = os.listdir(path)
    assert len(entries) == 1, entries
    return os.path.join(path, entries[0])


pytestmark = pytest.mark.skipif(MSRUN is None, reason="msrun (installed with MindSpore) not found")


# ---------------------------------------------------------------- (a) data parallel

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from scripts import make_primitives_dataset
    path = str(tmp_path_factory.mktemp("mv") / "primitives_8.npz")
    args = ["--num_objects", "6", "--size", "8", "--n_view", "8", "--supersample", "1", "--seed", "0"]
    assert make_primitives_dataset.main(["--out", path, *args]) == 0
    return path


def _mv_args(out, dataset, *extra):
    return ["--config", TINY_MV, "--train", f"exp_root_dir={out}", f"data.path={dataset}", "data.batch_size=4",
            "system.jit=false", "trainer.max_steps=2", "trainer.val_check_interval=0",
            "checkpoint.every_n_train_steps=1", *extra]


def _compare(state_a, state_b, steps=2):
    """Measured differences of two checkpoints after `steps` AdamW steps on the same data.

    grad: the largest difference of the first moments (the averaged gradients) over the largest moment, i.e. how
    well the all-reduced gradients equal the combined batch's (float32 summation order).
    ratio: how each parameter's difference compares with what that gradient difference can do through Adam. A
    step moves a parameter by lr * m_hat / (sqrt(v_hat) + eps), so a gradient difference dg changes it by at most
    about 2 lr dg / (sqrt(v_hat) + eps), and by at most 2 lr (a flipped sign). Where the gradient is real
    (sqrt(v_hat) ~1e-3) that is ~1e-9; where it is rounding noise of a gradient that is exactly 0 (a bias in front
    of a GroupNorm: sqrt(v_hat) ~1e-11, below eps) Adam scales the noise up and the runs may differ by ~1e-5.
    ratio = max |difference| / (1e-6 + steps * 2 lr min(1, dg / (sqrt(v_hat) + eps))), dg the largest
    difference of the bias-corrected first moments; <= 1 means the parameters agree as float32 allows."""
    keys = [k[len("model."):] for k in state_b if k.startswith("model.")]
    m_a = {k: state_a["optimizer.exp_avg." + k].astype(np.float64) for k in keys}
    m_b = {k: state_b["optimizer.exp_avg." + k].astype(np.float64) for k in keys}
    dm = max(float(np.abs(m_a[k] - m_b[k]).max()) for k in keys)
    grad = dm / max(float(np.abs(m_b[k]).max()) for k in keys)
    dg = dm / (1.0 - BETA1 ** steps)
    ratio = worst_d = 0.0
    worst = ""
    for k in keys:
        d = np.abs(state_a["model." + k].astype(np.float64) - state_b["model." + k])
        v = np.maximum(state_a["optimizer.exp_avg_sq." + k], state_b["optimizer.exp_avg_sq." + k]).astype(np.float64)
        rms_hat = np.sqrt(v / (1.0 - BETA2 ** steps))
        bound = 1e-6 + steps * 2 * LR * np.minimum(1.0, dg / (rms_hat + EPS))
        ratio = max(ratio, float((d / bound).max()))
        if d.max() > worst_d:
            worst_d, worst = float(d.max()), "model." + k
    return {"grad": grad, "ratio": ratio, "all": worst_d, "worst": worst}


def _says(c) -> str:
    return (f"averaged gradients (first moments) max |difference| {c['grad']:.2e} of the largest; parameters max "
            f"|difference| {c['all']:.2e} ({c['worst']}), {c['ratio']:.3f} of what that gradient difference can "
            f"change through AdamW")


def _close(c) -> bool:
    return c["grad"] <= 1e-5 and c["ratio"] <= 1.0


def test_data_parallel_equals_one_process_on_the_combined_batch(dataset, tmp_path):
    rc, out, logs = msrun(tmp_path / "log", _mv_args(tmp_path / "dp", dataset))
    assert rc == 0, failure(out, logs)
    root_dp = only_dir(only_dir(tmp_path / "dp"))  # rank 0 alone made a trial folder
    assert "trial folder:" in logs["worker_0"] and "trial folder:" not in logs["worker_1"]
    assert sorted(os.listdir(os.path.join(root_dp, "ckpts"))) == sorted(
        f"{n}.{e}" for n in ("step000001", "step000002", "last") for e in ("ckpt", "json"))
    assert os.path.exists(os.path.join(root_dp, "save", "it2-export", "model.ckpt"))

    root_1 = launch_process(_mv_args(tmp_path / "one", dataset))
    dp, one = metrics(root_dp), metrics(root_1)
    loss_err = max(abs(dp[s]["loss"] - one[s]["loss"]) / abs(one[s]["loss"]) for s in (1, 2))
    state_dp, meta_dp = load_training_state(os.path.join(root_dp, "ckpts", "last.ckpt"))
    state_1, meta_1 = load_training_state(os.path.join(root_1, "ckpts", "last.ckpt"))
    assert sorted(state_dp) == sorted(state_1) and meta_dp["data"] == meta_1["data"]
    c = _compare(state_dp, state_1)
    report = (f"2 ranks vs 1 process: losses {[dp[s]['loss'] for s in (1, 2)]} vs {[one[s]['loss'] for s in (1, 2)]}"
              f" (max relative difference {loss_err:.2e}); {_says(c)}")
    print(report)
    assert loss_err <= 1e-6 and _close(c), report

    # rank 0's step-1 checkpoint holds everything a run needs: it equals one process's step-1 checkpoint, data
    # stream included (the global one), and such a checkpoint resumes exactly (tests/test_train_mvdiffusion.py)
    s1_dp, m1_dp = load_training_state(os.path.join(root_dp, "ckpts", "step000001.ckpt"))
    s1_one, m1_one = load_training_state(os.path.join(root_1, "ckpts", "step000001.ckpt"))
    c = _compare(s1_dp, s1_one, steps=1)
    report = f"step-1 checkpoints, rank 0 of 2 vs one process: {_says(c)}; data {m1_dp['data']} vs {m1_one['data']}"
    print(report)
    assert sorted(s1_dp) == sorted(s1_one) and m1_dp["global_step"] == m1_one["global_step"] == 1
    assert m1_dp["data"] == m1_one["data"] and m1_dp["data"] != meta_1["data"], report
    assert _close(c), report


# ---------------------------------------------------------------- (b) a prompt list

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("sds") / "tiny-mvdream"), seed=0, log=lambda *_: None)


def _sds_args(paths, cache, out, prompts, *extra):
    return ["--config", TINY_SDS, "--train", "--prompts", str(prompts), f"exp_root_dir={out}",
            f"system.guidance.ckpt_path={paths['ckpt']}", f"system.guidance.config_path={paths['config']}",
            f"system.prompt_processor.tokenizer_path={paths['tokenizer']}", f"system.prompt_processor.cache_dir={cache}",
            "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16", "data.n_test_views=1",
            "data.n_val_views=1", "system.renderer.num_samples_per_ray=8", "trainer.max_steps=1",
            "trainer.val_check_interval=0", "checkpoint.every_n_train_steps=0", "trainer.enable_progress_bar=false",
            *extra]


def test_prompt_list_one_trial_per_prompt(tiny, tmp_path):
    paths = tiny
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# three objects\na red cube\n\n   a blue sphere  \n  # not this one\na green cone\n")
    rc, out, logs = msrun(tmp_path / "log", _sds_args(paths, tmp_path / "cache", tmp_path / "out", prompts))
    assert rc == 0, failure(out, logs)
    folder = tmp_path / "out" / "tiny-sds"
    trials = {name.split("@")[0]: os.path.join(folder, name) for name in os.listdir(folder)}
    print("trial folders:", sorted(os.listdir(folder)))
    assert sorted(trials) == ["a_blue_sphere", "a_green_cone", "a_red_cube"]
    for tag, trial in trials.items():
        m = metrics(trial)
        with open(os.path.join(trial, "configs", "parsed.yaml")) as f:
            parsed = f.read()
        print(tag, {s: r["loss"] for s, r in m.items()})
        assert sorted(m) == [1] and np.isfinite(m[1]["loss"]) and m[1]["loss"] > 0
        assert f"prompt: {tag.replace('_', ' ')}\n" in parsed
        assert os.path.exists(os.path.join(trial, "ckpts", "last.ckpt"))
        assert os.path.exists(os.path.join(trial, "save", "it1-export", "model.obj"))
    # rank r of 2 takes prompts r, r + 2, ...: rank 0 the 1st and 3rd, rank 1 the 2nd, each writing its own
    for rank, tags in ((0, ("a_red_cube", "a_green_cone")), (1, ("a_blue_sphere",))):
        written = [line.split(": ", 1)[1] for line in own_lines(logs[f"worker_{rank}"])
                   if line.startswith("trial folder: ")]
        assert written == [trials[t] for t in tags], (rank, written)

    # without msrun one process trains its list in turn; a prompt's run does not depend on who trains it. Its own
    # empty embedding cache, like rank 1 had: a cache miss builds the text encoder before the 3D model, which
    # draws from MindSpore's global seed, so a warm cache gives other initial 3D weights (lift3d, not msrun)
    alone = tmp_path / "alone.txt"
    alone.write_text("a blue sphere\na yellow torus\n")
    roots = launch.main(_sds_args(paths, tmp_path / "cache_one", tmp_path / "one", alone))
    assert [os.path.basename(r).split("@")[0] for r in roots] == ["a_blue_sphere", "a_yellow_torus"]
    here, there = metrics(roots[0])[1]["loss"], metrics(trials["a_blue_sphere"])[1]["loss"]
    print(f"'a blue sphere' step-1 loss: one process {here!r}, rank 1 under msrun {there!r}")
    assert abs(here - there) <= 1e-6 * abs(there)


# ---------------------------------------------------------------- (c) errors before any work

def test_batch_not_divisible_by_the_ranks(dataset, tmp_path):
    rc, out, logs = msrun(tmp_path / "log", _mv_args(tmp_path / "out", dataset, "data.batch_size=3"), timeout=200)
    assert rc != 0
    for rank in range(WORKERS):
        lines = own_lines(logs[f"worker_{rank}"])
        print(rank, lines)
        assert len(lines) == 1 and lines[0].startswith("error: data.batch_size 3 (the global batch"), lines
        assert "not divisible by the 2 ranks" in lines[0]
    assert not os.path.exists(tmp_path / "out")


def _fails(capsys, argv, *needles):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        launch._cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    print(err)
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])


@pytest.mark.parametrize("content, needles", [
    (None, ["not found"]),
    ("folder", ["is a folder"]),
    ("\n# only comments\n   \n", ["holds no prompt"]),
    ("a red cube\na blue sphere\na red cube\n", ["line 3 repeats the prompt of line 1"]),
    (b"a red cube\na caf\xe9\n", ["line 2 is not UTF-8"]),
    ("a ${oops} cube\n", ["line 1 contains '${'"]),
])
def test_bad_prompt_file(tiny, tmp_path, capsys, content, needles):
    paths = tiny
    prompts = tmp_path / "prompts.txt"
    if content == "folder":
        prompts.mkdir()
    elif isinstance(content, bytes):
        prompts.write_bytes(content)
    elif content is not None:
        prompts.write_text(content)
    _fails(capsys, _sds_args(paths, tmp_path / "cache", tmp_path / "out", prompts), f"--prompts {prompts}", *needles)
    assert not os.path.exists(tmp_path / "out")


def test_prompt_list_misuse(tiny, dataset, tmp_path, capsys, monkeypatch):
    paths = tiny
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n")
    base = _sds_args(paths, tmp_path / "cache", tmp_path / "out", prompts)
    _fails(capsys, base + ["system.prompt_processor.prompt=a cat"], "remove the system.prompt_processor.prompt=")
    _fails(capsys, ["--config", TINY_MV, "--train", "--prompts", str(prompts), f"data.path={dataset}"],
           "has no system.prompt_processor")
    _fails(capsys, ["--config", TINY_SDS, "--test", "--prompts", str(prompts)], "--prompts works with --train")
    # what msrun's environment says, checked before the ranks connect: a 3D system has no data parallel
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("MS_WORKER_NUM", "2")
    _fails(capsys, base[:2] + ["--train"] + base[5:], "does not train in data parallel", "--prompts FILE")
    assert not os.path.exists(tmp_path / "out")


def test_prompt_configs_get_distinct_tags(tmp_path):
    """Each prompt's config carries its prompt; a tag that does not depend on the prompt gets -1, -2, ..."""
    args = launch.build_parser().parse_args(["--config", TINY_SDS, "--train"])
    prompts = ["a red cube", "a cube: red # not a comment", "it's \"quoted\""]
    cfgs = launch.prompt_configs(args, [], prompts)
    assert [c.system.prompt_processor.prompt for c in cfgs] == prompts
    assert [c.tag for c in cfgs] == [p.replace(" ", "_") for p in prompts]
    fixed = launch.prompt_configs(args, ["tag=fixed"], prompts)
    assert [c.tag for c in fixed] == ["fixed-1", "fixed-2", "fixed-3"]
