#!/usr/bin/env python
"""threestudio-style entry point.

    python launch.py --config configs/mvdream-sd21.yaml --train system.prompt_processor.prompt="a red cube"
    python launch.py --config outputs/<name>/<trial>/configs/parsed.yaml --test resume=outputs/.../ckpts/last.ckpt

--train trains, then renders the test orbit (video) and exports; --validate / --test / --export load
resume=PATH and do that one thing. Each run writes a new trial folder
<exp_root_dir>/<name>/<tag>@<YYYYMMDD-HHMMSS>/ (see mindspore_impl/core/trial.py).
Config errors (missing file, bad override, unknown key, unknown module type, out-of-range or non-finite
values, unavailable --device, unusable exp_root_dir, missing checkpoint, bad resume=PATH) are reported
before any model is built or any folder is written; a resume checkpoint that does not fit the model is
found before the trial folder is created. Every such error is a UserError (neutral/errors.py):
one line `error: <what>; <what to do>` on stderr and exit code 2.
Ctrl-C or SIGTERM during --train finishes the current step, writes a checkpoint, prints the command that
resumes the run and exits 130.

Many prompts: `--train --prompts FILE` trains one run per prompt of FILE (UTF-8, one prompt per line; blank
lines and lines starting with # are skipped), each with system.prompt_processor.prompt set to it and its own trial
folder (the config's tag, made distinct per prompt when it does not depend on the prompt), all with the same seed
as a run of that prompt alone. Without msrun one process trains them one after another.

Many processes (msrun, mindspore_impl/core/distributed.py; README "Many cards (msrun)"):
- with --prompts, rank r of n trains prompts r, r + n, r + 2n, ... of the list, each into its own trial folder;
- without, the system trains in data parallel (only systems that declare `data_parallel`, i.e. multiview diffusion
  training): data.batch_size is the global batch, each rank trains on its 1/n share, gradients and loss are
  averaged across ranks; rank 0 alone writes the trial folder (metrics, checkpoints, images, export), and
  resume=PATH (rank 0's checkpoint) restarts every rank.
Every check on user input (the prompt file, the batch split) runs before the ranks connect, so a mistake stops
all ranks at once with the same one-line error.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig, OmegaConf

# MindSpore's own log (a graph compiled for a new compaction bucket, graph-pass notes) is for developers; a user
# reads this project's lines. Set before MindSpore is imported; GLOG_v=2 (warnings) or 1 (info) brings it back.
os.environ.setdefault("GLOG_v", "3")

from neutral.errors import UserError, run_cli

DEVICES = ("CPU", "Ascend", "GPU")
MODES = ("pynative", "graph")
_OVERRIDE_RE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


class LaunchError(UserError, ValueError):
    """A command-line or config problem found before any work starts."""


PROMPT_KEY = "system.prompt_processor.prompt"


def read_prompt_list(path: str) -> list[str]:
    """The prompts of a --prompts file: UTF-8 text, one prompt per line, surrounding whitespace stripped; blank
    lines and lines whose first non-blank character is # are skipped. LaunchError (naming the file and line)
    for a missing or unreadable file, bad UTF-8, an OmegaConf interpolation `${`, a repeated prompt (its
    trial folder would clash) or no prompt at all."""
    where = f"--prompts {path}"
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise LaunchError(f"{where}: {what}; give a text file with one prompt per line")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise LaunchError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    prompts, first_line = [], {}
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            raise LaunchError(f"{where}: line {number} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                              "save the file as UTF-8") from None
        if not text or text.startswith("#"):
            continue
        if "${" in text:
            raise LaunchError(f"{where}: line {number} contains '${{', which the config would read as an "
                              "interpolation; remove it")
        if text in first_line:
            raise LaunchError(f"{where}: line {number} repeats the prompt of line {first_line[text]} "
                              f"({text!r}); list each prompt once")
        first_line[text] = number
        prompts.append(text)
    if not prompts:
        raise LaunchError(f"{where} holds no prompt (blank lines and # comments only); "
                          "write one prompt per line")
    return prompts


@dataclass
class ExperimentConfig:
    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    exp_root_dir: str = "outputs"
    resume: Optional[str] = None
    mode: Optional[str] = None  # pynative | graph; --mode overrides it; neither: pynative
    data_type: str = ""
    data: dict = field(default_factory=dict)
    system_type: str = ""
    system: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)


def _register_resolvers() -> None:
    """The interpolation helpers threestudio configs use, e.g. tag: "${rmspace:${system.prompt_processor.prompt},_}"."""
    resolvers = {
        "rmspace": lambda s, sub: str(s).replace(" ", sub),
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "idiv": lambda a, b: a // b,
        "basename": lambda p: os.path.basename(p),
    }
    # omegaconf 2.4 renamed register_new_resolver to register_resolver (2.3's register_resolver is the old API)
    new_api = "use_cache" in inspect.signature(OmegaConf.register_resolver).parameters
    register = OmegaConf.register_resolver if new_api else OmegaConf.register_new_resolver
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            register(name, fn)


def _device(value: str) -> str:
    for d in DEVICES:
        if value.lower() == d.lower():
            return d
    raise argparse.ArgumentTypeError(f"must be one of {', '.join(DEVICES)}, got {value!r}")


def _mode(value: str) -> str:
    if value.lower() in MODES:
        return value.lower()
    raise argparse.ArgumentTypeError(f"must be one of {', '.join(MODES)}, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MVDream text-to-3D on MindSpore (threestudio-style launcher)",
                                epilog="Trailing key=value arguments override config entries, "
                                       "e.g. system.prompt_processor.prompt=\"a red cube\" trainer.max_steps=100")
    p.add_argument("--config", required=True, help="YAML config file")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--train", action="store_true", help="train, then render the test video and export")
    group.add_argument("--validate", action="store_true", help="render validation views of resume=PATH")
    group.add_argument("--test", action="store_true", help="render the test orbit video of resume=PATH")
    group.add_argument("--export", action="store_true", help="export the mesh of resume=PATH")
    p.add_argument("--device", type=_device, default="CPU", help="CPU | Ascend | GPU (default CPU)")
    p.add_argument("--mode", type=_mode, default=None,
                   help="pynative | graph (default: the config's `mode`, else pynative)")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    p.add_argument("--prompts", metavar="FILE", default=None,
                   help="with --train: one run (and trial folder) per prompt of FILE, one prompt per line, blank "
                        "lines and # comments skipped; under msrun rank r of n takes every n-th prompt from r")
    return p


def load_config(path: str, overrides: list[str], values: Optional[dict] = None) -> DictConfig:
    """YAML + key=value overrides, checked against ExperimentConfig (unknown top-level keys fail).

    values: {dotted key: value} set after the overrides and before interpolations resolve, taken as they are
    (not parsed as YAML the way a key=value override is): the prompt of a --prompts line."""
    from neutral.config import ConfigError

    if not os.path.isfile(path):
        raise LaunchError(f"config file not found: {path}")
    for item in overrides:
        if not _OVERRIDE_RE.match(item):
            raise LaunchError(f"bad override {item!r}: expected key=value with a dotted key, "
                              f"e.g. system.prompt_processor.prompt=\"a red cube\"")
    _register_resolvers()
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml scanner/parser errors
        raise LaunchError(f"cannot parse config {path}: {exc}") from None
    if not isinstance(file_cfg, DictConfig):
        raise LaunchError(f"config {path} must be a mapping at the top level")
    try:
        cli_cfg = OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:
        raise LaunchError(f"bad override in {overrides}: {exc}") from None
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), file_cfg, cli_cfg)
        for key, value in (values or {}).items():
            OmegaConf.update(cfg, key, value, merge=False)
        OmegaConf.resolve(cfg)
    except Exception as exc:
        allowed = ", ".join(f.name for f in ExperimentConfig.__dataclass_fields__.values())
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"bad config {path}: {msg}. Allowed top-level keys: {allowed}") from None
    return cfg


def _section(cfg: DictConfig, key: str) -> dict:
    return OmegaConf.to_container(cfg[key], resolve=True)


def import_modules() -> None:
    """Import mindspore_impl.lift3d and its subpackages, multiview diffusion training (its system and data
    module) and the transforms.json data module: modules register their types on import."""
    import importlib

    from mindspore_impl.lift3d.systems.base import import_lift3d_modules
    import_lift3d_modules()
    for name in ("mindspore_impl.mvdream.diffusion_system", "mindspore_impl.mvdream.data",
                 "neutral.lift3d.transforms_dataset", "neutral.lift3d.frame_sequence", "neutral.genvs.srn_dataset",
                 "mindspore_impl.genvs.system", "neutral.lift3d.single_image_datamodule",
                 "mindspore_impl.zero123.diffusion_system"):
        importlib.import_module(name)


def check_config(cfg: DictConfig, mode: str):
    """Everything that can be checked without building models; returns (system_cls, data_cls)."""
    from neutral import registry
    from neutral.config import parse_structured
    from mindspore_impl.core.train_state import resolve_resume
    from mindspore_impl.core.trainer import CheckpointConfig, TrainerConfig
    from mindspore_impl.core.trial import check_output_root

    if mode != "train" and not cfg.resume:
        raise LaunchError(f"--{mode} needs resume=PATH to a checkpoint (e.g. outputs/<name>/<trial>/ckpts/last.ckpt)")
    if cfg.resume:
        try:
            resolve_resume(cfg.resume)  # missing, not a checkpoint, incomplete with nothing to fall back to
        except (FileNotFoundError, ValueError) as exc:
            raise LaunchError(str(exc)) from None
    check_output_root(cfg.exp_root_dir)
    parse_structured(TrainerConfig, _section(cfg, "trainer"), "trainer")
    parse_structured(CheckpointConfig, _section(cfg, "checkpoint"), "checkpoint")
    for key in ("system_type", "data_type"):
        if not cfg[key]:
            raise LaunchError(f"config has no {key}")
    import_modules()
    classes = []
    for key in ("system", "data"):
        try:
            cls = registry.find(cfg[key + "_type"])
        except KeyError as exc:
            raise LaunchError(f"{key}_type: {exc.args[0]}") from None
        if hasattr(cls, "Config"):
            parse_structured(cls.Config, _section(cfg, key), key)
        classes.append(cls)
    return classes


def resume_command(trial_root: str, checkpoint: str, device: str = "CPU") -> str:
    """The command that continues an interrupted --train run from `checkpoint`."""
    import shlex
    parts = ["python", "launch.py", "--config", os.path.join(trial_root, "configs", "parsed.yaml"), "--train"]
    if device != "CPU":
        parts += ["--device", device]
    return " ".join(shlex.quote(p) for p in parts + [f"resume={checkpoint}"])


def prompt_configs(args, overrides: list[str], prompts: list[str]) -> list[DictConfig]:
    """One config per prompt of a --prompts list (checked before any work): the prompt set as
    system.prompt_processor.prompt, and tags made distinct (`<tag>-<i>`, i the prompt's place in the list from 1)
    when the config's tag does not already tell the prompts apart (each run gets its own trial folder, whichever
    rank writes it)."""
    if any(item.split("=", 1)[0] == PROMPT_KEY for item in overrides):
        raise LaunchError(f"--prompts sets {PROMPT_KEY} for each run; remove the {PROMPT_KEY}= override")
    first = load_config(args.config, overrides)
    if not isinstance(OmegaConf.select(first, "system.prompt_processor"), DictConfig):
        raise LaunchError(f"--prompts: config {args.config} has no system.prompt_processor to give the prompts "
                          f"to (system_type {first.system_type or '(none)'} does not train from a prompt)")
    if first.resume:
        raise LaunchError("--prompts trains every prompt from the start; remove resume= (resume one prompt's run "
                          "with launch.py --config <its trial>/configs/parsed.yaml --train resume=...)")
    cfgs = [load_config(args.config, overrides, {PROMPT_KEY: p}) for p in prompts]
    from mindspore_impl.core.trial import safe_component
    if len({safe_component(c.tag) for c in cfgs}) < len(cfgs):
        width = len(str(len(cfgs)))
        for i, c in enumerate(cfgs, start=1):
            c.tag = f"{c.tag}-{i:0{width}d}"
    return cfgs


def _settle(cfg: DictConfig, args) -> str:
    """Apply --seed and --mode to cfg (parsed.yaml re-runs the same way); returns the context mode."""
    if args.seed is not None:
        cfg.seed = args.seed
    try:
        context_mode = args.mode or (_mode(cfg.mode) if cfg.mode else "pynative")
    except argparse.ArgumentTypeError as exc:
        raise LaunchError(f"config key mode: {exc}") from None
    cfg.mode = context_mode
    return context_mode


def check_msrun(cfg: DictConfig, mode: str, system_cls, data_cls, world_size: int, prompts: bool) -> None:
    """Under msrun (world_size > 1), before the ranks connect: is there a way to share the work?"""
    if world_size == 1 or prompts:
        return
    if mode != "train":
        raise LaunchError(f"--{mode} under msrun: run it as one process (python launch.py --{mode} ...)")
    if not getattr(system_cls, "data_parallel", False) or not hasattr(data_cls, "check_world_size"):
        raise LaunchError(f"msrun started {world_size} ranks, but system_type {cfg.system_type} with data_type "
                          f"{cfg.data_type} does not train in data parallel; give a prompt list with --prompts FILE "
                          "(each rank trains every n-th prompt) or run one process")
    data_cls.check_world_size(_section(cfg, "data"), world_size)


def run_one(cfg: DictConfig, mode: str, args, system_cls, data_cls, writer: bool = True):
    """Build, restore and run one config; returns its Trainer. writer=False (data-parallel ranks other than 0):
    no trial folder and no file written."""
    import numpy as np
    import mindspore as ms

    from mindspore_impl.core.trainer import Trainer, TrainingInterrupted
    from mindspore_impl.core.trial import Trial

    seed = int(cfg.seed)
    ms.set_seed(seed)  # each run starts from the seed alone, whatever ran before it in this process
    np.random.seed(seed)
    random.seed(seed)
    say = print if writer else (lambda *_, **__: None)
    phases = Phases(say)
    with phases("building", "building the system (models, text embeddings)"):
        dm = data_cls(_section(cfg, "data"), seed=seed)
        system = system_cls(_section(cfg, "system"), seed=seed, resumed=cfg.resume is not None)
        if mode == "train":
            system.configure_optimizers()  # a bad optimizer.params path fails here, before the trial folder
        trainer = Trainer(system, dm, None, _section(cfg, "trainer"), _section(cfg, "checkpoint"), writer=writer)
        if cfg.resume:
            trainer.restore(cfg.resume)  # a checkpoint that does not fit the model fails here, before the trial folder
    if writer:
        trial = Trial.create(cfg.exp_root_dir, cfg.name, cfg.tag, cfg.use_timestamp)
        trial.save_config(cfg)
        trainer.attach(trial)
        print(f"trial folder: {trial.root}")
    outputs = []
    if mode == "train":
        left = trainer.cfg.max_steps - trainer.global_step
        with phases("training", f"training {left} steps (the first step compiles the graph"
                                f"{' in GRAPH mode' if ms.get_context('mode') == ms.GRAPH_MODE else ''})"):
            try:
                trainer.fit()
            except TrainingInterrupted as exc:
                if trainer.trial is not None:
                    exc.command = resume_command(trainer.trial.root, exc.checkpoint, args.device)
                raise
    if mode in ("train", "test"):
        with phases("test orbit", f"rendering the test orbit ({dm.n_test} views)"):
            outputs += trainer.test()
    if mode in ("train", "export"):
        with phases("export", "exporting"):
            outputs += trainer.export()
    if mode == "validate":
        outputs += trainer.validate()
    if writer:
        phases.summary(trainer.trial.root, outputs + ([trainer.last_preview] if trainer.last_preview else []))
    return trainer


class Phases:
    """One line when a phase starts and one when it ends (with its time); a summary of the run at the end."""

    KINDS = ((".mp4", "video"), (".gif", "video (gif)"), (".obj", "mesh"), (".glb", "mesh (glb)"),
             ("-preview.png", "preview"), (".ckpt", "model"))

    def __init__(self, say=print):
        self.say, self.times, self.start = say, {}, time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, key: str, text: str):
        self.say(f"{text} ...", flush=True)
        t0 = time.perf_counter()
        yield
        self.times[key] = time.perf_counter() - t0
        self.say(f"{key}: done in {self.times[key]:.1f} s", flush=True)

    def summary(self, trial_root: str, outputs: list) -> None:
        total = time.perf_counter() - self.start
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in self.times.items())
        lines = [f"done in {int(total // 60)} min {total % 60:.0f} s ({parts})", f"  trial folder: {trial_root}"]
        seen = set()
        for path in outputs:
            kind = next((name for ending, name in self.KINDS if path.endswith(ending)), None)
            if kind is not None and path not in seen:
                seen.add(path)
                lines.append(f"  {kind + ':':13s} {path}")
        self.say("\n".join(lines), flush=True)


def main(argv: Optional[list[str]] = None):
    """Run the launcher; returns the Trainer (tests inspect it), or with --prompts the trial folders this rank
    wrote, one per prompt. Raises UserError subclasses on bad input (LaunchError, ConfigError,
    CheckpointError, ...) and TrainingInterrupted after a clean Ctrl-C / SIGTERM stop."""
    args, overrides = build_parser().parse_known_args(argv)
    mode = next(m for m in ("train", "validate", "test", "export") if getattr(args, m))
    prompts = None
    if args.prompts is not None:
        if mode != "train":
            raise LaunchError(f"--prompts works with --train, not --{mode}")
        prompts = read_prompt_list(args.prompts)
        cfgs = prompt_configs(args, overrides, prompts)
    else:
        cfgs = [load_config(args.config, overrides)]
    context_modes = {_settle(cfg, args) for cfg in cfgs}
    context_mode = context_modes.pop()
    from mindspore_impl.core import device, distributed

    device.check_device(args.device)
    system_cls, data_cls = check_config(cfgs[0], mode)
    world_size = distributed.launched_world_size()
    check_msrun(cfgs[0], mode, system_cls, data_cls, world_size, prompts is not None)

    device.setup(args.device, context_mode, int(cfgs[0].seed))
    topo = distributed.init(data_parallel=prompts is None)  # msrun: join the ranks (the scheduler exits here)
    if prompts is None:
        return run_one(cfgs[0], mode, args, system_cls, data_cls, writer=topo.is_main or not topo.data_parallel)
    mine = list(range(topo.rank, len(prompts), topo.world_size))
    if topo.world_size > 1:
        print(f"rank {topo.rank} of {topo.world_size}: prompts {[i + 1 for i in mine]} of {len(prompts)}")
    roots = []
    for i in mine:
        print(f"prompt {i + 1}/{len(prompts)}: {prompts[i]}")
        trainer = run_one(cfgs[i], mode, args, system_cls, data_cls)
        roots.append(trainer.trial.root)
        del trainer
        gc.collect()  # free this prompt's models before the next prompt builds its own
        device.release_graph_caches()
    return roots


def _cli(argv: Optional[list[str]] = None) -> None:
    """User errors: one line `error: ...` on stderr, exit 2; a Ctrl-C'd training: the resume command, exit 130;
    bugs keep their traceback."""
    run_cli(main, *([] if argv is None else [argv]))


if __name__ == "__main__":
    _cli()
