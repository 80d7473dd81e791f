"""Nothing lost, nothing silent: every bad input a user can type into launch.py, scripts/t2i.py or the converter
ends in exactly one line `error: <what>; <what to do>` on stderr and exit code 2, before any trial folder or
temporary file exists; Ctrl-C / SIGTERM during training writes a checkpoint, prints the resume command and
exits 130; the text-embedding cache is keyed on the tokenizer files; long prompts warn once.

The launcher runs in-process (launch._cli(argv) -> SystemExit). A tiny fake system (registered below) stands in
for the MVDream system where the check does not depend on it; configs/tiny-sds.yaml with the output of
scripts/make_tiny_checkpoint.py is used where it does."""
import json
import os
import shlex
import shutil
import signal
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import launch
from neutral.config import parse_structured
from neutral.errors import UserError
from neutral.registry import register
from mindspore_impl.core.trial import Trial, trial_name
from mindspore_impl.core.system import BaseSystem, BaseSystemConfig
from scripts import t2i

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SDS = os.path.join(ROOT, "configs", "tiny-sds.yaml")
DEMO = os.path.join(ROOT, "configs", "demo.yaml")
TINY_MODEL = os.path.join(ROOT, "configs", "tiny-mvdream.yaml")


# ----------------------------------------------------------------------------- a fake system and data


@dataclass
class FakeDataConfig:
    batch_size: int = 4


@register("user-errors-datamodule")
class FakeData:
    Config = FakeDataConfig
    n_val, n_test = 1, 2

    def __init__(self, cfg=None, seed=0):
        self.cfg = parse_structured(FakeDataConfig, cfg, "data")
        self.rng = np.random.default_rng(seed + 1)

    def sample(self, step):
        x = self.rng.standard_normal((self.cfg.batch_size, 3)).astype(np.float32)
        return {"x": x, "y": np.sin(x.sum(1, keepdims=True)).astype(np.float32)}

    def val_batch(self, i):
        return {}

    test_batch = val_batch

    def get_state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state


@dataclass
class FakeSystemConfig(BaseSystemConfig):
    width: int = 8
    signal_at_step: int = -1  # send this process a signal from inside that training step (Ctrl-C test)
    signal_name: str = "SIGINT"
    clobber_at_step: int = -1  # replace the signal handlers at that step, as MindSpore's runtime does at its start
    loss: dict = field(default_factory=lambda: {"lambda_mse": 1.0})


class FakeGeometry(nn.Cell):
    def __init__(self, width):
        super().__init__()
        self.encoding = nn.Dense(3, width)
        self.density_network = nn.Dense(width, 1)

    def construct(self, x):
        return self.density_network(ms.ops.tanh(self.encoding(x)))


@register("user-errors-system")
class FakeSystem(BaseSystem):
    Config = FakeSystemConfig

    def configure(self):
        self.geometry = FakeGeometry(self.cfg.width)
        self._step = None

    def _forward(self, x, y, weight):
        loss = weight * ((self.geometry(x) - y) ** 2).mean()
        return loss, loss

    def training_step(self, batch, step):
        if step == self.cfg.clobber_at_step:
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)
        if step == self.cfg.signal_at_step:
            os.kill(os.getpid(), getattr(signal, self.cfg.signal_name))
        if self._step is None:
            self._step = self.make_train_step(self._forward)
        weight = self.C(self.cfg.loss["lambda_mse"])
        loss, _ = self._step(ms.Tensor(batch["x"]), ms.Tensor(batch["y"]), ms.Tensor(weight, ms.float32))
        return {"loss": loss}

    def _image(self, index):
        return {"rgb": np.full((4, 4, 3), 0.5, np.float32)}

    def validation_step(self, batch, index):
        return self._image(index)

    test_step = validation_step

    def export(self, out_dir):
        return []


