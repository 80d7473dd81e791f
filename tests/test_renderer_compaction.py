"""Empty-space skipping with static shapes (renderer `bucket`, system `renderer.compaction_buckets`): the occupied
samples of a ray chunk are compacted into a fixed-size buffer, the field runs on the buffer only, and the results
are scattered back. With a buffer that holds every occupied sample the render equals the dense one (outputs and
parameter gradients, PyNative and GRAPH, MindSpore and torch_ref); a deferred training step whose samples overflow
its bucket renders again with the next bucket and loses nothing, and its chunks shuffle the rays so each holds about
the mean occupancy."""
import copy

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindspore_impl.rendering.ray_sampling import compact_slots, scatter_back
from tests.parity import assert_parity, fresh_steps, in_fresh_interpreter, to_numpy, to_torch
from tests.parity_cases import IMAGE_KEYS, STEP, build_ms_system, make_rays, texture_field, tiny_config, trained_state
from tests.parity_cases import renderer_pair as build
from tests.test_system_step_parity import tiny  # noqa: F401  (a fixture)
from torch_ref.rendering.ray_sampling import compact_slots as pt_compact_slots


@pytest.mark.parametrize("bucket", [64, 37, 10])
def test_compact_slots_against_numpy(bucket):
    occ = np.random.default_rng(bucket).random(64) < 0.4
    slot, source, count = (x.asnumpy() for x in compact_slots(Tensor(occ), bucket))
    occupied = np.flatnonzero(occ)
    kept = occupied[:bucket]
    assert int(count) == len(occupied)
    expect_slot = np.full(64, bucket)
    expect_slot[kept] = np.arange(len(kept))
    np.testing.assert_array_equal(slot, expect_slot)
    np.testing.assert_array_equal(source[:len(kept)], kept)
    assert np.all(source[len(kept):] == 0)
    t_slot, t_source, t_count = pt_compact_slots(to_torch(occ), bucket)
    np.testing.assert_array_equal(t_slot.cpu().numpy(), slot)
    np.testing.assert_array_equal(t_source.cpu().numpy(), source)
    values = np.random.default_rng(0).normal(size=(bucket, 2)).astype(np.float32)
    back = scatter_back(Tensor(values), Tensor(slot.astype(np.int32))).asnumpy()
    np.testing.assert_array_equal(back[kept], values[:len(kept)])
    assert np.all(back[np.setdiff1d(np.arange(64), kept)] == 0)


def _flat_inputs(renderer, n_side=4):
    o, d, light = make_rays(2, n_side, n_side, seed=2)
    n = o.shape[0] * n_side * n_side
    jitter = np.random.default_rng(4).random((n, renderer.jitter_samples), dtype=np.float32)
    light = np.repeat(light, n_side * n_side, 0)
    return o.reshape(n, 3), d.reshape(n, 3), light, jitter


def _ms_render(ms_r, inputs, bucket, g):
    params = list(ms_r.geometry.trainable_params()) + list(ms_r.background.trainable_params())

    def loss_fn(*args):
        out = ms_r.render_ray_chunk(*args, None, "diffuse", None, None, bucket)
        return (out["comp_rgb"] * g[0]).sum() + (out["opacity"] * g[1]).sum() + (out["depth"] * g[2]).sum()

    args = [Tensor(x) for x in inputs]
    out = ms_r.render_ray_chunk(*args, None, "diffuse", None, None, bucket)
    grads = ms.grad(loss_fn, None, params)(*args)
    return {k: v.asnumpy() for k, v in out.items() if v is not None}, [x.asnumpy() for x in grads]


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_compacted_render_equals_dense_and_torch(mode):
    if mode == "graph" and not in_fresh_interpreter(
            __file__, "test_compacted_render_equals_dense_and_torch[graph]", "COMPACTION_GRAPH_IN_CHILD"):
        return
    cfg = {"num_samples_per_ray": 12, "num_importance_samples": 12, "occ_update_interval": 1,
           "return_comp_normal": True}
    pt_r, ms_r = build(cfg, normal_type="finite_difference", material="diffuse", seed=1)
    for step in (0, 1, 2):  # EMA updates: part of the grid is empty
        assert pt_r.update_step(step, np.random.default_rng(100 + step)) and ms_r.update_step(step, np.random.default_rng(100 + step))
    inputs = _flat_inputs(ms_r)
    n = inputs[0].shape[0]
    g = [Tensor(np.random.default_rng(k).normal(size=(n, c)).astype(np.float32)) for k, c in ((1, 3), (2, 1), (3, 1))]
    if mode == "graph":
        ms.set_context(mode=ms.GRAPH_MODE)
    dense, dense_grads = _ms_render(ms_r, inputs, (0, 0), g)
    occupied = dense["occupied"]
    fraction = float(max(occupied[0] / (n * 24), occupied[1] / (n * 12)))
    bucket = ms_r.bucket_sizes(n, fraction)
    print(f"{mode}: occupied fine {occupied[0]} / {n * 24}, coarse {occupied[1]} / {n * 12}; bucket {bucket}")
    assert 0 < occupied[0] < n * 24 and bucket[0] < n * 24, "the test needs empty space to skip"
    compact, compact_grads = _ms_render(ms_r, inputs, bucket, g)
    np.testing.assert_array_equal(compact["occupied"], occupied)
    for key in IMAGE_KEYS + ("weights",):
        assert_parity(compact[key], dense[key], f"compacted vs dense {key}", rel=1e-5)
    lit = dense["weights"] > 0  # empty samples: the compacted renderer leaves their normal 0 (no weight either way)
    assert_parity(compact["normal"] * lit, dense["normal"] * lit, "compacted vs dense normal where weighted", rel=1e-5)
    for a, b in zip(compact_grads, dense_grads):
        assert_parity(a, b, "compacted vs dense gradient", rel=1e-5)
    pt_in = [to_torch(x) for x in inputs]
    pt_out = pt_r.render_ray_chunk(*pt_in, None, "diffuse", None, None, bucket)
    for key in IMAGE_KEYS + ("weights",):
        assert_parity(compact[key], to_numpy(pt_out[key]), f"compacted ms vs torch {key}")
    assert pt_out["occupied"].tolist() == occupied.tolist()


