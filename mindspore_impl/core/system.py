"""The system interface the trainer drives (threestudio's BaseSystem, without Lightning).

A system is a plain Python object that owns MindSpore cells as attributes. The trainer only calls the methods
below, so it never needs to know what a system contains:

    system = SystemClass(cfg.system, seed=seed, resumed=False)   # parses cfg, then configure()
    system.configure_optimizers()                                 # once, before training
    system.set_step(global_step); system.on_train_batch_start(global_step)
    metrics = system.training_step(batch, global_step)            # forward + backward + update
    images = system.validation_step(batch, index)                 # {name: (H, W, C) float [0, 1]}
    images = system.test_step(batch, index)
    files = system.export(out_dir)
    arrays, meta = system.state_dict(); system.load_state_dict(arrays, meta)

Module steps: every module attribute with an `update_step(global_step, rng)` method gets it before each
training step, with the system's numpy Generator (modules that draw random numbers take them from it), and
after a checkpoint is loaded with rng=None (re-derive step-dependent settings only: draw nothing and change
no learned state, e.g. an occupancy grid, which comes from the checkpoint).

Saved state: every parameter (trainable or not, e.g. an occupancy grid kept as a Parameter) of the
cells returned by `saved_modules()` (all Cell attributes except `unsaved_modules`, which by default
exclude the frozen guidance and prompt processor), the optimizer moments and step, `self.rng`
(the numpy Generator every per-step random draw of a system must come from), and whatever
`extra_state()` adds. Parameters are renamed `<module>.<path>` once at construction so names are
unique across modules (graph mode and the optimizer require it) and readable in checkpoints.
Systems: lift3d/systems/base.py (3D systems), core/diffusion_training.py (the diffusion-training systems' base),
genvs/system.py.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional

import mindspore as ms
import numpy as np
from mindspore import nn

from mindspore_impl.core import distributed
from mindspore_impl.core.checkpoint import CheckpointError, check_state_dict
from mindspore_impl.core.optim import TorchAdam, build_optimizer, unique_params
from mindspore_impl.core.parameters import write_parameter
from mindspore_impl.core.train_step import make_train_step
from neutral.config import ConfigError, parse_structured, to_container
from neutral.schedule import C as schedule_value
from neutral.schedule import check_schedules

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optimizer."
EXTRA_PREFIX = "extra."


@dataclass
class BaseSystemConfig:
    # threestudio optimizer spec: {name: AdamW, args: {betas, eps, lr, weight_decay},
    #                              params: {geometry.encoding: {lr: 0.01}, background: {lr: 0.001}}}
    optimizer: dict = field(default_factory=lambda: {"name": "AdamW", "args": {}})
    # lr schedulers are not supported: None only (kept so threestudio configs parse)
    scheduler: Optional[dict] = None
    # loss weights by name, each a scheduled scalar (see core/schedule.py)
    loss: dict = field(default_factory=dict)
    # logger settings of threestudio configs; ignored (metrics go to the trial folder)
    loggers: dict = field(default_factory=dict)
    # clip the global gradient norm of the trained parameters (None: off)
    grad_clip: Optional[float] = None
    # static loss scale for half-precision backward (gradients are divided by it before the update)
    loss_scale: float = 1.0


def get_by_path(root: Any, dotted: str) -> Any:
    """`geometry.encoding` -> root.geometry.encoding (AttributeError names the missing piece)."""
    obj = root
    for i, part in enumerate(dotted.split(".")):
        if not hasattr(obj, part):
            where = ".".join(dotted.split(".")[:i]) or type(root).__name__
            raise ConfigError(f"'{dotted}': {where} has no attribute '{part}'")
        obj = getattr(obj, part)
    return obj


def _flatten_groups(spec: dict, prefix: str = "") -> dict[str, dict]:
    """{geometry.encoding: {lr}} and its nested form {geometry: {encoding: {lr}}} (what a CLI override
    system.optimizer.params.geometry.encoding.lr=0.02 produces) -> {"geometry.encoding": {lr}}, merged."""
    out: dict[str, dict] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        value = value or {}
        if not isinstance(value, dict):
            raise ConfigError(f"optimizer.params.{path} must be a mapping like {{lr: 0.01}}, got {value!r}")
        leaf = {k: v for k, v in value.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in value.items() if isinstance(v, dict)}
        if leaf or not nested:
            out.setdefault(path, {}).update(leaf)
        for sub_path, sub_args in _flatten_groups(nested, path + ".").items():
            out.setdefault(sub_path, {}).update(sub_args)
    return out


class BaseSystem(ABC):
    Config = BaseSystemConfig
    # attribute names whose cells are never saved (frozen models, text embeddings)
    unsaved_modules: tuple[str, ...] = ("guidance", "prompt_processor")
    # whether msrun ranks can train one model of this system in data parallel (core/distributed.py)
    data_parallel: bool = False

    def __init__(self, cfg: Any = None, seed: int = 0, resumed: bool = False) -> None:
        self.cfg = parse_structured(self.Config, cfg, where=type(self).__name__)
        if self.cfg.scheduler is not None:
            raise ConfigError("system.scheduler: learning-rate schedulers are not supported; remove the key")
        if not self.cfg.loss_scale > 0:
            raise ConfigError(f"system.loss_scale must be > 0, got {self.cfg.loss_scale}")
        check_schedules(list((to_container(self.cfg.loss) or {}).values()))
        self.seed = int(seed)
        self.resumed = resumed
        self.rng = np.random.default_rng(self.seed)
        self.global_step = 0
        self.optimizer: Optional[TorchAdam] = None
        self.configure()
        self._name_parameters()

    # ----- to implement in a system

    @abstractmethod
    def configure(self) -> None:
        """Build the cells (as attributes) from self.cfg."""

    @abstractmethod
    def training_step(self, batch: dict, global_step: int) -> dict[str, float]:
        """One optimisation step (forward, backward, optimizer update); returns float metrics incl. 'loss'."""

    @abstractmethod
    def validation_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        """Images to show for one validation view: name -> (H, W, 3 or 1) float in [0, 1]."""

    def validation_metrics(self) -> dict[str, float]:
        """Numbers of the validation just run (for example held-out PSNR); the trainer logs them."""
        return {}

    @abstractmethod
    def test_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        """One frame of the test orbit: name -> (H, W, 3 or 1) float in [0, 1] (joined side by side)."""

    def export(self, out_dir: str) -> list[str]:
        """Write exports (meshes) under out_dir; returns the paths written."""
        return []

    # ----- hooks with defaults

    def step_modules(self) -> list:
        """Attributes with an update_step(global_step, rng) method, in definition order."""
        return [v for v in vars(self).values() if callable(getattr(v, "update_step", None))]

    def on_train_batch_start(self, global_step: int) -> None:
        """threestudio's `update_step` for every module, with the system's random numbers."""
        for module in self.step_modules():
            module.update_step(global_step, self.rng)

    def on_load_state(self, global_step: int) -> None:
        """After a checkpoint is loaded: modules re-derive step-dependent settings (rng=None: no draw, and no
        change of learned state such as the occupancy grid, or the resumed run would diverge)."""
        for module in self.step_modules():
            module.update_step(global_step, None)

    def extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Additional state outside parameters: (arrays, JSON-able meta)."""
        return {}, {}

    def load_extra_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if arrays or meta:
            raise CheckpointError(f"{type(self).__name__} got extra state it does not know: "
                                  f"arrays {sorted(arrays)}, meta {sorted(meta)}")

    # ----- provided

    def set_step(self, global_step: int) -> None:
        self.global_step = int(global_step)

    def C(self, value: Any) -> float:
        """A scheduled scalar at the current global step."""
        return schedule_value(value, self.global_step)

    def saved_modules(self) -> dict[str, nn.Cell]:
        """Cells whose parameters go into checkpoints, by attribute name, in definition order."""
        return {k: v for k, v in vars(self).items()
                if isinstance(v, nn.Cell) and not isinstance(v, TorchAdam) and k not in self.unsaved_modules}

    def _name_parameters(self) -> None:
        seen: set[int] = set()
        for mod_name, cell in self.saved_modules().items():
            for path, p in cell.parameters_and_names():
                if id(p) not in seen:
                    seen.add(id(p))
                    p.name = f"{mod_name}.{path}"

    def model_parameters(self) -> dict[str, ms.Parameter]:
        out: dict[str, ms.Parameter] = {}
        for cell in self.saved_modules().values():
            for p in cell.get_parameters():
                out.setdefault(p.name, p)
        return out

    def parameter_groups(self) -> list[dict]:
        """Optimizer groups from cfg.optimizer.params (dotted paths); all trainable params if absent."""
        spec = to_container(self.cfg.optimizer) or {}
        groups_spec = spec.get("params")
        if not groups_spec:
            params = [p for p in self.model_parameters().values() if p.requires_grad]
            return [{"name": "all", "params": params}]
        groups, owner = [], {}
        for path, args in _flatten_groups(groups_spec).items():
            target = get_by_path(self, path)
            if isinstance(target, nn.Cell):
                params = unique_params(target.trainable_params())
            elif isinstance(target, ms.Parameter):
                params = [target]
            else:
                raise ConfigError(f"optimizer.params.{path} is a {type(target).__name__}, not a Cell or Parameter")
            for p in params:
                if id(p) in owner:
                    raise ConfigError(f"parameter {p.name} is in optimizer groups '{owner[id(p)]}' and '{path}'; "
                                      "list each parameter in one group")
                owner[id(p)] = path
            groups.append({"name": path, "params": params, **(args or {})})
        return groups

    def configure_optimizers(self) -> TorchAdam:
        spec = to_container(self.cfg.optimizer) or {}
        unknown = sorted(set(spec) - {"name", "args", "params"})
        if unknown:
            raise ConfigError(f"system.optimizer: unknown keys {unknown} (allowed: name, args, params)")
        self.optimizer = build_optimizer(spec.get("name", "AdamW"), self.parameter_groups(), spec.get("args") or {})
        return self.optimizer

    def make_train_step(self, forward_fn, jit: Optional[bool] = None, after_update=None):
        """core/train_step.py's step for forward_fn (-> (loss, aux)) with this system's optimizer, grad_clip and
        loss_scale, and under msrun in data parallel the mean of gradients and loss across ranks:
        step(*inputs) -> (loss, aux)."""
        if self.optimizer is None:
            self.configure_optimizers()
        reducer = distributed.grad_reducer(self.optimizer.parameters) if self.data_parallel else None
        return make_train_step(forward_fn, self.optimizer, grad_clip=self.cfg.grad_clip,
                               loss_scale=self.cfg.loss_scale, jit=jit, after_update=after_update,
                               grad_reducer=reducer)

    def last_update_skipped(self) -> bool:
        """Whether the optimizer skipped the last update (a non-finite loss or gradient; core/optim.py)."""
        return self.optimizer is not None and int(self.optimizer.update_skipped.asnumpy()) == 1

    # ----- resume state

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, meta): arrays keyed model.* / optimizer.* / extra.*, meta JSON-able."""
        arrays = {MODEL_PREFIX + k: p.asnumpy() for k, p in self.model_parameters().items()}
        if self.optimizer is not None:
            arrays.update({OPTIM_PREFIX + k: v for k, v in self.optimizer.state_arrays().items()})
        extra_arrays, extra_meta = self.extra_state()
        arrays.update({EXTRA_PREFIX + k: np.asarray(v) for k, v in extra_arrays.items()})
        meta = {"rng": self.rng.bit_generator.state, "global_step": self.global_step,
                "has_optimizer": self.optimizer is not None, "extra": extra_meta}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], strict: bool = True) -> None:
        """Restore what state_dict() returned. Strict: exact key and shape match, nothing loaded otherwise."""
        model = {k[len(MODEL_PREFIX):]: v for k, v in arrays.items() if k.startswith(MODEL_PREFIX)}
        optim = {k[len(OPTIM_PREFIX):]: v for k, v in arrays.items() if k.startswith(OPTIM_PREFIX)}
        extra = {k[len(EXTRA_PREFIX):]: v for k, v in arrays.items() if k.startswith(EXTRA_PREFIX)}
        params = self.model_parameters()
        if strict:
            check_state_dict({k: tuple(p.shape) for k, p in params.items()}, model, "checkpoint (model)")
        if optim and self.optimizer is None:
            self.configure_optimizers()
        opt_params = self.optimizer.state_parameters() if self.optimizer is not None else {}
        if strict and opt_params:
            check_state_dict({k: tuple(p.shape) for k, p in opt_params.items()}, optim, "checkpoint (optimizer)")
        for table, values in ((params, model), (opt_params, optim)):
            for k, p in table.items():
                if k in values:
                    write_parameter(p, values[k])
        self.rng.bit_generator.state = meta["rng"]
        self.global_step = int(meta.get("global_step", 0))
        self.load_extra_state(extra, meta.get("extra", {}))
        self.on_load_state(self.global_step)