FAKE = """
name: fake
tag: a_run
exp_root_dir: outputs
data_type: user-errors-datamodule
data: {batch_size: 4}
system_type: user-errors-system
system:
  optimizer:
    name: AdamW
    args: {betas: [0.9, 0.99], eps: 1.0e-15}
    params:
      geometry.encoding: {lr: 0.01}
      geometry.density_network: {lr: 0.001}
trainer: {max_steps: 4, val_check_interval: 0, enable_progress_bar: false, test_video_formats: [gif]}
checkpoint: {every_n_train_steps: 0}
"""


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake.yaml"
    path.write_text(FAKE)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from scripts.make_tiny_checkpoint import make_tiny_checkpoint
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_checkpoint(str(root / "tiny-mvdream"), seed=0, log=lambda *_: None)


def _tiny_args(tiny, out, *extra):
    return ["--config", TINY_SDS, "--train", f"exp_root_dir={out}", f"system.guidance.ckpt_path={tiny['ckpt']}",
            f"system.prompt_processor.tokenizer_path={tiny['tokenizer']}",
            f"system.prompt_processor.cache_dir={os.path.dirname(tiny['ckpt'])}/cache", *extra]


# ----------------------------------------------------------------------------- helpers


def _one_error_line(err: str) -> str:
    """The single `error:` line of stderr (MindSpore's own [WARNING] log lines aside)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[WARNING]")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one `error:` line, got:\n{err}"
    return lines[0]


def _leftovers(folder) -> list:
    """Everything under folder (a trial folder, a temp file) that a failed command must not leave."""
    if not os.path.exists(folder):
        return []
    return [os.path.join(d, f) for d, dirs, files in os.walk(folder) for f in files + dirs]


def launch_fails(capsys, argv, *needles, out=None) -> str:
    """launch.py in-process with argv: exit 2, one `error:` line holding every needle, no trial folder."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        launch._cli(argv)
    err = capsys.readouterr().err
    print(err)
    line = _one_error_line(err)
    assert info.value.code == 2, err
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    if out is not None:
        assert _leftovers(out) == [], "an error must come before the trial folder is written"
    return line


# ----------------------------------------------------------------------------- launch.py: bad input


@pytest.mark.parametrize("override,needles", [
    ("trainer.max_steps=-5", ["trainer.max_steps must be >= 0, got -5"]),
    ("trainer.val_check_interval=-1", ["trainer.val_check_interval must be >= 0, got -1"]),
    ("trainer.log_every_n_steps=-2", ["trainer.log_every_n_steps must be >= 0"]),
    ("trainer.test_video_fps=0", ["trainer.test_video_fps must be >= 1"]),
    ("checkpoint.every_n_train_steps=-3", ["checkpoint.every_n_train_steps must be >= 0, got -3"]),
    ("checkpoint.save_top_k=-2", ["checkpoint.save_top_k must be >= -1", "-1 keeps all"]),
    ("trainer.max_stepz=3", ["bad config for trainer: Key 'max_stepz'"]),
    ("trainerr.max_steps=3", ["Key 'trainerr' not in 'ExperimentConfig'"]),
    ("trainer.max_steps", ["bad override 'trainer.max_steps': expected key=value"]),
    ("system_type=no-such-system", ["system_type: unknown module type 'no-such-system'"]),
    ("mode=fast", ["config key mode: must be one of pynative, graph, got 'fast'"]),
    ("system.loss.lambda_mse=.nan", ["system.loss.lambda_mse = nan is not a finite number"]),
    ("system.loss.lambda_mse=[0,1.0,.inf,4]", ["system.loss.lambda_mse[2] = inf is not a finite number"]),
    ("system.optimizer.args.eps=.inf", ["system.optimizer.args.eps = inf is not a finite number"]),
    ("system.optimizer.params.geometry.encoding.lr=-1", ["system.optimizer.params.geometry.encoding.lr must be",
                                                         "got -1"]),
    ("system.optimizer.params.geometry.encoding.lr=nan", ["system.optimizer.params.geometry.encoding.lr",
                                                          "'nan'"]),
    ("system.loss.lambda_mse=nan", ["a scheduled value is a number or a list, got str: 'nan'"]),
    ("system.optimizer.args.betas=[0.9,1.5]", ["system.optimizer.args.betas[1] must be a finite number in [0.0, 1.0)"]),
])
def test_bad_values(capsys, tmp_path, fake, override, needles):
    out = tmp_path / "out"
    launch_fails(capsys, ["--config", fake, "--train", f"exp_root_dir={out}", override], *needles, out=out)


