"""GeNVS training as a system (mindspore_impl/genvs/system.py, mindspore_impl/genvs/training.py and its twin
torch_ref/genvs/training.py, neutral/genvs/training.py, configs/tiny-genvs.yaml) on procedural scenes written into
tmp_path (scripts/make_genvs_dataset.py, 5 scenes x 8 views at 16x16):

- launch.py --train end to end: checkpoints, metrics.csv with every loss term and both validation PSNRs,
  validation images, the test orbit and the export;
- exact resume: the step-2 checkpoint replays steps 3-4 bit for bit; a fresh process restores the same arrays;
- the compiled step (ms.jit, the tiny config) equals the PyNative one, losses and parameters after 2 steps;
- the loss falls when one fixed batch (fixed draws) is trained on;
- the loss cell against its torch twin (values and every parameter's gradient) and the field's view mask
  (masked slots contribute nothing; both trees);
- config errors are one-line UserErrors before any model is built and before the trial folder.
"""
import csv
import json
import os
import re

import mindspore as ms
import numpy as np
import pytest
import torch

import launch
from neutral.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "tiny-genvs.yaml")
SCENE_ARGS = ["--num_scenes", "5", "--size", "16", "--views", "8", "8", "--supersample", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from scripts import make_genvs_dataset
    root = str(tmp_path_factory.mktemp("genvs") / "scenes")
    assert make_genvs_dataset.main(["--out", root, *SCENE_ARGS]) == 0
    return root


def _launch(scenes, out, *args, mode="--train"):
    return launch.main(["--config", TINY_CONFIG, mode, f"exp_root_dir={out}", f"data.root={scenes}", *args])


def _rows(root):
    with open(os.path.join(root, "metrics.jsonl")) as f:
        return [json.loads(r) for r in f]


def _config(scenes, **system):
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(TINY_CONFIG)
    cfg.data.root = scenes
    cfg.system = OmegaConf.merge(cfg.system, system)
    return OmegaConf.to_container(cfg, resolve=True)


def _build(scenes, **system):
    from mindspore_impl.genvs.system import GeNVSSystem
    from neutral.genvs.srn_dataset import SRNDataModule
    cfg = _config(scenes, **system)
    return GeNVSSystem(cfg["system"], seed=cfg["seed"]), SRNDataModule(cfg["data"], seed=cfg["seed"])


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory):
    """configs/tiny-genvs.yaml through launch.py: 4 compiled steps, validation and checkpoints at 2 and 4, the
    test orbit (8 views) and the export."""
    out = tmp_path_factory.mktemp("runs")
    trainer = _launch(scenes, out, "name=full")
    return {"trainer": trainer, "root": trainer.trial.root, "out": out, "rows": _rows(trainer.trial.root)}