def test_deferred_step_overflow_takes_the_next_bucket(tiny, capsys):
    cfg = tiny_config(tiny, shading=False)
    cfg.system.renderer.compaction_buckets = [0.015625, 0.25, 0.5, 1.0]
    cfg.system.guidance.guidance_scale = 1.0  # well-conditioned (see test_deferred_step.py)
    dm, system = build_ms_system(cfg)
    texture_field(system)
    system.configure_optimizers()
    for step in range(0, STEP + 1, 8):
        system.renderer.update_step(0, np.random.default_rng(7))  # EMA updates of the textured field: empty cells appear
    system.on_train_batch_start(STEP)
    inputs = system.draw_step_inputs(dm.sample(STEP))
    snapshot = tuple(map(copy.deepcopy, system.state_dict()))
    system.cfg.render_chunk_rays = 256
    results = {}
    for name, buckets, start in (("dense", [], 0), ("compacted", [0.015625, 0.25, 0.5, 1.0], 0)):
        system.load_state_dict(*copy.deepcopy(snapshot))
        system.renderer.cfg.compaction_buckets = buckets
        fresh_steps(system)
        system._bucket_index = start
        results[name] = (system.run_step(inputs), trained_state(system)[0], system._bucket_index)
    printed = capsys.readouterr().out
    dense, compact = results["dense"][0], results["compacted"][0]
    print(printed, dense, compact)
    assert "[compaction]" in printed and "overflow the buffer of" in printed
    assert 0 < compact["occupied_fraction"] < 1 and compact["evaluated_fraction"] < 1
    assert compact["evaluated_fraction"] >= compact["occupied_fraction"]
    assert dense["evaluated_fraction"] == 1.0
    assert results["compacted"][2] >= 1  # the next step starts from a bucket that held this one
    assert_parity(np.float32(compact["loss"]), np.float32(dense["loss"]), "loss, compacted vs dense", rel=1e-5)
    for name, value in results["dense"][1].items():
        assert_parity(results["compacted"][1][name], value, f"updated {name}, compacted vs dense")

    # the step's chunks shuffle the rays: each holds about the mean occupancy, so the bucket follows the mean. In
    # image order, chunks of a quarter view through the object's middle hold about twice the mean
    system.cfg.render_chunk_rays = 64
    occupied = {}
    for shuffle in (True, False):
        system._bucket_index = 3  # holds every sample: no second render
        chunks, _, _ = system._ray_chunks(inputs, shuffle)
        occupied[shuffle] = system._render_chunks(inputs["shading"], chunks)[2][:, 0]
    print("occupied samples per chunk: shuffled", occupied[True], "image order", occupied[False])
    assert occupied[True].sum() == occupied[False].sum()
    assert occupied[True].max() <= 1.5 * occupied[True].mean()
    assert occupied[False].max() >= 1.75 * occupied[False].mean()


def test_chunked_eval_render_with_buckets_equals_dense():
    """render_chunked (validation, test orbit) with compaction_buckets: every chunk in the smallest bucket that held
    the previous one, an overflowing chunk rendered again in the bucket that holds it; the images equal the dense
    chunked render, with importance samples and normals."""
    cfg = {"num_samples_per_ray": 12, "num_importance_samples": 12, "occ_update_interval": 1,
           "return_comp_normal": True, "compaction_buckets": [0.125, 0.25, 0.5, 1.0]}
    _, ms_r = build(cfg, normal_type="finite_difference", material="diffuse", seed=1)
    for step in (0, 1, 2):
        ms_r.update_step(step, np.random.default_rng(100 + step))
    o, d, light = (Tensor(x) for x in make_rays(2, 8, 8, seed=2))
    used = []
    render_chunk = ms_r.render_ray_chunk

    def recording(*args, **kwargs):
        used.append(tuple(args[8]) if len(args) > 8 else kwargs["bucket"])
        return render_chunk(*args, **kwargs)

    ms_r.render_ray_chunk = recording
    compact = ms_r.render_chunked(o, d, light, chunk_size=32)
    ms_r.cfg.compaction_buckets = []
    dense = ms_r.render_chunked(o, d, light, chunk_size=32)
    print("buckets used per try:", used)
    assert (0, 0) not in used[:-4] and used[-4:] == [(0, 0)] * 4  # 4 chunks of 32 rays; the dense pass last
    assert len(used) > 8 and len(set(used[:-4])) > 1, "the test needs an overflow that takes a larger bucket"
    assert min(b[0] for b in used[:-4]) < 32 * 24, "the test needs a bucket smaller than dense"
    for key in ("comp_rgb", "opacity", "depth", "comp_normal"):
        assert_parity(compact[key].asnumpy(), dense[key].asnumpy(), f"chunked compacted vs dense {key}", rel=1e-5)
