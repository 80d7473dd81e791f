"""LoRA for the multiview UNet (mindspore_impl/mvdream/lora.py): layer selection per mode, zero adapters leave
the UNet bit-identical, merged equals unmerged, training through launch.py (configs/tiny-lora.yaml) optimises and
saves the adapters alone, scripts/t2i.py --lora and the SDS guidance's lora_path fold a saved file in, and bad
adapter files are one-line errors."""
import os

import mindspore as ms
import numpy as np
import pytest

import launch
from mindspore_impl.mvdream import loading, lora
from mindspore_impl.mvdream.training import arrays_of, model_parameters
from neutral.config import ConfigError
from neutral.mvdream.model_config import load_model_config
from neutral.mvdream.training import UNET_PREFIX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = os.path.join(ROOT, "configs", "tiny-mvdiffusion-model.yaml")
TINY_LORA = os.path.join(ROOT, "configs", "tiny-lora.yaml")
TOKENIZER = os.path.join(ROOT, "pretrained", "demo", "tokenizer")
BLOCKS = ["input_blocks.1.1.transformer_blocks.0", "middle_block.1.transformer_blocks.0",
          "output_blocks.0.1.transformer_blocks.0", "output_blocks.1.1.transformer_blocks.0"]
ATTN1 = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"]
EXPECTED = {"all": ATTN1 + ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"],
            "self_attn": ATTN1, "qk": ["attn1.to_q", "attn1.to_k"], "cross_view": ATTN1}


def tiny_unet(seed=0):
    ms.set_seed(seed)
    return loading.build_model(load_model_config(TINY_MODEL), "unet")


def unet_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (ms.Tensor(rng.standard_normal((8, 12, 4, 4)).astype(np.float32)),
            ms.Tensor(rng.integers(0, 1000, 8).astype(np.int32)),
            ms.Tensor(rng.standard_normal((8, 77, 32)).astype(np.float32)),
            ms.Tensor(rng.standard_normal((8, 16)).astype(np.float32)))


