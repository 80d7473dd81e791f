"""TorchAdam (core/optim.py) vs torch.optim.AdamW / Adam with parameter groups; jit step equals PyNative."""
import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn

from mindspore_impl.core.optim import build_optimizer
from tests.parity import assert_parity


def _arrays(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (3,), (5,))]


@pytest.mark.parametrize("name", ["AdamW", "Adam"])
def test_matches_torch_over_steps(name):
    init = _arrays(0)
    grads = [_arrays(10 + k) for k in range(5)]
    args = {"betas": [0.9, 0.99], "eps": 1e-15, "weight_decay": 0.05}
    lrs = [0.01, 0.001]

    ms_params = [ms.Parameter(ms.Tensor(a), name=f"p{i}") for i, a in enumerate(init)]
    opt = build_optimizer(name, [{"name": "enc", "params": ms_params[:2], "lr": lrs[0]},
                                 {"name": "bg", "params": ms_params[2:], "lr": lrs[1]}], args)
    t_params = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    t_opt = getattr(torch.optim, name)([{"params": t_params[:2], "lr": lrs[0]}, {"params": t_params[2:], "lr": lrs[1]}],
                                       betas=(0.9, 0.99), eps=1e-15, weight_decay=0.05)
    for g in grads:
        opt(tuple(ms.Tensor(x) for x in g))
        for p, x in zip(t_params, g):
            p.grad = torch.tensor(x)
        t_opt.step()
    for i, (p, tp) in enumerate(zip(ms_params, t_params)):
        assert_parity(p.asnumpy(), tp.detach().numpy(), f"{name} param {i} after 5 steps", rel=1e-6)
    m = opt.state_arrays()
    assert_parity(m["exp_avg.p0"], t_opt.state[t_params[0]]["exp_avg"].numpy(), "exp_avg p0", rel=1e-6)
    assert int(m["optimizer_step"]) == 5


def test_jit_step_equals_pynative():
    def run(jit):
        net = nn.Dense(3, 2)
        rng = np.random.default_rng(1)
        net.weight.set_data(ms.Tensor(rng.standard_normal((2, 3)).astype(np.float32)))
        net.bias.set_data(ms.Tensor(np.zeros(2, np.float32)))
        opt = build_optimizer("AdamW", [{"params": net.trainable_params(), "lr": 0.01}], {"eps": 1e-15})

        def loss_fn(x):
            return (net(x) ** 2).mean()

        grad_fn = ms.value_and_grad(loss_fn, None, opt.parameters)

        def step(x):
            loss, grads = grad_fn(x)
            opt(grads)
            return loss

        step = ms.jit(step) if jit else step
        x = ms.Tensor(rng.standard_normal((4, 3)).astype(np.float32))
        losses = [float(step(x).asnumpy()) for _ in range(3)]
        return losses, net.weight.asnumpy()

    (l_py, w_py), (l_jit, w_jit) = run(False), run(True)
    print(f"pynative losses {l_py}, jit losses {l_jit}")
    assert np.allclose(l_py, l_jit, rtol=1e-6, atol=0)
    assert_parity(w_jit, w_py, "weights after 3 jit steps", rel=1e-6)


def test_bad_optimizer_specs():
    p = [ms.Parameter(ms.Tensor(np.zeros(2, np.float32)), name="w")]
    with pytest.raises(ValueError, match="unsupported optimizer 'SGD'"):
        build_optimizer("SGD", [{"params": p}], {})
    with pytest.raises(ValueError, match=r"unsupported AdamW args \['amsgrad'\]"):
        build_optimizer("AdamW", [{"params": p}], {"amsgrad": True})