def test_launch_train_writes_checkpoints_metrics_and_images(run):
    import imageio.v2 as imageio2
    root = run["root"]
    assert {"step000002.ckpt", "step000004.ckpt", "last.ckpt"} <= set(os.listdir(os.path.join(root, "ckpts")))
    with open(os.path.join(root, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    train = {int(r["step"]): r for r in rows if r["loss"]}
    val = {int(r["step"]): r for r in rows if r.get("val_psnr_render")}
    print("losses", {s: float(r["loss"]) for s, r in train.items()},
          "val PSNR render / sample", {s: (r["val_psnr_render"], r["val_psnr_sample"]) for s, r in val.items()})
    assert sorted(train) == [1, 2, 3, 4] and sorted(val) == [2, 4]
    for r in train.values():
        terms = [float(r[f"loss_{t}"]) for t in ("diffusion", "rgb_target", "rgb_source", "opacity", "depth")]
        assert np.isfinite(terms).all() and min(terms) > 0
    assert all(0 < float(r["val_psnr_render"]) < 60 and 0 < float(r["val_psnr_sample"]) < 60 for r in val.values())
    save = set(os.listdir(os.path.join(root, "save")))
    assert {"it2-0.png", "it4-0.png", "it4-preview.png", "it4-test.mp4", "it4-export"} <= save
    # sources 0 and 1 | target | render RGB | EDM sample | opacity, each 16x16
    assert imageio2.imread(os.path.join(root, "save", "it4-0.png")).shape == (16, 6 * 16, 3)
    from mindspore_impl.core.checkpoint import read_params
    export = read_params(os.path.join(root, "save", "it4-export", "model.ckpt"))
    assert {k.split(".")[0] for k in export} == {"encoder", "renderer", "denoiser"}
    assert "renderer.field.layers.0.weight" in export and "denoiser.net.proj_in.weight" in export
    assert os.path.exists(os.path.join(root, "save", "it4-export", "config.yaml"))


def test_resume_continues_exactly(scenes, run):
    """Restoring the step-2 checkpoint (weights, AdamW moments and step, the system's generator) replays steps 3
    and 4 exactly; a fresh process (launch.py --export resume=...) restores the final checkpoint's arrays."""
    trainer, root = run["trainer"], run["root"]
    final_arrays, final_meta = trainer.state()
    assert trainer.restore(os.path.join(root, "ckpts", "step000002.ckpt")) == 2
    trainer.fit()
    replay = {r["step"]: r for r in _rows(root)[len(run["rows"]):] if "loss" in r}
    first = {r["step"]: r for r in run["rows"] if "loss" in r}
    print("steps 3-4:", [first[s]["loss"] for s in (3, 4)], "after resume from 2:", [replay[s]["loss"] for s in (3, 4)])
    assert sorted(replay) == [3, 4]
    for s in (3, 4):
        assert {k: v for k, v in replay[s].items() if k.startswith("loss")} == \
               {k: v for k, v in first[s].items() if k.startswith("loss")}, f"step {s} diverged after resume"
    again, meta = trainer.state()
    assert sorted(again) == sorted(final_arrays)
    assert max(float(np.abs(final_arrays[k] - again[k]).max()) for k in final_arrays) == 0.0
    assert meta["system"]["rng"] == final_meta["system"]["rng"]

    fresh = _launch(scenes, run["out"], "name=fresh", f"resume={os.path.join(root, 'ckpts', 'last.ckpt')}",
                    mode="--export")
    restored, _ = fresh.state()
    assert sorted(restored) == sorted(final_arrays)
    assert max(float(np.abs(final_arrays[k] - restored[k]).max()) for k in final_arrays) == 0.0


def test_pynative_step_equals_compiled_step(scenes, run):
    """The tiny config compiles its step (jit: true); the same system stepped in PyNative (jit: false) gives the
    same losses for steps 1-2 and the same parameters as the step-2 checkpoint."""
    from mindspore_impl.core.checkpoint import read_params
    system, dm = _build(scenes, jit=False)
    system.configure_optimizers()
    compiled = {r["step"]: r["loss"] for r in run["rows"] if "loss" in r}
    losses = [system.training_step(dm.sample(s), s)["loss"] for s in (0, 1)]
    print("PyNative", losses, "compiled", [compiled[1], compiled[2]])
    assert losses == pytest.approx([compiled[1], compiled[2]], rel=1e-5)
    ckpt = read_params(os.path.join(run["root"], "ckpts", "step000002.ckpt"))
    errs = {k: float(np.abs(p.asnumpy() - ckpt["model." + k]).max()) for k, p in system.model_parameters().items()}
    worst = max(errs, key=errs.get)
    print(f"max |PyNative - compiled| after 2 steps: {errs[worst]:.3e} ({worst})")
    assert errs[worst] <= 1e-5


def test_loss_falls_on_fixed_batch(scenes, run):
    """15 compiled steps on one fixed batch with fixed draws (sigma, noise, ray uniforms; no conditioning dropout).
    Measured from the run's weights after 4 steps: total 1.397 -> 0.762 (falling every step), diffusion
    1.151 -> 0.613, the target's RGB 0.1355 -> 0.0938."""
    system = run["trainer"].system
    batch = run["trainer"].dm.sample(100)
    arrays = system.step_arrays(batch)
    arrays["drop_mask"][:] = 0.0
    history = [system.run_step(arrays) for _ in range(15)]
    loss = [h["loss"] for h in history]
    rgb = [h["loss_rgb_target"] for h in history]
    diffusion = [h["loss_diffusion"] for h in history]
    print(f"fixed batch: loss {loss[0]:.3f} -> {loss[-1]:.3f}, diffusion {diffusion[0]:.3f} -> {diffusion[-1]:.3f}, "
          f"rgb {rgb[0]:.4f} -> {rgb[-1]:.4f}")
    assert np.isfinite(loss).all()
    assert loss[-1] < 0.6 * loss[0] and diffusion[-1] < 0.6 * diffusion[0] and rgb[-1] < 0.75 * rgb[0]


# ----------------------------------------------------------------------------- the twins


def _torch_loss_like(system, seed=0):
    """torch_ref's GeNVSLoss with random weights (proj_out drawn: upstream starts it at 0), copied into the
    MindSpore system by name (the encoder's GroupNorm weight / bias are gamma / beta there)."""
    from torch_ref.genvs.denoiser import GeNVSDenoiserUNet
    from torch_ref.genvs.edm import EDMPrecond
    from torch_ref.genvs.encoder import FrustumEncoder
    from torch_ref.genvs.field import ProjectedFeatureField
    from torch_ref.genvs.renderer import FeatureRenderer
    from torch_ref.genvs.training import GeNVSLoss
    from tests.parity import torch_module
    enc, fld, rend, den = system.model_cfgs
    torch.manual_seed(seed)
    t_loss = torch_module(GeNVSLoss(FrustumEncoder(enc), FeatureRenderer(rend, ProjectedFeatureField(fld)),
                                    EDMPrecond(GeNVSDenoiserUNet(den), system.cfg.sigma_data)))
    with torch.no_grad():
        t_loss.denoiser.net.proj_out.weight.normal_(0.0, 0.3)
        t_loss.denoiser.net.proj_out.bias.normal_(0.0, 0.1)
    state = {}
    for k, v in t_loss.state_dict().items():
        if k.startswith("encoder."):
            k = re.sub(r"norm\.weight$", "norm.gamma", re.sub(r"norm\.bias$", "norm.beta", k))
        state[k] = v.detach().cpu().numpy()
    params = system.model_parameters()
    assert set(params) == set(state), sorted(set(params) ^ set(state))
    for k, p in params.items():
        p.set_data(ms.Tensor(state[k].copy()))
    return t_loss


def test_loss_cell_parity_with_torch(scenes):
    from neutral.genvs.training import LOSS_TERMS, STEP_INPUTS
    from tests.parity import assert_parity, to_torch
    system, dm = _build(scenes)
    t_loss = _torch_loss_like(system)
    batch = dm.sample(7)
    batch["src_valid"][0, 1] = 0.0  # one object with a masked source slot
    arrays = system.step_arrays(batch)
    arrays["drop_mask"][:] = [1.0, 0.0]  # one conditioning replaced by noise
    cell = system.loss_cell
    params = cell.trainable_params()
    fn = ms.value_and_grad(lambda *a: cell(*a), None, params, has_aux=True)
    (loss_m, terms_m), grads_m = fn(*(ms.Tensor(arrays[k]) for k in STEP_INPUTS))
    loss_t, terms_t = t_loss(*(to_torch(arrays[k]) for k in STEP_INPUTS))
    loss_t.backward()
    print("terms", dict(zip(LOSS_TERMS, terms_m.asnumpy().round(5))))
    assert_parity(loss_m, loss_t, "total loss")
    for i, t in enumerate(LOSS_TERMS):
        assert_parity(terms_m[i], terms_t[i], f"loss term {t}")
    t_params = {k: v for k, v in t_loss.named_parameters()}
    for p, g in zip(params, grads_m):
        name = p.name
        if name.startswith("encoder."):
            name = re.sub(r"norm\.gamma$", "norm.weight", re.sub(r"norm\.beta$", "norm.bias", name))
        assert_parity(g, t_params[name].grad, f"d loss / d {p.name}")


def test_view_mask_parity_and_masked_slots_do_not_count():
    """ProjectedFeatureField(view_mask) in both trees: equal outputs and gradients; a masked slot changes nothing
    (the field equals the field of the valid views alone) and gets no gradient."""
    from tests.parity import assert_parity, to_torch
    from tests.test_genvs_model import field_pair, ms_t, source_views
    t_f, m_f = field_pair()
    c2w, k, vol = source_views(b=2, n=3)
    pts = np.random.default_rng(3).uniform(-1, 1, (2, 32, 3)).astype(np.float32)
    mask = np.array([[1, 0, 1], [1, 1, 0]], np.float32)

    def loss_ms(v):
        s, f = m_f(ms_t(pts), ms_t(c2w), ms_t(k), v, ms_t(mask))
        return s.sum() + f.sum(), s, f

    (_, s_m, f_m), g_m = ms.value_and_grad(loss_ms, 0, has_aux=True)(ms_t(vol))
    v_t = to_torch(vol, requires_grad=True)
    s_t, f_t = t_f(to_torch(pts), to_torch(c2w), to_torch(k), v_t, to_torch(mask))
    (s_t.sum() + f_t.sum()).backward()
    assert_parity(s_m, s_t, "masked field sigma")
    assert_parity(f_m, f_t, "masked field features")
    assert_parity(g_m, v_t.grad, "d masked field / d volumes")
    assert float(np.abs(g_m.asnumpy()[mask == 0]).max()) == 0.0
    for b in range(2):
        keep = np.flatnonzero(mask[b])
        s_b, f_b = m_f(ms_t(pts[b:b + 1]), ms_t(c2w[b:b + 1, keep]), ms_t(k[b:b + 1, keep]),
                       ms_t(vol[b:b + 1, keep]))
        np.testing.assert_allclose(s_m.asnumpy()[b], s_b.asnumpy()[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f_m.asnumpy()[b], f_b.asnumpy()[0], rtol=1e-5, atol=1e-6)
    s_all, _ = m_f(ms_t(pts), ms_t(c2w), ms_t(k), ms_t(vol), ms_t(np.ones((2, 3), np.float32)))
    np.testing.assert_allclose(s_all.asnumpy(), m_f(ms_t(pts), ms_t(c2w), ms_t(k), ms_t(vol))[0].asnumpy(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, denoiser_params", [("tiny-genvs", None), ("demo-genvs", 972_004),
                                                    ("genvs-srn-cars", 115_030_916)])
def test_shipped_configs_parse_and_pass_the_checks(name, denoiser_params):
    """Every GeNVS config parses and passes the system's checks (nothing is built); the demo's denoiser is the ~1 M
    parameter one, srn-cars' is upstream's size (tests/test_genvs_denoiser.py pins both counts)."""
    from mindspore_impl.genvs.system import GeNVSSystemConfig, check_settings
    from neutral.config import parse_structured
    from neutral.genvs.denoiser_config import denoiser_parameter_count
    cfg = launch.load_config(os.path.join(ROOT, "configs", f"{name}.yaml"), [])
    assert cfg.system_type == "genvs-system" and cfg.data_type == "srn-datamodule"
    system = parse_structured(GeNVSSystemConfig, launch._section(cfg, "system"), "system")
    _, _, _, den, _ = check_settings(system)
    assert cfg.data.image_size == system.image_size == 2 * system.render_size
    if denoiser_params is not None:
        assert denoiser_parameter_count(den) == denoiser_params


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("override, match", [
    ("system.field.feature_channels=4", r"field.feature_channels \(4\) must equal encoder.feature_channels \(8\)"),
    ("system.render_size=4", r"render_size \(4\) must be half of system.image_size \(16\)"),
    ("system.denoiser.cond_channels=8", r"denoiser.cond_channels \(8\) must equal system.field.out_features"),
    ("system.denoiser.image_size=32", r"denoiser.image_size \(32\) must equal system.image_size"),
    ("system.loss.lambda_colour=1.0", r"unknown weights \['lambda_colour'\]"),
    ("system.eval_sampler.solver=rk4", r"eval_sampler: .*solver must be one of euler, heun"),
    ("system.encoder.channel_mult=[1,2,2,2,2]", r"image_size \(16\) must be a multiple of 32"),
])
def test_config_errors_are_user_errors_before_any_work(scenes, tmp_path, override, match):
    from neutral.errors import UserError
    with pytest.raises(ConfigError, match=match) as info:
        _launch(scenes, tmp_path / "out", override)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "out")  # no trial folder


def test_config_error_is_one_line_on_the_command_line(scenes, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch._cli(["--config", TINY_CONFIG, "--train", f"exp_root_dir={tmp_path / 'out'}", f"data.root={scenes}",
                     "system.render_size=6"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    print(err)
    assert len(err) == 1 and err[0].startswith("error: system.render_size (6) must be half")
    assert not os.path.exists(tmp_path / "out")


def test_data_of_another_size_is_a_config_error(scenes):
    system, dm = _build(scenes)
    batch = dm.sample(0)
    batch["src_rgb"] = batch["src_rgb"][:, :, :8, :8]
    with pytest.raises(ConfigError, match="images are 8x8 but system.image_size is 16; set data.image_size"):
        system.step_arrays(batch)
