"""launch.py + Trainer end to end with a tiny deterministic system: trial folder, logs, checkpoints,
exact resume, test video, export, and clear errors for bad input (before any folder is written)."""
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import imageio.v2 as imageio2
import mindspore as ms
import numpy as np
import pytest
import trimesh
from mindspore import nn
from omegaconf import OmegaConf

import launch
from neutral.config import ConfigError, parse_structured
from neutral.registry import register
from mindspore_impl.core.train_state import load_training_state
from mindspore_impl.lift3d.export.mesh import MeshExportConfig, export_mesh
from mindspore_impl.core.system import BaseSystem, BaseSystemConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class TinyDataConfig:
    batch_size: int = 4
    n_val_views: int = 2
    n_test_views: int = 3


@register("test-tiny-datamodule")
class TinyData:
    """Random regression batches from its own generator (like the camera datamodule)."""
    Config = TinyDataConfig

    def __init__(self, cfg=None, seed=0):
        self.cfg = parse_structured(TinyDataConfig, cfg, "data")
        self.rng = np.random.default_rng(seed + 1000)

    def sample(self, global_step):
        x = self.rng.standard_normal((self.cfg.batch_size, 3)).astype(np.float32)
        return {"x": x, "y": np.sin(x.sum(1, keepdims=True)).astype(np.float32)}

    def val_batch(self, i):
        return {"index": i}

    def test_batch(self, i):
        return {"index": i}

    n_val = property(lambda self: self.cfg.n_val_views)
    n_test = property(lambda self: self.cfg.n_test_views)

    def get_state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state


class TinyGeometry(nn.Cell):
    def __init__(self, rng):
        super().__init__()
        self.encoding = nn.Dense(3, 8)
        self.density_network = nn.Dense(8, 1, has_bias=False)
        for p in self.trainable_params():
            p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.5))
        # non-trainable state that changes during training, like an occupancy grid
        self.grid = ms.Parameter(ms.Tensor(np.zeros(5, np.float32)), name="grid", requires_grad=False)

    def construct(self, x):
        return self.density_network(ms.ops.tanh(self.encoding(x)))


@dataclass
class TinySystemConfig(BaseSystemConfig):
    loss: dict = field(default_factory=lambda: {"lambda_mse": [0, 1.0, 0.5, 4]})
    exporter: dict = field(default_factory=dict)


@register("test-tiny-system")
class TinySystem(BaseSystem):
    Config = TinySystemConfig

    def configure(self):
        init = np.random.default_rng(self.seed)
        self.geometry = TinyGeometry(init)
        self.background = nn.Dense(3, 1)
        self.guidance = nn.Dense(2, 2)  # stands for a frozen model: never saved
        self._step = None

    def _forward(self, x, y, noise, weight):
        pred = self.geometry(x) + 0.1 * self.background(x)
        loss = weight * ((pred - y - noise) ** 2).mean()
        return loss, pred

    def on_train_batch_start(self, global_step):
        grid = self.geometry.grid.asnumpy()
        self.geometry.grid.set_data(ms.Tensor(grid * 0.5 + self.rng.random(5).astype(np.float32)))

    def training_step(self, batch, global_step):
        if self._step is None:
            self._step = self.make_train_step(self._forward)
        noise = 0.01 * self.rng.standard_normal(batch["y"].shape).astype(np.float32)
        weight = self.C(self.cfg.loss["lambda_mse"])
        loss, _ = self._step(ms.Tensor(batch["x"]), ms.Tensor(batch["y"]), ms.Tensor(noise),
                             ms.Tensor(weight, ms.float32))
        return {"loss": loss, "lambda_mse": weight}

    def _images(self, index):
        level = float(np.tanh(self.geometry.density_network.weight.asnumpy().sum())) * 0.5 + 0.5
        rgb = np.full((6, 5, 3), level, np.float32)
        rgb[:, :, 1] = index / 4
        return {"rgb": rgb, "opacity": np.ones((6, 5, 1), np.float32)}

    def validation_step(self, batch, index):
        return self._images(index)

    def test_step(self, batch, index):
        return self._images(index)

    def export(self, out_dir):
        def density(p):
            return 50.0 * np.exp(-(np.linalg.norm(p, axis=-1) / 0.5) ** 2)

        cfg = parse_structured(MeshExportConfig, {"resolution": 16, **self.cfg.exporter}, "exporter")
        return export_mesh(density, (-1, -1, -1), (1, 1, 1), out_dir, color_fn=lambda p: p * 0.5 + 0.5, cfg=cfg)