def test_missing_config_file(capsys, tmp_path):
    launch_fails(capsys, ["--config", str(tmp_path / "nope.yaml"), "--train"], "config file not found")


@pytest.mark.parametrize("device", ["Ascend", "GPU"])
def test_device_missing_from_this_mindspore(capsys, tmp_path, fake, device):
    if device in __import__("mindspore_impl.core.device", fromlist=["x"]).available_devices():
        pytest.skip(f"this MindSpore has {device}")
    out = tmp_path / "out"
    launch_fails(capsys, ["--config", fake, "--train", "--device", device, f"exp_root_dir={out}"],
                 f"--device {device}: this MindSpore", "found: CPU", "--device CPU", out=out)


def test_exp_root_dir_is_a_file(capsys, tmp_path, fake):
    f = tmp_path / "afile"
    f.write_text("x")
    launch_fails(capsys, ["--config", fake, "--train", f"exp_root_dir={f}"], "is a file, not a folder")
    launch_fails(capsys, ["--config", fake, "--train", f"exp_root_dir={f}/sub"], "is a file, not a folder")
    assert f.read_text() == "x"


def test_exp_root_dir_unwritable(capsys, tmp_path, fake, monkeypatch):
    """As root every folder is writable to os.access; the OSError path of Trial.create is what a user hits then."""
    out = tmp_path / "ro"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if os.path.abspath(p) == str(out)
                        else real_access(p, m, *a, **k))
    launch_fails(capsys, ["--config", fake, "--train", f"exp_root_dir={out}"], "is not writable",
                 "set exp_root_dir=", out=out)


def test_trial_folder_oserror_is_one_line(tmp_path, monkeypatch):
    from mindspore_impl.core.trial import TrialFolderError

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "makedirs", refuse)
    with pytest.raises(TrialFolderError, match="cannot create the trial folder .*: Permission denied; set exp_root_dir="):
        Trial.create(str(tmp_path / "out"), "n", "t")


def _train_fake(fake, tmp_path, *extra):
    return launch.main(["--config", fake, "--train", f"exp_root_dir={tmp_path / 'runs'}", *extra])


def test_resume_problems_before_the_trial_folder(capsys, tmp_path, fake):
    out = tmp_path / "out"
    base = ["--config", fake, "--train", f"exp_root_dir={out}"]
    launch_fails(capsys, base + [f"resume={tmp_path / 'no' / 'such.ckpt'}"], "resume checkpoint not found", out=out)
    (tmp_path / "model.bin").write_bytes(b"x")
    launch_fails(capsys, base + [f"resume={tmp_path / 'model.bin'}"], "resume expects a .ckpt", out=out)
    (tmp_path / "empty").mkdir()
    launch_fails(capsys, base + [f"resume={tmp_path / 'empty'}"], "holds no checkpoint", out=out)
    launch_fails(capsys, ["--config", fake, "--test", f"exp_root_dir={out}"], "--test needs resume=PATH", out=out)

    trained = _train_fake(fake, tmp_path, "trainer.max_steps=2")
    ckpts = os.path.join(trained.trial.root, "ckpts")
    # a checkpoint of another model shape: the error comes from loading, still before any folder
    launch_fails(capsys, base + [f"resume={ckpts}", "system.width=16"], "does not match the model", out=out)
    # a truncated record and nothing to fall back to
    for name in ("last.json",):
        with open(os.path.join(ckpts, name), "r+b") as f:
            f.truncate(10)
    launch_fails(capsys, base + [f"resume={os.path.join(ckpts, 'last.ckpt')}"], "no complete checkpoint to resume from",
                 "truncated or corrupt", out=out)
    with open(os.path.join(ckpts, "last.json"), "w") as f:
        f.write("garbage{")
    launch_fails(capsys, base + [f"resume={ckpts}"], "no complete checkpoint", out=out)
    assert not [f for f in os.listdir(ckpts) if f.startswith(".tmp_")]


