"""The training loop: steps, validation images, checkpoints, metric logs, test video, export.

What the trainer needs from its two collaborators (nothing else):

system (lift3d/systems/base.py BaseSystem): configure_optimizers(), set_step(step),
    on_train_batch_start(step), training_step(batch, step) -> {"loss": float, ...},
    validation_step(batch, i) / test_step(batch, i) -> {name: (H, W, C) image},
    export(out_dir) -> [paths], state_dict() -> (arrays, meta), load_state_dict(arrays, meta).
datamodule (lift3d/data): sample(step) -> training batch, val_batch(i), test_batch(i), n_val, n_test,
    and optionally get_state() / set_state(state) (JSON-able) for its random stream.

Step counting follows Lightning/threestudio: `global_step` is the number of finished optimizer steps.
Step s trains with global_step = s; afterwards global_step = s + 1 and, when it is a multiple of the
interval, validation runs (images `it{global_step}-{i}.png`) and then a checkpoint `step{global_step}` is
written (after validation, so a resumed run continues from exactly the state the uninterrupted run had).

Checkpoints (layout and crash safety: core/train_state.py): a save writes stepNNNNNN.ckpt/.json, then
publishes `last` from it, then prunes to the newest `save_top_k` step checkpoints (-1 all, 0 none: `last`
only); the final save of a run whose last step is not a save step is staged as a step checkpoint,
published as `last`, and the staging files removed. A save whose arrays hold NaN/inf is refused
(NonFiniteCheckpointError naming the array and the last good checkpoint) and a disk error stops the run
with CheckpointWriteError; in both cases every earlier checkpoint is intact. A trainer removes the
temporaries of killed writes from its checkpoint folder when it starts.

Ctrl-C (SIGINT) or SIGTERM during fit() does not kill the run mid-write: the handler only sets a flag, the
current step finishes, a checkpoint is written and TrainingInterrupted is raised (launch.py prints the resume
command and exits 130). A second signal aborts at once (checkpoint writes are atomic, so that is safe too).
The previous signal handlers are restored when fit() returns.

writer=False (the ranks other than 0 of a data-parallel run under msrun, launch.py): the trainer steps exactly like
rank 0 but writes nothing and renders nothing: no trial folder, metrics, checkpoints, validation images, test video
or export (rank 0 writes them all; every rank resumes from rank 0's checkpoint).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from neutral.config import parse_structured
from neutral.errors import Interrupted, UserError
from mindspore_impl.core.checkpoint import CheckpointError, CheckpointWriteError, NonFiniteCheckpointError
from mindspore_impl.core.train_state import (LAST, capture_global_rng, clean_stale_files, copy_training_state,
                                             open_training_state, prune_step_checkpoints, remove_checkpoint,
                                             resolve_resume, restore_global_rng, save_training_state, step_name)
from mindspore_impl.core.trial import Trial


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingDiverged(UserError):
    """Too many consecutive steps had a non-finite loss or gradient (their updates were skipped)."""


class TrainingInterrupted(Interrupted):
    """fit() stopped on SIGINT / SIGTERM after finishing a step and writing `checkpoint`.

    launch.py sets `command` to the resume command line; the message names the step, the checkpoint and it."""

    def __init__(self, step: int, checkpoint: str, signal_name: str = "SIGINT", command: Optional[str] = None):
        super().__init__(step, checkpoint, signal_name)
        self.step, self.checkpoint, self.signal_name, self.command = step, checkpoint, signal_name, command

    def __str__(self) -> str:
        how = f"resume with:\n  {self.command}" if self.command else f"resume with resume={self.checkpoint}"
        return (f"interrupted ({self.signal_name}) after step {self.step}; checkpoint written: {self.checkpoint}; "
                + how)


def _at_least(lo: int, hint: str = "") -> dict:
    return {"min": lo, **({"hint": hint} if hint else {})}


@dataclass
class TrainerConfig:
    max_steps: int = field(default=10000, metadata=_at_least(0))
    val_check_interval: int = field(default=200, metadata=_at_least(0, "0 never validates during training"))
    log_every_n_steps: int = field(default=1, metadata=_at_least(0))  # rows in metrics.csv / metrics.jsonl
    num_sanity_val_steps: int = field(default=0, metadata=_at_least(0))  # validation views rendered before step 0
    enable_progress_bar: bool = True
    # kept so threestudio configs parse; mixed precision is a system setting here (system.amp_level)
    precision: Any = 32
    test_video_fps: int = field(default=30, metadata=_at_least(1))
    test_video_formats: list = field(default_factory=lambda: ["mp4", "gif"])
    # a step with a non-finite loss or gradient skips its update (core/optim.py); this many in a row stop the run
    max_consecutive_skips: int = field(default=10, metadata=_at_least(1))


@dataclass
class CheckpointConfig:
    # None or 0: only the final (last) checkpoint
    every_n_train_steps: Optional[int] = field(default=None, metadata=_at_least(0, "0 or null saves only at the end"))
    save_last: bool = True                     # last.ckpt/.json at every save and at the end of training
    # keep the newest k stepNNNNNN checkpoints (-1: all, 0: none; with save_last=false the newest is always kept)
    save_top_k: int = field(default=-1, metadata=_at_least(-1, "-1 keeps all"))


PREVIEW_VIEWS = 8  # orbit frames in the test contact sheet


def sheet(views: list) -> np.ndarray:
    """Contact sheet of views, each {name: image}: one column per view, one row per image name."""
    from mindspore_impl.core.media import contact_sheet
    return contact_sheet([[v[k] for v in views] for k in views[0]])


def _metric_value(v: Any) -> float:
    if hasattr(v, "asnumpy"):
        v = v.asnumpy()
    return float(np.asarray(v).reshape(()))


class Trainer:
    def __init__(self, system, datamodule, trial: Trial, cfg: Any = None, checkpoint: Any = None,
                 log=print, writer: bool = True) -> None:
        self.system = system
        self.dm = datamodule
        self.cfg = parse_structured(TrainerConfig, cfg, "trainer")
        self.ckpt_cfg = parse_structured(CheckpointConfig, checkpoint, "checkpoint")
        self.global_step = 0
        self.log = log
        self.writer = bool(writer)
        self.last_preview: Optional[str] = None  # the newest contact sheet written (validation or test orbit)
        self._validated_at: Optional[int] = None
        self.last_checkpoint: Optional[str] = None  # written by this trainer
        self.resumed_from: Optional[str] = None
        self._stop_signal: Optional[int] = None
        self._arm_signals = None
        self.trial: Optional[Trial] = None
        if trial is not None:
            self.attach(trial)

    def attach(self, trial: Trial) -> None:
        """Give the trainer its trial folder (launch.py restores a checkpoint before creating the folder, so a
        checkpoint that does not fit leaves no folder behind)."""
        self.trial = trial
        if self.writer:
            clean_stale_files(self.trial.ckpt_dir, log=self.log)
            # a data module that made its own inputs (generated views) keeps a copy in the trial
            if hasattr(self.dm, "attach_trial"):
                self.dm.attach_trial(trial)

    # ----- state

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self.system.set_step(self.global_step)
        arrays, system_meta = self.system.state_dict()
        meta = {"global_step": self.global_step, "system": system_meta, "global_rng": capture_global_rng()}
        if hasattr(self.dm, "get_state"):
            meta["data"] = self.dm.get_state()
        return arrays, meta

    def save_checkpoint(self, name: Optional[str] = None) -> str:
        """Write a checkpoint of the current state; returns its .ckpt path.

        name None: stepNNNNNN (then `last` is published from it and old steps pruned); "last": the final
        state as `last` only (staged as a step checkpoint, which is removed once `last` is published).
        A trainer that is not the writer writes nothing and returns None."""
        if not self.writer:
            return None
        arrays, meta = self.state()
        ckpt_dir = self.trial.ckpt_dir
        staged = name == LAST
        name = step_name(self.global_step) if (name is None or staged) else name
        staging_existed = staged and os.path.exists(os.path.join(ckpt_dir, name + ".json"))
        try:
            path = save_training_state(ckpt_dir, name, arrays, meta)
            if self.ckpt_cfg.save_last or staged:
                path_last = copy_training_state(path, LAST)  # published before anything is pruned
                if staged and not staging_existed:
                    remove_checkpoint(ckpt_dir, name)
                    path = path_last
            prune_step_checkpoints(ckpt_dir, self.ckpt_cfg.save_top_k,
                                   protect=() if (self.ckpt_cfg.save_last or staged) else (name,))
        except NonFiniteCheckpointError as exc:
            raise NonFiniteCheckpointError(
                f"training stopped at step {self.global_step}: {exc.key} holds {exc.kind} values, so no "
                f"checkpoint was written (the run diverged); {self._last_good()}", exc.key, exc.kind) from None
        except CheckpointWriteError as exc:
            raise CheckpointWriteError(f"{exc}; training stopped at step {self.global_step}; "
                                       f"{self._last_good()}") from None
        if not os.path.exists(path) and self.ckpt_cfg.save_last:  # save_top_k=0: the step file is gone
            path = os.path.join(ckpt_dir, LAST + ".ckpt")
        self.last_checkpoint = path
        return path

    def _last_good(self) -> str:
        if self.trial is None:
            return "this rank writes no checkpoints (rank 0 does)"
        try:
            where = resolve_resume(self.trial.ckpt_dir)  # the newest complete checkpoint of this run
        except (CheckpointError, OSError):
            where = self.resumed_from
        if where is None:
            return "no checkpoint of this run was written"
        return f"the last good checkpoint is {where}"

    def restore(self, path: str) -> int:
        """Load a checkpoint written by save_checkpoint: parameters, optimizer, step, grids, RNG states.

        `path` is a .ckpt or a checkpoint folder; an incomplete or corrupt one falls back to the newest
        complete checkpoint with a message (see core/train_state.py)."""
        info, arrays = open_training_state(path, log=self.log)
        meta = info.meta
        missing = [k for k in ("global_step", "system", "global_rng") if k not in meta]
        if missing:
            raise CheckpointError(f"{info.path} is not a checkpoint written by this trainer "
                                  f"(its record has no {', '.join(missing)})")
        self.system.load_state_dict(arrays, meta["system"])
        if "data" in meta and hasattr(self.dm, "set_state"):
            self.dm.set_state(meta["data"])
        restore_global_rng(meta["global_rng"])
        self.global_step = int(meta["global_step"])
        self.system.set_step(self.global_step)
        self.resumed_from = info.path
        self.log(f"resumed from {info.path} at step {self.global_step}")
        return self.global_step

    # ----- loops

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT / SIGTERM set a flag checked after each step (the first); a second one aborts at once.
        The previous handlers are restored afterwards. Only in the main thread (signals go there)."""
        if threading.current_thread() is not threading.main_thread():
            self._arm_signals = None
            yield
            return
        self._stop_signal = None

        def handler(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum
            try:
                os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                            "(send it again to abort now)\n".encode())
            except OSError:
                pass

        def arm():  # MindSpore installs C-level SIGINT handlers of its own when its runtime starts (first op):
            for sig in STOP_SIGNALS:  # re-arm after each step so ours stay in force
                signal.signal(sig, handler)

        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        arm()
        self._arm_signals = arm
        try:
            yield
        finally:
            self._arm_signals = None
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def _interrupted(self) -> "TrainingInterrupted":
        signum = self._stop_signal
        path = self.last_checkpoint
        if self._saved_at != self.global_step or path is None:
            path = self.save_checkpoint()
        return TrainingInterrupted(self.global_step, path, signal.Signals(signum).name)

    def fit(self, resume: Optional[str] = None) -> int:
        """Train until max_steps; returns the final global step.

        SIGINT / SIGTERM stop the run cleanly: the current step finishes, a checkpoint is written and
        TrainingInterrupted (exit code 130 in launch.py, with the resume command) is raised."""
        with self._stop_on_signals():
            return self._fit(resume)

    def _fit(self, resume: Optional[str] = None) -> int:
        if self.system.optimizer is None:
            self.system.configure_optimizers()
        if resume:
            self.restore(resume)
        cfg = self.cfg
        if self.writer and cfg.num_sanity_val_steps and self.global_step == 0:
            for i in range(min(cfg.num_sanity_val_steps, self.dm.n_val)):
                self.system.validation_step(self.dm.val_batch(i), i)
        bar = self._progress_bar()
        last_t = time.perf_counter()
        every = self.ckpt_cfg.every_n_train_steps
        self._saved_at = None
        self._skips_in_row = 0
        try:
            while self.global_step < cfg.max_steps:
                if self._stop_signal is not None:
                    raise self._interrupted()
                step = self.global_step
                self.system.set_step(step)
                self.system.on_train_batch_start(step)
                batch = self.dm.sample(step)
                metrics = {k: _metric_value(v) for k, v in self.system.training_step(batch, step).items()}
                if self._arm_signals is not None:
                    self._arm_signals()
                if "loss" not in metrics:
                    raise KeyError(f"{type(self.system).__name__}.training_step must return a 'loss' metric")
                self._count_skips(step, metrics)
                self.global_step = step + 1
                self.system.set_step(self.global_step)
                now = time.perf_counter()
                metrics["steps_per_s"] = 1.0 / max(now - last_t, 1e-9)
                last_t = now
                if self.writer and cfg.log_every_n_steps and self.global_step % cfg.log_every_n_steps == 0:
                    self.trial.metrics.log(self.global_step, metrics)
                if bar is not None:
                    bar.set_postfix(loss=f"{metrics['loss']:.4g}", refresh=False)
                    bar.update(1)
                if cfg.val_check_interval and self.global_step % cfg.val_check_interval == 0:
                    self.validate()
                if every and self.global_step % every == 0:
                    self.save_checkpoint()
                    self._saved_at = self.global_step
                if self._stop_signal is not None:
                    raise self._interrupted()
        finally:
            if bar is not None:
                bar.close()
        if self.writer and self.dm.n_val and self._validated_at != self.global_step:
            self.validate()  # the final state's views and contact sheet
        if self.ckpt_cfg.save_last and self._saved_at != self.global_step:
            self.save_checkpoint("last")
        return self.global_step

    def _count_skips(self, step: int, metrics: dict) -> None:
        """NaN guard: a skipped update (non-finite loss or gradient) is logged; too many in a row stop the run
        before anything non-finite reaches a checkpoint."""
        last_skipped = getattr(self.system, "last_update_skipped", None)
        skipped = (last_skipped() if last_skipped is not None else False) or not math.isfinite(metrics["loss"])
        metrics["update_skipped"] = float(skipped)
        if not skipped:
            self._skips_in_row = 0
            return
        self._skips_in_row += 1
        limit = self.cfg.max_consecutive_skips
        self.log(f"warning: step {step}: loss {metrics['loss']}, a non-finite loss or gradient; the update was "
                 f"skipped ({self._skips_in_row} in a row, the run stops at {limit})")
        if self._skips_in_row >= limit:
            raise TrainingDiverged(
                f"training stopped at step {step}: {limit} consecutive steps had a non-finite loss or gradient "
                f"and skipped their updates (the parameters are those before step {step - limit + 1}); "
                f"{self._last_good()}; likely causes: a learning rate or loss weight too large, fp16 overflow "
                f"(system.amp_level=O2: lower system.loss_scale), or a guidance scale too high")

    def _progress_bar(self):
        """tqdm on stderr: steps, steps/s, time left and the loss. In a terminal it redraws in place; in a log
        file (not a tty) it writes a line at most every 10 s, so logs stay short."""
        if not self.cfg.enable_progress_bar or not self.writer:
            return None
        from tqdm import tqdm
        tty = sys.stderr.isatty()
        return tqdm(total=self.cfg.max_steps, initial=self.global_step, unit="step", dynamic_ncols=True,
                    file=sys.stderr, desc="train", mininterval=0.5 if tty else 10.0)

    def validate(self) -> list[str]:
        """Render the validation views; writes save/it{step}-{i}.png (images side by side) and the contact sheet
        save/it{step}-preview.png (views as columns, rgb / normal / opacity as rows)."""
        from mindspore_impl.core.media import save_image, strip
        if not self.writer:
            return []
        self.system.set_step(self.global_step)
        paths, views = [], []
        for i in range(self.dm.n_val):
            images = self.system.validation_step(self.dm.val_batch(i), i)
            paths.append(save_image(self.trial.save_path(f"it{self.global_step}-{i}.png"), strip(images)))
            views.append(images)
        if views:
            self.last_preview = save_image(self.trial.save_path(f"it{self.global_step}-preview.png"), sheet(views))
            paths.append(self.last_preview)
        values = self.system.validation_metrics()
        if values:
            self.trial.metrics.log(self.global_step, values)
        self._validated_at = self.global_step
        return paths

    def test(self) -> list[str]:
        """Render the test orbit: frames save/it{step}-test/{i:04d}.png and videos save/it{step}-test.mp4/.gif."""
        from mindspore_impl.core.media import save_image, save_video, strip
        if not self.writer:
            return []
        self.system.set_step(self.global_step)
        if self.dm.n_test == 0:
            return []
        stem = self.trial.save_path(f"it{self.global_step}-test")
        frames, shown = [], []
        picked = set(np.linspace(0, self.dm.n_test - 1, min(PREVIEW_VIEWS, self.dm.n_test)).round().astype(int))
        for i in range(self.dm.n_test):
            images = self.system.test_step(self.dm.test_batch(i), i)
            frame = strip(images)
            save_image(os.path.join(stem, f"{i:04d}.png"), frame)
            frames.append(frame)
            if i in picked:
                shown.append(images)
        self.last_preview = save_image(stem + "-preview.png", sheet(shown))
        return save_video(frames, stem, fps=self.cfg.test_video_fps,
                          formats=tuple(self.cfg.test_video_formats)) + [self.last_preview]

    def export(self) -> list[str]:
        """The system's exports under save/it{step}-export/."""
        if not self.writer:
            return []
        self.system.set_step(self.global_step)
        out_dir = self.trial.save_path(f"it{self.global_step}-export/")
        return list(self.system.export(out_dir))
