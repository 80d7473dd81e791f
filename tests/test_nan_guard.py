"""NaN guard: a step with a non-finite loss or gradient skips its update (parameters, Adam moments and step count
unchanged, as AMP's overflow skip), checkpoints stay finite, and `trainer.max_consecutive_skips` skips in a row stop
the run with one clear line naming the step and the last good checkpoint."""
import os

import mindspore as ms
import numpy as np
import pytest

import launch
from neutral.errors import report
from mindspore_impl.core.optim import build_optimizer
from neutral.registry import register
from mindspore_impl.core.train_state import load_training_state
from test_launch_trainer import CONFIG, TinySystem  # the module pytest imported (its types are registered once)

NAN_AT = {"from": 10 ** 9}  # steps >= this get a NaN in their loss


@register("test-nan-system")
class NanSystem(TinySystem):
    def training_step(self, batch, global_step):
        if global_step >= NAN_AT["from"]:
            batch = dict(batch, y=np.full_like(batch["y"], np.nan))
        return super().training_step(batch, global_step)


def test_optimizer_skips_non_finite_updates():
    p = ms.Parameter(ms.Tensor(np.ones(3, np.float32)), name="w")
    opt = build_optimizer("AdamW", [{"params": [p], "lr": 0.1}], {})
    g = ms.Tensor(np.array([0.5, -1.0, 2.0], np.float32))
    opt((g,))
    before = (p.asnumpy().copy(), opt.exp_avg[0].asnumpy().copy(), opt.exp_avg_sq[0].asnumpy().copy())
    assert int(opt.optimizer_step.asnumpy()) == 1 and int(opt.update_skipped.asnumpy()) == 0
    for bad_grad, loss in ((np.array([np.nan, 0, 0]), None), (np.array([0, np.inf, 0]), None),
                           (np.zeros(3), ms.Tensor(np.float32(np.nan)))):
        opt((ms.Tensor(bad_grad.astype(np.float32)),), loss)
        assert int(opt.update_skipped.asnumpy()) == 1
        assert int(opt.optimizer_step.asnumpy()) == 1
        for got, want in zip((p, opt.exp_avg[0], opt.exp_avg_sq[0]), before):
            np.testing.assert_array_equal(got.asnumpy(), want)
    opt((g,))
    assert int(opt.optimizer_step.asnumpy()) == 2 and int(opt.update_skipped.asnumpy()) == 0
    assert np.isfinite(p.asnumpy()).all() and not np.array_equal(p.asnumpy(), before[0])


def _config(tmp_path, max_steps, skips):
    path = tmp_path / "nan.yaml"
    text = CONFIG.replace("system_type: test-tiny-system", "system_type: test-nan-system")
    text = text.replace("max_steps: 6", f"max_steps: {max_steps}\n  max_consecutive_skips: {skips}")
    path.write_text(text)
    return str(path)


def _params(trainer):
    system = trainer.system
    return {k: v.asnumpy().copy() for k, v in system.model_parameters().items()}, \
        {k: v.copy() for k, v in system.optimizer.state_arrays().items()}


def test_nan_step_leaves_state_of_previous_step_and_run_goes_on(tmp_path):
    """A NaN at step 4 only: the state after step 4 is the state after step 3; training resumes at step 5."""
    NAN_AT["from"] = 10 ** 9
    ref = launch.main(["--config", _config(tmp_path, 4, 3), "--train", f"exp_root_dir={tmp_path / 'a'}"])
    want_params, want_optim = _params(ref)  # 4 finite steps
    try:
        NAN_AT["from"] = 4
        cfg = _config(tmp_path, 6, 3)
        got = launch.main(["--config", cfg, "--train", f"exp_root_dir={tmp_path / 'b'}", "trainer.max_steps=5"])
    finally:
        NAN_AT["from"] = 10 ** 9
    params, optim = _params(got)
    for k in want_params:
        if k.endswith("grid"):  # the fake occupancy grid moves on every step, skipped or not
            continue
        np.testing.assert_array_equal(params[k], want_params[k], err_msg=k)
    for k in want_optim:
        np.testing.assert_array_equal(optim[k], want_optim[k], err_msg=k)
    arrays, meta = load_training_state(os.path.join(got.trial.ckpt_dir, "last.ckpt"))
    assert meta["global_step"] == 5
    assert all(np.isfinite(v).all() for v in arrays.values() if v.dtype.kind == "f")
    rows = open(os.path.join(got.trial.root, "metrics.csv")).read().splitlines()
    header = rows[0].split(",")
    skipped = [float(r.split(",")[header.index("update_skipped")]) for r in rows[1:]]
    assert skipped == [0, 0, 0, 0, 1]


def test_consecutive_skips_stop_the_run_with_one_line(tmp_path, capsys):
    NAN_AT["from"] = 3
    try:
        code = report(launch.main, ["--config", _config(tmp_path, 12, 3), "--train",
                                    f"exp_root_dir={tmp_path / 'out'}"])
    finally:
        NAN_AT["from"] = 10 ** 9
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: training stopped at step 5: 3 consecutive steps had a non-finite loss")
    assert "the last good checkpoint is " in err[-1] and "ckpts/last.ckpt" in err[-1] and "likely causes" in err[-1]
    ckpts = os.path.join(str(tmp_path / "out"), os.listdir(str(tmp_path / "out"))[0])
    trial = os.path.join(ckpts, os.listdir(ckpts)[0], "ckpts")
    assert sorted(f for f in os.listdir(trial) if f.endswith(".ckpt")) == ["last.ckpt", "step000003.ckpt"]
    arrays, meta = load_training_state(trial)
    assert meta["global_step"] == 3 and all(np.isfinite(v).all() for v in arrays.values() if v.dtype.kind == "f")
