"""MindSpore vs torch_ref multiview diffusion training: the loss and its gradients (pixel-space and VAE
first stage), and two full AdamW steps (the MindSpore one built by core/train_step.py, as the training system
mvdream/diffusion_system.py builds it), from the same converted weights, batch, timesteps and noise."""
import numpy as np
import pytest

from tests.parity import assert_parity, to_numpy, torch_device, torch_module
from tests.parity_cases import mvdiffusion_loss_case, mvdiffusion_torch_models as _torch_models, numpy_state
from tests.test_train_mvdiffusion import files, random_data  # noqa: F401  (files is a fixture)


@pytest.mark.parametrize("config", ["pixel", "vae"])
def test_loss_parity_with_torch(files, config):
    """Same weights (through the converter), same batch, t, dropout and noise: loss and gradients agree."""
    case = mvdiffusion_loss_case(config, files["tokenizer"])
    assert_parity(*case["loss"], f"{config} training loss")
    for ms_name, (got, ref) in case["grads"].items():
        assert_parity(got, ref, f"{config} grad {ms_name}", rel=1e-4)
    assert case["trained_text"] > 0  # text is trained


def test_train_step_parity_with_torch(files):
    """Two full steps (loss, backward, global-norm clip, AdamW) in both frameworks from the same weights
    and batch: the second loss and the updated weights agree (MindSpore step uncompiled here)."""

    from neutral.mvdream.model_config import load_model_config
    from convert.pt2ms import convert_state_dict
    from mindspore_impl.core.optim import build_optimizer
    from mindspore_impl.core.train_step import loss_forward, make_train_step
    from mindspore_impl.mvdream import first_stage as ms_fs, text_encoder as ms_te, unet as ms_unet
    from mindspore_impl.mvdream.schedule import NoiseSchedule
    from neutral.mvdream.tokenizer import load_tokenizer
    from mindspore_impl.mvdream.training import MultiviewDiffusionLoss, load_named, model_parameters, step_inputs
    from neutral.mvdream.training import images_to_model, sample_step_noise
    from torch_ref.mvdream import schedule as t_schedule, training as t_training

    mp = load_model_config(files["model_config"])
    tu, tfs, tte = _torch_models(mp, seed=7)
    state = {}
    for prefix, m in (("model.diffusion_model.", tu), ("cond_stage_model.model.", tte)):
        state.update(numpy_state(m, prefix))
    mu = ms_unet.build_from_config(dict(mp["unet_config"]["params"]))
    mfs = ms_fs.build_first_stage(dict(mp["first_stage_config"]))
    mte = ms_te.build_from_config(dict(mp["cond_stage_config"]["params"]))
    named = model_parameters(mu, mfs, mte)
    load_named(named, convert_state_dict(state, mp, log=lambda *_: None), "converted torch weights")
    tok = load_tokenizer(files["tokenizer"])
    data = random_data(n=2, size=8, seed=4)
    batch = {"images": images_to_model(data["images"]), "camera": data["cameras"].reshape(-1, 16),
             "tokens": tok(data["captions"]).astype(np.int32)}
    batch.update(sample_step_noise(np.random.default_rng(9), 2, 4, (12, 4, 4), 1000, 0.5, "object"))
    empty = tok([""])
    hp = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    m_loss = MultiviewDiffusionLoss(mu, mfs, mte, NoiseSchedule(), empty, 4, 1.0)
    opt = build_optimizer("AdamW", [{"params": list(named.values())}],
                          {"lr": hp["lr"], "betas": hp["betas"], "eps": hp["eps"], "weight_decay": hp["weight_decay"]})
    m_step = make_train_step(loss_forward(m_loss), opt, grad_clip=0.05, jit=False)
    t_loss = torch_module(t_training.MultiviewDiffusionLoss(tu, tfs, tte, t_schedule.NoiseSchedule(), empty, 4, 1.0))
    t_step = t_training.make_train_step(t_loss, list(tu.parameters()) + list(tte.parameters()), grad_clip=0.05, **hp)
    ms_losses = [float(m_step(*step_inputs(batch))[0].asnumpy()) for _ in range(2)]
    t_losses = [float(t_step(*t_training.step_inputs(batch, torch_device()))) for _ in range(2)]
    print(f"two-step losses: MindSpore {ms_losses}, torch {t_losses}")
    assert_parity(np.array(ms_losses), np.array(t_losses), "losses of steps 1-2 (AdamW, clip)")
    assert_parity(named["model.diffusion_model.out.2.weight"].asnumpy(), to_numpy(tu.out[2].weight),
                  "UNet out.2.weight after 2 steps", rel=1e-4)
    assert_parity(named["cond_stage_model.model.token_embedding.embedding_table"].asnumpy(),
                  to_numpy(tte.token_embedding.weight), "token_embedding after 2 steps", rel=1e-4)