CONFIG = """
name: tiny
description: a tiny run
tag: "${rmspace:${description},_}"
seed: 7
exp_root_dir: outputs
data_type: test-tiny-datamodule
data:
  batch_size: 4
system_type: test-tiny-system
system:
  optimizer:
    name: AdamW
    args: {betas: [0.9, 0.99], eps: 1.0e-15}
    params:
      geometry.encoding: {lr: 0.01}
      geometry.density_network: {lr: 0.001}
      background: {lr: 0.001}
trainer:
  max_steps: 6
  val_check_interval: 3
  enable_progress_bar: true
checkpoint:
  every_n_train_steps: 3
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG)
    return str(path)


def _run(config, tmp_path, *extra):
    return launch.main(["--config", config, "--train", f"exp_root_dir={tmp_path / 'out'}", *extra])


def _losses(trial_root):
    with open(os.path.join(trial_root, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_train_resume_test_export(config, tmp_path):
    full = _run(config, tmp_path, "name=full")
    first = _run(config, tmp_path, "name=first", "trainer.max_steps=3")
    ckpt3 = os.path.join(first.trial.root, "ckpts", "step000003.ckpt")
    resumed = _run(config, tmp_path, "name=resumed", f"resume={ckpt3}")

    # the interrupted run's checkpoint equals the uninterrupted run's at step 3
    a_full, m_full = load_training_state(os.path.join(full.trial.root, "ckpts", "step000003.ckpt"))
    a_first, m_first = load_training_state(ckpt3)
    assert sorted(a_full) == sorted(a_first)
    assert all(np.array_equal(a_full[k], a_first[k]) for k in a_full)
    assert m_full["system"]["rng"] == m_first["system"]["rng"] and m_full["data"] == m_first["data"]

    l_full, l_res = _losses(full.trial.root), _losses(resumed.trial.root)
    print("uninterrupted losses", l_full, "\nresumed losses", l_res)
    assert sorted(l_res) == [4, 5, 6]
    assert all(l_res[s] == l_full[s] for s in (4, 5, 6)), "resumed run diverged"
    arrays_full, meta_full = full.state()
    arrays_res, meta_res = resumed.state()
    assert sorted(arrays_full) == sorted(arrays_res)
    diff = max(float(np.abs(arrays_full[k] - arrays_res[k]).max()) for k in arrays_full)
    print(f"max |param/moment difference| after 6 steps: {diff}")
    assert diff == 0.0
    assert meta_full["system"]["rng"] == meta_res["system"]["rng"] and meta_full["data"] == meta_res["data"]

    # what a checkpoint holds: trained modules + their buffers + optimizer; never the frozen guidance
    keys = set(arrays_full)
    assert {"model.geometry.encoding.weight", "model.geometry.grid", "model.background.bias",
            "optimizer.exp_avg.geometry.encoding.weight", "optimizer.optimizer_step"} <= keys
    assert not any("guidance" in k for k in keys)
    assert int(arrays_full["optimizer.optimizer_step"]) == 6
    # per-module learning rates by dotted path
    groups = {g["name"]: g["lr"] for g in full.system.optimizer.param_groups}
    assert groups == {"geometry.encoding": 0.01, "geometry.density_network": 0.001, "background": 0.001}

    # the trial folder
    root = full.trial.root
    assert os.path.basename(root).startswith("a_tiny_run@") and os.path.dirname(root).endswith("full")
    parsed = OmegaConf.load(os.path.join(root, "configs", "parsed.yaml"))
    assert parsed.tag == "a_tiny_run" and parsed.trainer.max_steps == 6 and parsed.seed == 7
    assert sorted(os.listdir(os.path.join(root, "ckpts"))) == [
        "last.ckpt", "last.json", "step000003.ckpt", "step000003.json", "step000006.ckpt", "step000006.json"]
    save = os.listdir(os.path.join(root, "save"))
    assert {"it3-0.png", "it3-1.png", "it6-0.png", "it6-1.png", "it6-test.mp4", "it6-test.gif"} <= set(save)
    assert imageio2.imread(os.path.join(root, "save", "it3-0.png")).shape == (6, 10, 3)  # rgb | opacity
    reader = imageio2.get_reader(os.path.join(root, "save", "it6-test.mp4"))
    assert reader.count_frames() == 3
    reader.close()
    mesh = trimesh.load(os.path.join(root, "save", "it6-export", "model.glb"), force="mesh")
    assert len(mesh.vertices) > 0
    with open(os.path.join(root, "metrics.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0].split(",")[:3] == ["step", "loss", "lambda_mse"] and "steps_per_s" in lines[0]
    assert len(lines) == 7
    # the scheduled loss weight followed [0, 1.0, 0.5, 4] over the steps
    with open(os.path.join(root, "metrics.jsonl")) as f:
        weights = [json.loads(r)["lambda_mse"] for r in f]
    assert weights == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5, 0.5])

    # --test / --export / --validate from the checkpoint, each in its own trial folder
    last = os.path.join(root, "ckpts", "last.ckpt")
    for mode, expect in (("--test", "it6-test.mp4"), ("--export", "it6-export"), ("--validate", "it6-1.png")):
        t = launch.main(["--config", config, mode, f"exp_root_dir={tmp_path / 'out'}", "name=eval",
                         f"resume={last}"])
        assert t.global_step == 6 and expect in os.listdir(t.trial.save_dir)
        assert np.array_equal(t.system.geometry.encoding.weight.asnumpy(),
                              full.system.geometry.encoding.weight.asnumpy())

    # --mode graph: the jitted step gives the PyNative losses
    graph = _run(config, tmp_path, "name=graph", "--mode", "graph", "trainer.max_steps=3")
    assert ms.get_context("mode") == ms.GRAPH_MODE
    l_graph = _losses(graph.trial.root)
    print("graph-mode losses", l_graph)
    assert all(abs(l_graph[s] - l_full[s]) <= 1e-5 * abs(l_full[s]) for s in (1, 2, 3))


def test_optimizer_groups_by_dotted_path():
    spec = OmegaConf.to_container(OmegaConf.create(CONFIG).system)
    spec["optimizer"]["params"]["geometry"] = {"encoding": {"lr": 0.02}}  # a CLI override nests the path
    system = TinySystem(spec, seed=0)
    groups = {g["name"]: (g["lr"], [p.name for p in g["params"]]) for g in system.configure_optimizers().param_groups}
    assert groups == {"geometry.encoding": (0.02, ["geometry.encoding.weight", "geometry.encoding.bias"]),
                      "geometry.density_network": (0.001, ["geometry.density_network.weight"]),
                      "background": (0.001, ["background.weight", "background.bias"])}
    spec["optimizer"]["params"] = {"geometry.encodingg": {"lr": 0.1}}
    with pytest.raises(ConfigError, match="'geometry.encodingg': geometry has no attribute 'encodingg'"):
        TinySystem(spec).configure_optimizers()
    spec["optimizer"]["params"] = {"geometry": {"lr": 0.1}, "geometry.encoding": {"lr": 0.1}}
    with pytest.raises(ValueError, match="parameter geometry.encoding.weight is in optimizer groups"):
        TinySystem(spec).configure_optimizers()


def _assert_fails(config, tmp_path, args, exc, match):
    with pytest.raises(exc, match=match):
        launch.main(["--config", config, *args, f"exp_root_dir={tmp_path / 'out'}"])
    assert not os.path.exists(tmp_path / "out"), "an error must come before any folder is written"


def test_config_errors_before_any_work(config, tmp_path):
    _assert_fails(str(tmp_path / "nope.yaml"), tmp_path, ["--train"], launch.LaunchError,
                  "config file not found: .*nope.yaml")
    _assert_fails(config, tmp_path, ["--train", "trainer.max_steps"], launch.LaunchError,
                  "bad override 'trainer.max_steps': expected key=value")
    _assert_fails(config, tmp_path, ["--train", "=3"], launch.LaunchError, "bad override '=3'")
    _assert_fails(config, tmp_path, ["--train", "trainerr.max_steps=3"], ConfigError,
                  "Key 'trainerr' not in 'ExperimentConfig'.*Allowed top-level keys: name,")
    _assert_fails(config, tmp_path, ["--train", "trainer.max_stepz=3"], ConfigError,
                  "bad config for trainer: Key 'max_stepz' not in 'TrainerConfig'")
    _assert_fails(config, tmp_path, ["--train", "system.lossx=1"], ConfigError,
                  "bad config for system: Key 'lossx' not in 'TinySystemConfig'")
    _assert_fails(config, tmp_path, ["--train", "data.batchsize=1"], ConfigError,
                  "bad config for data: Key 'batchsize' not in 'TinyDataConfig'")
    _assert_fails(config, tmp_path, ["--train", "system_type=no-such-system"], launch.LaunchError,
                  "system_type: unknown module type 'no-such-system'. Registered: .*test-tiny-system")
    _assert_fails(config, tmp_path, ["--test"], launch.LaunchError, "--test needs resume=PATH to a checkpoint")
    _assert_fails(config, tmp_path, ["--export", "resume=/no/such.ckpt"], launch.LaunchError,
                  "resume checkpoint not found: /no/such.ckpt")


def test_bad_device_and_mode(config, tmp_path, capsys):
    for args, msg in ((["--device", "TPU"], "argument --device: must be one of CPU, Ascend, GPU, got 'TPU'"),
                      (["--mode", "eager"], "argument --mode: must be one of pynative, graph, got 'eager'"),
                      ([], "one of the arguments --train --validate --test --export is required")):
        with pytest.raises(SystemExit) as info:
            launch.main(["--config", config, *args, f"exp_root_dir={tmp_path / 'out'}"])
        assert info.value.code == 2 and msg in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_cli_prints_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config", str(tmp_path / "x.yaml"),
                           "--train"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    print(proc.stderr)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: config file not found: {tmp_path / 'x.yaml'}"


def test_checkpoint_files_atomic_pairs_and_pruning(tmp_path):
    from mindspore_impl.core.checkpoint import CheckpointError
    from mindspore_impl.core.train_state import (copy_training_state, prune_step_checkpoints, resolve_resume,
                                                 save_training_state)
    d = str(tmp_path / "ckpts")
    for step in (2, 4, 6):
        path = save_training_state(d, f"step{step:06d}", {"w": np.full(3, step, np.float32)}, {"global_step": step})
    assert resolve_resume(d).endswith("step000006.ckpt")  # no last.ckpt: the highest step
    copy_training_state(path, "last")
    arrays, meta = load_training_state(d)  # a folder resumes from last.ckpt
    assert meta["global_step"] == 6 and meta["params_file"] == "last.ckpt" and arrays["w"].tolist() == [6, 6, 6]
    assert len(prune_step_checkpoints(d, keep=1)) == 4
    assert sorted(os.listdir(d)) == ["last.ckpt", "last.json", "step000006.ckpt", "step000006.json"]
    os.remove(os.path.join(d, "step000006.json"))  # as if the run died between the two writes
    messages = []  # an incomplete checkpoint falls back to the newest complete one (here last, step 6), saying so
    arrays, meta = load_training_state(os.path.join(d, "step000006.ckpt"), log=messages.append)
    assert meta["global_step"] == 6 and "step000006.ckpt has no step000006.json beside it" in messages[0]
    os.remove(os.path.join(d, "last.json"))
    with pytest.raises(CheckpointError, match="step000006.ckpt has no step000006.json beside it"):
        load_training_state(os.path.join(d, "step000006.ckpt"))
    assert not [f for f in os.listdir(d) if f.startswith(".tmp_")]


@pytest.mark.parametrize("env, level", [(None, "3"), ("2", "2")])
def test_mindspore_log_is_errors_only_unless_asked(env, level):
    """launch.py sets MindSpore's log to errors before importing it (its recompile warnings are not for users);
    GLOG_v in the environment wins."""
    code = "import launch, mindspore; from mindspore import log; print(log.get_level())"
    environ = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    if env is not None:
        environ["GLOG_v"] = env
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == level