def test_long_prompt_trial_folder(tmp_path, fake):
    tag = "a " * 300 + "very long prompt"
    t = _train_fake(fake, tmp_path, f"tag={tag}", "trainer.max_steps=1")
    name = os.path.basename(t.trial.root)
    assert len(name.encode()) <= 255 and "@" in name
    assert os.path.isfile(os.path.join(t.trial.root, "configs", "parsed.yaml"))
    # distinct long tags get distinct folders (the hash of the full tag), short ones are unchanged
    assert trial_name(tag + "x", False) != trial_name(tag + "y", False)
    assert trial_name("a_red_cube", False) == "a_red_cube"
    assert len(trial_name("é" * 400).encode()) <= 255


# ----------------------------------------------------------------------------- tiny-sds (the real system)


def test_tiny_sds_bad_values(capsys, tmp_path, tiny):
    out = tmp_path / "out"
    cases = [
        (["data.n_view=0"], ["data.n_view must be >= 1, got 0"]),
        (["data.batch_size=6"], ["data.batch_size 6 must be divisible by n_view 4", "use batch_size=4 or 8"]),
        (["data.batch_size=2"], ["use batch_size=4"]),
        (["system.guidance.guidance_scale=nan"], ["system.guidance.guidance_scale = nan is not a finite number"]),
        (["system.guidance.guidance_scale=.inf"], ["system.guidance.guidance_scale = inf is not a finite number"]),
        (["system.loss.lambda_sds=.nan"], ["system.loss.lambda_sds = nan is not a finite number"]),
        (["system.prompt_processor.prompt="], ["the prompt is empty"]),
        ([f"system.prompt_processor.tokenizer_path={tmp_path / 'no-tok'}"], ["tokenizer files not found"]),
    ]
    for extra, needles in cases:
        launch_fails(capsys, _tiny_args(tiny, out, *extra), *needles, out=out)


def test_missing_checkpoint_hints_per_model(capsys, tmp_path, tiny):
    out = tmp_path / "out"
    line = launch_fails(capsys, _tiny_args(tiny, out, f"system.guidance.ckpt_path={tmp_path / 'x' / 'tiny.ckpt'}"),
                        "the tiny-mvdream checkpoint", "does not exist", "python scripts/make_tiny_checkpoint.py",
                        out=out)
    assert "5 GB" not in line and "huggingface" not in line
    line = launch_fails(capsys, ["--config", DEMO, "--train", f"exp_root_dir={out}",
                                 f"system.guidance.ckpt_path={tmp_path / 'model.ckpt'}"],
                        "the demo-mvdream checkpoint", "ships with the repository", "git checkout", out=out)
    assert "5 GB" not in line
    from neutral.lift3d.multiview_diffusion_guidance import missing_checkpoint_message
    real = missing_checkpoint_message("pretrained/sd.ckpt", "sd-v2.1-base-4view")
    assert "\n" not in real and "https://huggingface.co/MVDream/MVDream" in real and "convert.pt2ms" in real


# ----------------------------------------------------------------------------- scripts/t2i.py and the converter


def t2i_fails(capsys, tmp_path, *args, needles=()):
    capsys.readouterr()
    outdir = tmp_path / "t2i"
    rc = t2i.main(["--text", "a cat", "--ckpt", str(tmp_path / "none.ckpt"), "--config", TINY_MODEL,
                   "--tokenizer", str(tmp_path / "tok"), "--outdir", str(outdir), "--size", "16", *args])
    err = capsys.readouterr().err
    print(err)
    line = _one_error_line(err)
    assert rc == 2
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    assert not outdir.exists()
    return line