def randomise_up(unet, seed=1, std=0.3):
    rng = np.random.default_rng(seed)
    for key, p in lora.lora_parameters(unet).items():
        if key.endswith(lora.UP):
            p.set_data(ms.Tensor((std * rng.standard_normal(p.shape)).astype(np.float32)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A base checkpoint of the toy model (seeded random weights, no zero layers), the toy dataset, and an
    adapter file (mode all, rank 2, alpha 4, random non-zero up)."""
    from scripts import make_primitives_dataset
    d = tmp_path_factory.mktemp("lora")
    models = loading.build_models(load_model_config(TINY_MODEL))
    base = str(d / "base.ckpt")
    from mindspore_impl.core.checkpoint import save_params
    save_params(arrays_of(model_parameters(models["unet"], models["vae"], models["text_encoder"])), base)
    dataset = str(d / "primitives_8.npz")
    assert make_primitives_dataset.main(["--out", dataset, "--num_objects", "6", "--size", "8", "--n_view", "8",
                                         "--supersample", "1", "--seed", "0"]) == 0
    unet = tiny_unet(5)
    lora.apply_lora(unet, "all", 2, 4.0, seed=3)
    randomise_up(unet, seed=4)
    adapters = str(d / "adapters.safetensors")
    lora.save_lora(adapters, arrays_of(lora.lora_parameters(unet)),
                   {"mode": "all", "rank": 2, "alpha": 4.0, "base_checkpoint": base})
    return {"dir": d, "base": base, "dataset": dataset, "adapters": adapters,
            "adapter_arrays": arrays_of(lora.lora_parameters(unet))}


def test_modes_select_the_documented_layers():
    unet = tiny_unet()
    assert lora.transformer_blocks(unet) == BLOCKS
    counts = {}
    for mode in lora.MODES:
        paths = lora.select_layers(unet, mode)
        counts[mode] = len(paths)
        assert paths == [f"{b}.{layer}" for b in BLOCKS for layer in EXPECTED[mode]], mode
    print("layers per mode:", counts)
    assert counts == {"all": 40, "self_attn": 16, "qk": 8, "cross_view": 16}
    # the demo model has the same four blocks (attention at 8x8 in and out, and the middle)
    demo = loading.build_model(load_model_config(os.path.join(ROOT, "configs", "demo-model.yaml")), "unet")
    assert len(lora.select_layers(demo, "all")) == 40
    n_base = len(list(unet.get_parameters()))
    lora.apply_lora(unet, "qk", 4, 8.0)
    trainable = [p.name for p in unet.trainable_params()]
    assert len(trainable) == 16 and len(list(unet.get_parameters())) == n_base + 16
    assert trainable[:2] == [f"{BLOCKS[0]}.attn1.to_q.lora_down", f"{BLOCKS[0]}.attn1.to_q.lora_up"]
    down, up = unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q.lora_down, \
        unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q.lora_up
    assert down.shape == (4, 32) and up.shape == (32, 4) and not up.asnumpy().any()
    with pytest.raises(ConfigError, match="temporal"):
        lora.select_layers(unet, "temporal")


def test_zero_adapters_are_bit_identical_and_merge_equals_unmerged():
    unet = tiny_unet()
    inputs = unet_inputs()
    base = unet(*inputs, 4).asnumpy()
    names = [p.name for p in unet.get_parameters()]
    weights = {p.name: p.asnumpy() for p in unet.get_parameters()}
    lora.apply_lora(unet, "all", 2, 4.0, seed=0)
    zero = unet(*inputs, 4).asnumpy()
    assert np.array_equal(zero, base), f"max |diff| {np.abs(zero - base).max()}"
    randomise_up(unet)
    unmerged = unet(*inputs, 4).asnumpy()
    layer = unet.middle_block[1].transformer_blocks[0].attn1.to_v
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 5, 32)).astype(np.float32))
    graph_err = float(np.abs(ms.jit(layer.construct)(x).asnumpy() - layer(x).asnumpy()).max())
    layers = lora.wrapped_layers(unet)
    expected_w = {c.weight.name: weights[c.weight.name] + c.scale * c.lora_up.asnumpy() @ c.lora_down.asnumpy()
                  for c in layers.values()}
    assert lora.merge_lora(unet) == 40 and not lora.wrapped_layers(unet)
    merged = unet(*inputs, 4).asnumpy()
    change = float(np.abs(unmerged - base).max())
    err = float(np.abs(merged - unmerged).max())
    tol = 1e-5 * max(1.0, float(np.abs(unmerged).max()))
    print(f"adapters change the output by {change:.3f}; merged vs unmerged {err:.2e} (tol {tol:.1e}); "
          f"a LoRADense compiled vs PyNative {graph_err:.1e}")
    assert change > 0.1
    assert err <= tol and graph_err <= 1e-6
    assert [p.name for p in unet.get_parameters()] == names  # the plain UNet again, same names
    for p in unet.get_parameters():
        want = expected_w.get(p.name, weights[p.name])
        assert np.allclose(p.asnumpy(), want, rtol=0, atol=1e-6), p.name


@pytest.fixture(scope="module")
def trained(files):
    """configs/tiny-lora.yaml through launch.py: one step of adapters on the base checkpoint (PyNative, to keep
    the test short; the compiled step runs in configs/demo-lora.yaml, and a compiled LoRADense is checked above)."""
    trainer = launch.main(["--config", TINY_LORA, "--train", f"exp_root_dir={files['dir'] / 'out'}",
                           f"data.path={files['dataset']}", f"system.init_checkpoint={files['base']}",
                           "system.jit=false", "trainer.max_steps=1"])
    return trainer


def test_training_optimises_and_saves_only_adapters(files, trained):
    from mindspore_impl.core.checkpoint import read_params
    system, root = trained.system, trained.trial.root
    opt_names = [p.name for p in system.optimizer.parameters]
    assert len(opt_names) == 80 and all(n.endswith((".lora_down", ".lora_up")) for n in opt_names)
    assert all(p.name in opt_names for p in system.unet.trainable_params())
    assert not system.text_encoder.trainable_params() and not system.first_stage.trainable_params()
    # the base weights are the checkpoint's, bit for bit, after the steps; the adapters moved
    base = read_params(files["base"])
    named = system.named
    frozen = [k for k in base]
    assert all(np.array_equal(named[k].asnumpy(), base[k]) for k in frozen)
    ups = [p.asnumpy() for k, p in named.items() if k.endswith(".lora_up")]
    assert len(ups) == 40 and min(float(np.abs(u).max()) for u in ups) > 0
    # training checkpoint: adapters + their AdamW moments + the step, nothing of the base
    ckpt = read_params(os.path.join(root, "ckpts", "last.ckpt"))
    model_keys = sorted(k for k in ckpt if k.startswith("model."))
    print(f"checkpoint: {len(ckpt)} arrays, {len(model_keys)} model arrays, "
          f"{sum(v.size for v in ckpt.values())} values (base model {sum(v.size for v in base.values())})")
    assert len(model_keys) == 80 and all(k.endswith((".lora_down", ".lora_up")) for k in model_keys)
    assert not [k for k in ckpt if not k.startswith(("model.", "optimizer."))]
    # export: lora.safetensors, the adapters alone + a record naming the base
    path = os.path.join(root, "save", "it1-export", "lora.safetensors")
    arrays, record = lora.read_lora(path)
    print("export record:", record)
    assert len(arrays) == 80 and all(k.startswith(UNET_PREFIX) for k in arrays)
    assert {k: record[k] for k in ("mode", "rank", "alpha", "base_checkpoint", "step")} == \
        {"mode": "all", "rank": 2, "alpha": 4.0, "base_checkpoint": files["base"], "step": 1}
    assert all(np.array_equal(arrays[k], named[k].asnumpy()) for k in arrays)
    # a fresh system restores the adapters from the last checkpoint exactly
    fresh = launch.main(["--config", TINY_LORA, "--export", f"exp_root_dir={files['dir'] / 'out'}", "name=again",
                         f"data.path={files['dataset']}", f"system.init_checkpoint={files['base']}",
                         f"resume={os.path.join(root, 'ckpts', 'last.ckpt')}"])
    again = arrays_of(fresh.system.named)
    assert all(np.array_equal(again[k], named[k].asnumpy()) for k in named)


def _t2i(files, outdir, *extra):
    from scripts import t2i
    return t2i.main(["a red cube", "--ckpt", files["base"], "--config", TINY_MODEL, "--tokenizer", TOKENIZER,
                     "--size", "8", "--steps", "2", "--scale", "3", "--n_samples", "1", "--suffix", "",
                     "--outdir", str(outdir), *extra])


def test_t2i_and_guidance_load_a_saved_adapter_file(files, trained):
    import imageio.v3 as iio
    from mindspore_impl.core.checkpoint import read_params
    from mindspore_impl.lift3d.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance
    from mindspore_impl.mvdream.pipeline import MVDreamPipeline
    base = read_params(files["base"])
    adapters, scale = files["adapter_arrays"], 4.0 / 2

    def expected_weight(key):  # key: a model.diffusion_model.* weight
        path = key[len(UNET_PREFIX):-len(".weight")]
        down = adapters.get(f"{UNET_PREFIX}{path}.lora_down")
        if down is None:
            return base[key]
        return base[key] + scale * adapters[f"{UNET_PREFIX}{path}.lora_up"] @ down

    def check_unet(unet):
        params = {UNET_PREFIX + name: p.asnumpy() for name, p in unet.parameters_and_names()}
        err = max(float(np.abs(v - expected_weight(k)).max()) for k, v in params.items())
        changed = sum(not np.array_equal(v, base[k]) for k, v in params.items())
        return err, changed

    pipe = MVDreamPipeline.from_checkpoint(files["base"], TINY_MODEL, TOKENIZER, lora_path=files["adapters"])
    err, changed = check_unet(pipe.unet)
    assert err <= 1e-6 and changed == 40, (err, changed)
    guidance = MultiviewDiffusionGuidance.from_config(
        {"ckpt_path": files["base"], "config_path": TINY_MODEL, "lora_path": files["adapters"], "image_size": 8})
    err_g, changed_g = check_unet(guidance.unet)
    print(f"pipeline: {changed} weights folded, max err {err:.1e}; guidance: {changed_g}, max err {err_g:.1e}")
    assert err_g <= 1e-6 and changed_g == 40
    # the exported file of the training run loads as well
    MVDreamPipeline.from_checkpoint(files["base"], TINY_MODEL, TOKENIZER, lora_path=os.path.join(
        trained.trial.root, "save", "it1-export", "lora.safetensors"))

    # t2i --lora: the merged model samples what the unmerged adapters sample, and not what the base samples
    assert _t2i(files, files["dir"] / "t2i_base") == 0
    assert _t2i(files, files["dir"] / "t2i_lora", "--lora", files["adapters"]) == 0
    grid_base = iio.imread(files["dir"] / "t2i_base" / "grid.png").astype(np.int32)
    grid_lora = iio.imread(files["dir"] / "t2i_lora" / "grid.png").astype(np.int32)
    ref = MVDreamPipeline.from_checkpoint(files["base"], TINY_MODEL, TOKENIZER)
    lora.apply_lora(ref.unet, "all", 2, 4.0)
    for k, p in lora.lora_parameters(ref.unet).items():
        p.set_data(ms.Tensor(adapters[k]))
    unmerged = np.concatenate(list(ref("a red cube", steps=2, scale=3.0, seed=23, height=8, width=8)), axis=1)
    diff_base = float(np.abs(grid_lora - grid_base).mean())
    diff_ref = int(np.abs(grid_lora - unmerged.astype(np.int32)).max())
    print(f"t2i --lora vs base: mean |diff| {diff_base:.1f}/255; vs unmerged adapters: max |diff| {diff_ref}")
    assert diff_base > 5.0 and diff_ref <= 1


def test_bad_adapter_files_are_one_line_errors(files, tmp_path, capsys):
    from mindspore_impl.mvdream.pipeline import MVDreamPipeline
    arrays = files["adapter_arrays"]
    record = {"mode": "all", "rank": 2, "alpha": 4.0, "base_checkpoint": files["base"]}
    cases = {}
    # adapters of another model (the demo model's UNet: other widths)
    demo = loading.build_model(load_model_config(os.path.join(ROOT, "configs", "demo-model.yaml")), "unet")
    lora.apply_lora(demo, "qk", 2, 2.0)
    cases["model"] = (arrays_of(lora.lora_parameters(demo)), {**record, "mode": "qk"}, "do not fit this UNet")
    key = f"{UNET_PREFIX}{BLOCKS[1]}.attn2.to_k.lora_down"
    cases["shapes"] = ({**arrays, key: arrays[key][:, :16]}, record, r"shape mismatches \(1\): " + key)
    # a record whose mode does not select the layers in the file, an unknown mode, a rank the arrays lack
    cases["mode"] = (arrays, {**record, "mode": "self_attn"}, "not adapters of mode 'self_attn'")
    cases["unknown"] = (arrays, {**record, "mode": "temporal"}, "unknown LoRA mode 'temporal'")
    cases["rank"] = (arrays, {**record, "rank": 3}, "shape mismatches")
    for name, (arr, rec, message) in cases.items():
        path = str(tmp_path / f"{name}.safetensors")
        lora.save_lora(path, arr, rec)
        with pytest.raises(lora.LoRAError, match=message):
            MVDreamPipeline.from_checkpoint(files["base"], TINY_MODEL, TOKENIZER, lora_path=path)
    # through the command line: exit code 2 and one line, before sampling
    capsys.readouterr()
    assert _t2i(files, tmp_path / "t2i", "--lora", str(tmp_path / "mode.safetensors")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    print(err)
    assert len(err) == 1 and err[0].startswith("error: ") and "mode 'self_attn'" in err[0]
    assert _t2i(files, tmp_path / "t2i", "--lora", files["base"]) == 2  # a model checkpoint, not adapters
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adapter files are .safetensors" in err[0]
    # config errors of the training system
    with pytest.raises(ConfigError, match="mode must be one of"):
        launch.main(["--config", TINY_LORA, "--train", f"exp_root_dir={tmp_path / 'out'}",
                     f"data.path={files['dataset']}", f"system.init_checkpoint={files['base']}",
                     "system.lora.mode=temporal"])
    with pytest.raises(ConfigError, match="init_checkpoint"):
        launch.main(["--config", TINY_LORA, "--train", f"exp_root_dir={tmp_path / 'out'}",
                     f"data.path={files['dataset']}"])
