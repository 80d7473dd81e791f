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
"""
from __future__ import annotations

import argparse
import inspect
import os
import random
import re
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from neutral.errors import UserError, run_cli

DEVICES = ("CPU", "Ascend", "GPU")
MODES = ("pynative", "graph")
_OVERRIDE_RE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


class LaunchError(UserError, ValueError):
    """A command-line or config problem found before any work starts."""


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
    return p


def load_config(path: str, overrides: list[str]) -> DictConfig:
    """YAML + key=value overrides, checked against ExperimentConfig (unknown top-level keys fail)."""
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
        OmegaConf.resolve(cfg)
    except Exception as exc:
        allowed = ", ".join(f.name for f in ExperimentConfig.__dataclass_fields__.values())
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"bad config {path}: {msg}. Allowed top-level keys: {allowed}") from None
    return cfg


def _section(cfg: DictConfig, key: str) -> dict:
    return OmegaConf.to_container(cfg[key], resolve=True)


def import_modules() -> None:
    """Import mindspore_impl.lift3d and its subpackages, and multiview diffusion training (its system and data
    module): modules register their types on import."""
    import importlib

    from mindspore_impl.lift3d.systems.base import import_lift3d_modules
    import_lift3d_modules()
    for name in ("mindspore_impl.mvdream.diffusion_system", "mindspore_impl.mvdream.data"):
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


def main(argv: Optional[list[str]] = None):
    """Run the launcher; returns the Trainer (tests inspect it). Raises UserError subclasses on bad input
    (LaunchError, ConfigError, CheckpointError, ...) and TrainingInterrupted after a clean Ctrl-C / SIGTERM stop."""
    args, overrides = build_parser().parse_known_args(argv)
    mode = next(m for m in ("train", "validate", "test", "export") if getattr(args, m))
    cfg = load_config(args.config, overrides)
    if args.seed is not None:
        cfg.seed = args.seed
    try:
        context_mode = args.mode or (_mode(cfg.mode) if cfg.mode else "pynative")
    except argparse.ArgumentTypeError as exc:
        raise LaunchError(f"config key mode: {exc}") from None
    cfg.mode = context_mode  # parsed.yaml re-runs in the same mode
    from mindspore_impl.core import device

    device.check_device(args.device)
    system_cls, data_cls = check_config(cfg, mode)

    import numpy as np

    from mindspore_impl.core.trainer import Trainer, TrainingInterrupted
    from mindspore_impl.core.trial import Trial

    seed = int(cfg.seed)
    device.setup(args.device, context_mode, seed)
    np.random.seed(seed)
    random.seed(seed)
    dm = data_cls(_section(cfg, "data"), seed=seed)
    system = system_cls(_section(cfg, "system"), seed=seed, resumed=cfg.resume is not None)
    if mode == "train":
        system.configure_optimizers()  # a bad optimizer.params path fails here, before the trial folder
    trainer = Trainer(system, dm, None, _section(cfg, "trainer"), _section(cfg, "checkpoint"))
    if cfg.resume:
        trainer.restore(cfg.resume)  # a checkpoint that does not fit the model fails here, before the trial folder
    trial = Trial.create(cfg.exp_root_dir, cfg.name, cfg.tag, cfg.use_timestamp)
    trial.save_config(cfg)
    trainer.attach(trial)
    print(f"trial folder: {trial.root}")
    if mode == "train":
        try:
            trainer.fit()
        except TrainingInterrupted as exc:
            exc.command = resume_command(trial.root, exc.checkpoint, args.device)
            raise
        outputs = trainer.test() + trainer.export()
    else:
        outputs = {"validate": trainer.validate, "test": trainer.test, "export": trainer.export}[mode]()
    for path in outputs:
        print(f"wrote {path}")
    return trainer


def _cli(argv: Optional[list[str]] = None) -> None:
    """User errors: one line `error: ...` on stderr, exit 2; a Ctrl-C'd training: the resume command, exit 130;
    bugs keep their traceback."""
    run_cli(main, *([] if argv is None else [argv]))


if __name__ == "__main__":
    _cli()