@pytest.mark.parametrize("args,needles", [
    (["--num_frames", "0"], ["--num_frames must be >= 1, got 0"]),
    (["--steps", "0"], ["--steps must be >= 1, got 0"]),
    (["--size", "30"], ["--size must be a positive multiple of 4", "got 30; use 28 or 32"]),
    (["--size", "-8"], ["--size must be a positive multiple"]),
    (["--n_samples", "0"], ["--n_samples must be >= 1, got 0"]),
    (["--scale", "-1"], ["--scale must be a finite number >= 0"]),
    (["--scale", "nan"], ["--scale must be a finite number >= 0"]),
    (["--eta", "2"], ["--eta must be in [0, 1]"]),
    (["--device", "Ascend"], ["--device Ascend: this MindSpore"]),
    ([], ["MVDream checkpoint not found", "none.ckpt"]),
    (["--config", "/no/model.yaml"], ["model config not found: /no/model.yaml"]),
])
def test_t2i_bad_input(capsys, tmp_path, args, needles):
    if "--device" in args and "Ascend" in __import__("mindspore_impl.core.device", fromlist=["x"]).available_devices():
        pytest.skip("this MindSpore has Ascend")
    t2i_fails(capsys, tmp_path, *args, needles=needles)


def test_t2i_size_multiple_of_the_real_model():
    from neutral.mvdream.model_config import load_model_config
    from mindspore_impl.mvdream.pipeline import image_multiple
    assert image_multiple(load_model_config(os.path.join(ROOT, "configs", "sd-v2-base.yaml"))) == 64
    assert image_multiple(load_model_config(TINY_MODEL)) == 4


@pytest.mark.parametrize("which", ["src", "config", "dst"])
def test_converter_bad_input(capsys, tmp_path, which, tiny):
    from convert.pt2ms import main as pt2ms_main
    args = {"src": tiny["pt"], "dst": str(tmp_path / "out" / "x.ckpt"), "config": TINY_MODEL}
    needle = {"src": "checkpoint not found", "config": "model config not found", "dst": "unknown checkpoint extension"}
    args[which] = {"src": str(tmp_path / "missing.pt"), "config": str(tmp_path / "missing.yaml"),
                   "dst": str(tmp_path / "out" / "x.bin")}[which]
    capsys.readouterr()
    rc = pt2ms_main([f"--{k}={v}" for k, v in args.items()])
    err = capsys.readouterr().err
    assert rc == 2 and needle[which] in _one_error_line(err)
    assert _leftovers(tmp_path / "out") == []


def test_every_user_error_class_is_a_user_error():
    from mindspore_impl.core.checkpoint import CheckpointError
    from neutral.config import ConfigError
    from mindspore_impl.core.device import DeviceError
    from neutral.schedule import ScheduleError
    from neutral.lift3d.prompt_processor import PromptError
    from neutral.lift3d.multiview_diffusion_guidance import GuidanceError
    from mindspore_impl.mvdream.data.primitives import DatasetError
    from mindspore_impl.mvdream.pipeline import SamplingError
    for cls in (CheckpointError, ConfigError, DeviceError, ScheduleError, PromptError, GuidanceError, DatasetError,
                SamplingError, launch.LaunchError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls


# ----------------------------------------------------------------------------- Ctrl-C / SIGTERM


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_writes_checkpoint_and_prints_resume_command(capsys, tmp_path, fake, sig):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    full = _train_fake(fake, tmp_path, "name=full")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        launch._cli(["--config", fake, "--train", f"exp_root_dir={tmp_path / 'runs'}", "name=cut",
                     "system.signal_at_step=1", f"system.signal_name={sig}", "system.clobber_at_step=0"])
    err = capsys.readouterr().err
    print(err)
    assert info.value.code == 130 and "Traceback" not in err
    assert {s: signal.getsignal(s) for s in before} == before, "fit() must restore the previous handlers"
    trial = next(os.path.join(tmp_path, "runs", "cut", d) for d in os.listdir(tmp_path / "runs" / "cut"))
    ckpt = os.path.join(trial, "ckpts", "step000002.ckpt")
    assert os.path.isfile(ckpt) and os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt"))
    command = f"python launch.py --config {os.path.join(trial, 'configs', 'parsed.yaml')} --train resume={ckpt}"
    assert f"interrupted ({sig}) after step 2" in err and command in [ln.strip() for ln in err.splitlines()]
    assert not [f for f in os.listdir(os.path.join(trial, "ckpts")) if f.startswith(".tmp_")]
    # the printed command continues the run exactly as the uninterrupted one
    resumed = launch.main(shlex.split(command)[2:])
    assert resumed.global_step == 4
    a, _ = full.state()
    b, _ = resumed.state()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) == 0.0


