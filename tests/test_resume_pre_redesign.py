"""A 3D checkpoint written before the system redesign (tests/fixtures/pre_redesign, format 2) resumes with
today's code: every array and RNG state it holds is restored bit for bit (today's trainer writes back exactly
what it read), and step 2 continues the run that wrote it (its loss within float summation order of the old
run's; CPUs with other vector units round differently, so byte equality of step 2 is not machine-independent)."""
import json
import os
import shutil

import numpy as np
import pytest

import launch
from mindspore_impl.core.train_state import load_training_state
from scripts.make_tiny_checkpoint import make_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "pre_redesign")
OLD_STEP2_LOSS = 119584.859375  # the pre-redesign run's own step 2 (see the fixture's README)
OLD_STEP2_REL_TOL = 1e-5  # other CPUs gave 119584.8828 (2e-7); a changed algorithm moves it by far more


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre_redesign")
    return make_tiny_checkpoint(str(root / "tiny-mvdream"), seed=0, log=lambda *_: None), root


def test_pre_redesign_checkpoint_resumes_exactly(tiny):
    paths, root = tiny
    ckpts = root / "old_ckpts"
    ckpts.mkdir()
    for name in ("step000001.ckpt", "step000001.json"):
        shutil.copy(os.path.join(FIXTURE, name), ckpts / name)
    trainer = launch.main([
        "--config", os.path.join(ROOT, "configs", "tiny-sds.yaml"), "--train", f"exp_root_dir={root / 'out'}",
        f"system.guidance.ckpt_path={paths['ckpt']}", f"system.guidance.config_path={paths['config']}",
        f"system.prompt_processor.tokenizer_path={paths['tokenizer']}",
        f"system.prompt_processor.cache_dir={root / 'cache'}",
        "data.width=16", "data.height=16", "data.eval_width=24", "data.eval_height=24", "data.n_test_views=3",
        "system.renderer.num_samples_per_ray=8", "trainer.max_steps=2", "trainer.val_check_interval=1",
        "checkpoint.every_n_train_steps=1", "name=resumed", "system.prompt_processor.prompt=a red cube",
        f"resume={ckpts / 'step000001.ckpt'}"])
    trial = trainer.trial.root
    with open(os.path.join(trial, "metrics.jsonl")) as f:
        losses = {r["step"]: r["loss"] for r in map(json.loads, f)}
    assert list(losses) == [2], losses
    assert losses[2] == pytest.approx(OLD_STEP2_LOSS, rel=OLD_STEP2_REL_TOL), losses

    old_arrays, old_meta = load_training_state(str(ckpts / "step000001.ckpt"))
    assert trainer.restore(str(ckpts / "step000001.ckpt")) == 1
    arrays, meta = trainer.state()
    assert sorted(arrays) == sorted(old_arrays)
    changed = [k for k in arrays if not np.array_equal(np.asarray(arrays[k]), old_arrays[k])]
    assert not changed, f"restored differently: {changed}"
    for key in ("global_step", "system", "global_rng", "data"):
        assert json.loads(json.dumps(meta.get(key))) == old_meta.get(key), key
