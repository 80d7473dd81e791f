"""One full MVDream training step (render -> multiview SDS loss -> AdamW update) in MindSpore and in the
torch_ref twin, on the same weights, rays, jitter, background colour, timestep and noises:
the loss, the AdamW first moments (0.1 x the gradients) and the updated parameters match;
the same step compiled in GRAPH mode gives the same loss and parameters.

Models: the tiny random MVDream checkpoint of scripts/make_tiny_checkpoint.py (its original-layout
.pt feeds the torch side, its converted .ckpt the MindSpore side), configs/tiny-sds.yaml at 16x16.
"""
import copy
import os
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import launch
from convert.io import read_torch_checkpoint
from neutral.mvdream.model_config import load_model_config
from scripts.make_tiny_checkpoint import PARTS, make_tiny_checkpoint
from tests.parity import assert_parity
from torch_ref.lift3d.systems import mvdream_system as twin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SDS = os.path.join(ROOT, "configs", "tiny-sds.yaml")
# tiny-sds anneals t from 980 to [20, 500] over 8 steps; at step 6 t is in [260, 620]. (At t=980 x0 divides
# by sqrt(alpha_bar) = 0.07 after CFG 50: float noise of the UNet is amplified past 1e-4 in the gradients.)
STEP = 6


def tiny_overrides(paths: dict, cache_dir: str) -> list:
    """configs/tiny-sds.yaml pointed at a fresh tiny checkpoint, 16x16 renders, 8 samples per ray."""
    return [f"system.guidance.ckpt_path={paths['ckpt']}", f"system.guidance.config_path={paths['config']}",
            f"system.prompt_processor.tokenizer_path={paths['tokenizer']}",
            f"system.prompt_processor.cache_dir={cache_dir}", "data.width=16", "data.height=16",
            "system.renderer.num_samples_per_ray=8"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_ckpt")
    paths = make_tiny_checkpoint(str(root / "tiny-mvdream"), seed=0, log=lambda *_: None)
    return paths, str(root / "cache")


def build_ms_system(cfg):
    launch.import_modules()
    from neutral import registry
    dm = registry.find(cfg.data_type)(OmegaConf.to_container(cfg.data, resolve=True), seed=0)
    system = registry.find(cfg.system_type)(OmegaConf.to_container(cfg.system, resolve=True), seed=0)
    return dm, system


def torch_guidance(ms_system, paths):
    """The torch_ref guidance with the UNet and VAE read back from the original-layout .pt."""
    from torch_ref.lift3d.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance
    from torch_ref.mvdream import schedule, unet, vae
    params = load_model_config(paths["config"])
    state = read_torch_checkpoint(paths["pt"])
    models = {}
    for name, prefix, key in PARTS[:2]:
        module = {"unet": unet, "vae": vae}[name].build_from_config(dict(params[key]["params"])).eval()
        module.load_state_dict({k[len(prefix):]: torch.from_numpy(v) for k, v in state.items()
                                if k.startswith(prefix)}, strict=True)
        models[name] = module
    noise = schedule.NoiseSchedule(params["timesteps"], params["linear_start"], params["linear_end"])
    return MultiviewDiffusionGuidance(ms_system.guidance.cfg, models["unet"], models["vae"], noise,
                                      params["scale_factor"])


def torch_twin(ms_system, sys_cfg):
    """torch_ref geometry / material / background / renderer with the MindSpore system's current values."""
    from torch_ref.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground
    from torch_ref.lift3d.geometry.implicit_volume import ImplicitVolume
    from torch_ref.lift3d.materials.diffuse_with_point_light import DiffuseWithPointLightMaterial
    from torch_ref.lift3d.materials.no_material import NoMaterial
    from torch_ref.lift3d.renderers import NeRFVolumeRenderer
    sub = OmegaConf.to_container(sys_cfg, resolve=True)
    geo = ImplicitVolume(sub["geometry"])
    materials = {"no-material": NoMaterial, "diffuse-with-point-light-material": DiffuseWithPointLightMaterial}
    mat = materials[sub["material_type"]](sub["material"])
    bg = NeuralEnvironmentMapBackground(sub["background"])
    renderer = NeRFVolumeRenderer(sub["renderer"], geo, mat, bg)
    modules = SimpleNamespace(geometry=geo, material=mat, background=bg, renderer=renderer)
    copy_ms_to_torch(ms_system, modules)
    return modules


def copy_ms_to_torch(ms_system, modules):
    """Parameters and buffers by name: MindSpore '<module>.<path>' = torch module <module>'s '<path>'."""
    covered = set()
    for name, p in ms_system.model_parameters().items():
        mod_name, path = name.split(".", 1)
        target = getattr(modules, mod_name).state_dict(keep_vars=True)
        assert path in target, f"{name}: no '{path}' in torch {mod_name} ({sorted(target)})"
        with torch.no_grad():
            target[path].copy_(torch.from_numpy(p.asnumpy()))
        covered.add((mod_name, path))
    for mod_name in ("geometry", "material", "background", "renderer"):
        missing = [k for k in getattr(modules, mod_name).state_dict() if (mod_name, k) not in covered]
        assert not missing, f"torch {mod_name} state not set from MindSpore: {missing}"


def texture_field(ms_system, seed: int = 3):
    """A textured field and background instead of the init. The untrained system renders an almost uniform
    grey image (std 0.005), where the VAE's first GroupNorm divides by a near-zero std: there the gradient is
    ill-conditioned (torch alone moves 1e-3 relative for a 1e-7 change of the image), a property of the input."""
    rng = np.random.default_rng(seed)
    for p in ms_system.geometry.trainable_params() + ms_system.background.trainable_params():
        if p.name.endswith("encoding.params"):
            value = rng.uniform(-1, 1, p.shape)
        else:  # dense weights (out, in): He-normal, three times wider, for saturated colours
            value = rng.standard_normal(p.shape) * 3.0 * np.sqrt(2.0 / p.shape[1])
        p.set_data(ms.Tensor(value.astype(np.float32)))


def trained_state(ms_system):
    params = {p.name: p.asnumpy().copy() for p in ms_system.optimizer.parameters}
    moments = {p.name[len("exp_avg."):]: p.asnumpy().copy() for p in ms_system.optimizer.exp_avg}
    return params, moments


def torch_trained_state(modules, optimizer):
    params, moments = {}, {}
    for group in optimizer.param_groups:
        prefix = group["name"]
        owner = twin.get_by_path(modules, prefix)
        for sub, p in owner.named_parameters():
            name = f"{prefix}.{sub}"
            params[name] = p.detach().numpy()
            moments[name] = optimizer.state[p]["exp_avg"].numpy()
    return params, moments


SHADING = {"geometry.normal_type": "analytic", "material_type": "diffuse-with-point-light-material",
           "material": {"ambient_only_steps": 0, "soft_shading": True, "textureless_prob": 0.5,
                        "ambient_light_color": [1.0, 1.0, 1.0], "diffuse_light_color": [0.0, 0.0, 0.0]},
           "loss.lambda_orient": 10.0, "loss.lambda_sparsity": 1.0, "loss.lambda_opaque": 1.0,
           "loss.lambda_z_variance": 1.0, "grad_clip": 0.5}


def tiny_config(tiny, shading: bool):
    paths, cache = tiny
    cfg = launch.load_config(TINY_SDS, tiny_overrides(paths, cache))
    if shading:  # mvdream-sd21-shading's modules (shaded from step 0) and every regulariser on
        for key, value in SHADING.items():
            OmegaConf.update(cfg.system, key, value, merge=False)
    return cfg


def check_step_parity(tiny, cfg, expect_terms):
    """One step in both frameworks from the same state; returns (system, inputs, snapshot, metrics, params)."""
    paths, _ = tiny
    dm, system = build_ms_system(cfg)
    texture_field(system)
    system.configure_optimizers()
    system.on_train_batch_start(STEP)  # occupancy-grid update and timestep range
    inputs = system.draw_step_inputs(dm.sample(STEP))
    assert inputs["rays_o"].shape == (4, 16, 16, 3) and inputs["jitter"].shape == (4, 16, 16, 8)
    assert 260 <= int(inputs["t"][0]) <= 620  # annealed range at STEP
    snapshot = tuple(map(copy.deepcopy, system.state_dict()))  # asnumpy() may share the parameters' memory

    modules = torch_twin(system, cfg.system)
    guidance = torch_guidance(system, paths)
    guidance.update_step(STEP)
    optimizer = twin.build_optimizer(modules, OmegaConf.to_container(cfg.system.optimizer, resolve=True))

    metrics = system.run_step(inputs)
    t_loss, t_terms = twin.training_step(modules.renderer, guidance, optimizer, inputs, system.loss_active,
                                         grad_clip=cfg.system.get("grad_clip"))
    print(f"shading {inputs['shading']}; loss: MindSpore {metrics['loss']:.6f}  torch {t_loss:.6f}")
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert_parity(np.float32(metrics["loss"]), np.float32(t_loss), "step loss")
    for i, term in enumerate(twin.LOSS_TERMS):
        if term in expect_terms:
            assert t_terms[i] > 0, f"loss_{term} is zero: the test would not see it"
            assert_parity(np.float32(metrics[f"loss_{term}"]), np.float32(t_terms[i]), f"loss_{term}")
        else:
            assert f"loss_{term}" not in metrics and t_terms[i] == 0

    ms_params, ms_moments = trained_state(system)
    t_params, t_moments = torch_trained_state(modules, optimizer)
    assert sorted(ms_params) == sorted(t_params)
    for name in sorted(ms_params):
        ref = t_moments[name]
        scale = float(np.abs(ref).max())
        if scale > 0:  # exp_avg = 0.1 * grad after one step: the gradients, relative to their size
            assert_parity(ms_moments[name] / scale, ref / scale, f"exp_avg (grad) {name} / {scale:.2e}")
        else:
            assert np.abs(ms_moments[name]).max() == 0, name
        assert_parity(ms_params[name], t_params[name], f"updated {name}")
    moved = max(float(np.abs(ms_params[k] - snapshot[0]["model." + k]).max()) for k in ms_params)
    assert moved > 1e-4, "the step did not change the parameters"
    return system, inputs, snapshot, metrics, ms_params


def test_one_training_step_matches_torch_and_graph(tiny):
    cfg = tiny_config(tiny, shading=False)
    system, inputs, snapshot, metrics, ms_params = check_step_parity(tiny, cfg, ("sds",))

    # the same step compiled as one graph, from the same state
    system.load_state_dict(*snapshot)
    system._steps.clear()
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
    assert abs(amp["loss"] - plain["loss"]) <= 1e-2 * plain["loss"]
    assert all(np.isfinite(p.asnumpy()).all() for p in half.optimizer.parameters)
