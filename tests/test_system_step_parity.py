"""One full MVDream training step (render -> multiview SDS loss -> AdamW update) in MindSpore and in the
torch_ref twin, on the same weights, rays, jitter, background colour, timestep and noises:
the loss, the AdamW first moments (0.1 x the gradients) and the updated parameters match;
the same step compiled in GRAPH mode gives the same loss and parameters.

Models: the tiny random MVDream checkpoint of scripts/make_tiny_checkpoint.py (its original-layout
.pt feeds the torch side, its converted .ckpt the MindSpore side), configs/tiny-sds.yaml at 16x16.
"""
import mindspore as ms
import numpy as np
import pytest

import launch
from tests.parity import assert_first_adam_step_parity, assert_parity, fresh_steps, in_fresh_interpreter, tolerance
from tests.parity_cases import (STEP, TINY_SDS, build_ms_system, make_tiny, sds_step_pair, texture_field,  # noqa: F401
                                tiny_config, tiny_overrides, trained_state)
from torch_ref.lift3d.systems import mvdream_system as twin

# STEP, build_ms_system, texture_field, tiny_config and trained_state are imported from here by
# tests/test_deferred_step.py and tests/test_renderer_compaction.py (with the `tiny` fixture).


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(str(tmp_path_factory.mktemp("tiny_ckpt")))


def check_step_parity(tiny, cfg, expect_terms):
    """One step in both frameworks from the same state; returns (system, inputs, snapshot, metrics, params)."""
    run = sds_step_pair(tiny, cfg)
    system, inputs, snapshot, metrics = run.system, run.inputs, run.snapshot, run.metrics
    assert inputs["rays_o"].shape == (4, 16, 16, 3) and inputs["jitter"].shape == (4, 16, 16, 8)
    assert 260 <= int(inputs["t"][0]) <= 620  # annealed range at STEP
    t_loss, t_terms = run.t_loss, run.t_terms
    print(f"shading {inputs['shading']}; loss: MindSpore {metrics['loss']:.6f}  torch {t_loss:.6f}")
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert_parity(np.float32(metrics["loss"]), np.float32(t_loss), "step loss")
    for i, term in enumerate(twin.LOSS_TERMS):
        if term in expect_terms:
            assert t_terms[i] > 0, f"loss_{term} is zero: the test would not see it"
            assert_parity(np.float32(metrics[f"loss_{term}"]), np.float32(t_terms[i]), f"loss_{term}")
        else:
            assert f"loss_{term}" not in metrics and t_terms[i] == 0

    ms_params, ms_moments, t_params, t_moments = run.ms_params, run.ms_moments, run.t_params, run.t_moments
    assert sorted(ms_params) == sorted(t_params)
    for name in sorted(ms_params):
        ref = t_moments[name]
        scale = float(np.abs(ref).max())
        if scale > 0:  # exp_avg = 0.1 * grad after one step: the gradients, relative to their size
            assert_parity(ms_moments[name] / scale, ref / scale, f"exp_avg (grad) {name} / {scale:.2e}")
        else:
            assert np.abs(ms_moments[name]).max() == 0, name
        assert_first_adam_step_parity(ms_params[name], t_params[name], ms_moments[name], ref,
                                      snapshot[0]["model." + name], f"updated {name}")
    moved = max(float(np.abs(ms_params[k] - snapshot[0]["model." + k]).max()) for k in ms_params)
    assert moved > 1e-4, "the step did not change the parameters"
    return system, inputs, snapshot, metrics, ms_params


def test_one_training_step_matches_torch_and_graph(tiny):
    if not in_fresh_interpreter(__file__, "test_one_training_step_matches_torch_and_graph", "STEP_GRAPH_IN_CHILD"):
        return
    cfg = tiny_config(tiny, shading=False)
    system, inputs, snapshot, metrics, ms_params = check_step_parity(tiny, cfg, ("sds",))

    # the same step compiled as one graph, from the same state
    system.load_state_dict(*snapshot)
    fresh_steps(system)
    ms.set_context(mode=ms.GRAPH_MODE)
    g_metrics = system.run_step(inputs)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    print(f"GRAPH loss {g_metrics['loss']:.6f}  PyNative loss {metrics['loss']:.6f}")
    assert_parity(np.float32(g_metrics["loss"]), np.float32(metrics["loss"]), "GRAPH vs PyNative loss", rel=1e-5)
    g_params, _ = trained_state(system)
    for name in sorted(ms_params):
        assert_parity(g_params[name], ms_params[name], f"GRAPH updated {name}")


def test_shaded_step_with_all_regularisers_matches_torch(tiny):
    """Analytic normals, diffuse point-light shading with a soft light mix, orient + sparsity + opaque +
    z_variance losses (the shading config's step), and global-norm gradient clipping (seen in exp_avg)."""
    cfg = tiny_config(tiny, shading=True)
    system, inputs, *_ = check_step_parity(tiny, cfg, twin.LOSS_TERMS)
    assert inputs["shading"] in ("diffuse", "textureless")  # the normals reach the colour


def _one_step(tiny, *overrides):
    paths, cache = tiny
    cfg = launch.load_config(TINY_SDS, tiny_overrides(paths, cache) + list(overrides))
    dm, system = build_ms_system(cfg)
    texture_field(system)
    system.configure_optimizers()
    system.on_train_batch_start(STEP)
    return system, system.run_step(system.draw_step_inputs(dm.sample(STEP)))


def test_recompute_and_half_precision_are_switches(tiny):
    """use_recompute changes memory, not numbers; amp_level O2 runs the frozen UNet in fp16 (the VAE, the 3D
    field and the optimizer stay fp32) with a static loss scale, within fp16 accuracy of the fp32 step."""
    _, plain = _one_step(tiny)
    _, recompute = _one_step(tiny, "system.use_recompute=true")
    half, amp = _one_step(tiny, "system.amp_level=O2", "system.loss_scale=128")
    print(f"loss fp32 {plain['loss']:.6f}, recompute {recompute['loss']:.6f}, O2 fp16 {amp['loss']:.6f}")
    assert recompute["loss"] == plain["loss"]
    assert ms.float16 in {p.dtype for p in half.guidance.unet.get_parameters()}  # Dense/Conv; norms fp32
    assert {p.dtype for p in half.guidance.vae.get_parameters()} == {ms.float32}  # the image gradient path
    assert {p.dtype for p in half.geometry.get_parameters()} == {ms.float32}
    assert abs(amp["loss"] - plain["loss"]) <= tolerance(1e-2, dtype="float16") * plain["loss"]
    assert all(np.isfinite(p.asnumpy()).all() for p in half.optimizer.parameters)
