"""A 3D checkpoint written before the system redesign (tests/fixtures/pre_redesign, format 2) resumes with
today's code and continues exactly as the run that wrote it: the same step-2 loss and byte-identical arrays."""
import hashlib
import json
import os
import shutil

import pytest

import launch
from scripts.make_tiny_checkpoint import make_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "pre_redesign")
OLD_STEP2_LOSS = 119584.859375  # the pre-redesign run's own step 2 (see the fixture's README)
OLD_STEP2_SHA256 = "faf82cc3b1371d3bcd0d8a3a66a3d81b7e0b74acba012830819e7d5bde2ad665"


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
    assert losses == {2: OLD_STEP2_LOSS}, losses
    with open(os.path.join(trial, "ckpts", "step000002.ckpt"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == OLD_STEP2_SHA256