# ----------------------------------------------------------------------------- text-embedding cache, long prompts


def _processor_cfg(tiny, tok, cache, prompt="a red cube", **kw):
    return {"prompt": prompt, "ckpt_path": tiny["ckpt"], "config_path": tiny["config"], "tokenizer_path": str(tok),
            "cache_dir": str(cache), **kw}


def test_cache_key_includes_the_tokenizer(tmp_path, tiny):
    from neutral.lift3d.prompt_processor import PromptError
    from mindspore_impl.lift3d.prompt_processors.prompt_processor import PromptProcessor
    tok = tmp_path / "tok"
    shutil.copytree(tiny["tokenizer"], tok)
    cache = tmp_path / "cache"
    first = PromptProcessor(_processor_cfg(tiny, tok, cache))
    first()
    assert first.encoder_calls == 2
    again = PromptProcessor(_processor_cfg(tiny, tok, cache))
    assert again.missing_texts() == []  # same files: a hit
    # other tokenizer files (same names, other content): every text misses
    vocab = json.loads((tok / "vocab.json").read_text())
    (tok / "vocab.json").write_text(json.dumps(vocab, indent=2))
    changed = PromptProcessor(_processor_cfg(tiny, tok, cache))
    assert changed.model_identity != again.model_identity and len(changed.missing_texts()) == 2
    # a missing tokenizer is an error even though the prompt is cached
    shutil.rmtree(tok)
    with pytest.raises(PromptError, match="tokenizer files not found"):
        PromptProcessor(_processor_cfg(tiny, tok, cache))
    tok.mkdir()
    (tok / "vocab.json").write_text("{}")
    with pytest.raises(PromptError, match="merges.txt"):
        PromptProcessor(_processor_cfg(tiny, tok, cache))


def test_long_prompt_warns_once_naming_the_cut_words(capsys, tmp_path, tiny):
    from mindspore_impl.lift3d.prompt_processors.prompt_processor import PromptProcessor
    from neutral.mvdream.tokenizer import load_tokenizer
    prompt = "a red cube " + "on a table " * 25 + "with zebra stripes"  # tiny vocabulary: many tokens per word
    cfg = _processor_cfg(tiny, tiny["tokenizer"], tmp_path / "cache", prompt=prompt, view_dependent_prompting=True)
    cfg["negative_prompt"] = "blurry"  # the default one is cut too with the tiny vocabulary (warned once per process)
    capsys.readouterr()
    proc = PromptProcessor(cfg)
    proc()
    PromptProcessor(cfg)()  # a second run in the same process: cached, and no second warning
    load_tokenizer(tiny["tokenizer"])([prompt])
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    print(warnings)
    assert len(warnings) == 1, err
    assert "longer than the text encoder's 77" in warnings[0] and "zebra stripes" in warnings[0]
    dropped = proc.tokenizer.truncation(prompt)
    assert prompt.endswith(dropped) and not prompt.startswith(dropped)
    assert proc.tokenizer.truncation("a red cube") is None
