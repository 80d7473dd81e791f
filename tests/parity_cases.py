"""Builders of the parity checks, shared by the parity tests (tests/test_*_parity.py, test_hashgrid.py,
test_renderer_*.py) and scripts/parity_report.py: the torch_ref module with random weights, its MindSpore twin
with the same weights, the inputs, and one forward/backward in each framework
(docs/architecture.md, "The twin-tree rule").

The torch side runs on the run's torch device (tests/parity.py torch_device); modules are built and randomised
on the CPU (a CPU torch.Generator, so the weights are the same whatever the device), their state is read out
for MindSpore, then they move. Results come back as numpy through tests/parity.py to_numpy.
"""
from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import numpy as np

from tests.parity import to_numpy, to_torch, torch_device, torch_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "tiny-mvdream.yaml")


def numpy_state(module, prefix: str = "") -> dict:
    """A torch module's state dict as numpy (from any device), keys prefixed."""
    return {prefix + k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def load_model_params(path: str = TINY_CONFIG) -> dict:
    from neutral.mvdream.model_config import load_model_config
    return load_model_config(path)


# ------------------------------------------------------------------------------------------------ UNet


def tiny_unet_params(**overrides) -> dict:
    params = dict(load_model_params()["unet_config"]["params"])
    params.update(overrides)
    return params


def randomize_unet(module, seed: int) -> None:
    """Random weights everywhere (also the zero-initialised output convs, so every path is tested)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and name.endswith("weight"):  # GroupNorm / LayerNorm scales
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


def unet_ms_twin(torch_model, params: dict, tmp_dir: str):
    """MindSpore model holding torch_model's weights, moved through an original .pt and the converter."""
    import mindspore_impl.mvdream as ms_mvdream
    from convert.io import read_torch_checkpoint, write_torch_checkpoint
    from convert.keymaps import UNET
    from convert.pt2ms import convert_state_dict
    from mindspore_impl.core.checkpoint import load_state_dict
    path = os.path.join(tmp_dir, "unet-original.pt")
    write_torch_checkpoint(numpy_state(torch_model, UNET.prefix), path)
    converted = convert_state_dict(read_torch_checkpoint(path), {"unet_config": {"params": params}})
    model = ms_mvdream.MultiViewUNetModel(**params)
    load_state_dict(model, converted, prefix=UNET.prefix, strict=True)
    return model


def unet_pair(tmp_dir: str, seed: int = 0, **overrides):
    """(params, torch UNet on the torch device, MindSpore twin) of the tiny config with random weights."""
    import torch_ref.mvdream as pt_mvdream
    params = tiny_unet_params(**overrides)
    pt_model = pt_mvdream.MultiViewUNetModel(**params).eval()
    randomize_unet(pt_model, seed)
    ms_model = unet_ms_twin(pt_model, params, tmp_dir)
    return params, torch_module(pt_model), ms_model


def unet_inputs(batch: int, context_dim: int, camera: bool, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 4, 16, 16)).astype(np.float32)
    t = rng.integers(0, 1000, batch).astype(np.float32)
    ctx = rng.standard_normal((batch, 5, context_dim)).astype(np.float32)
    cam = rng.standard_normal((batch, 16)).astype(np.float32) if camera else None
    w = rng.standard_normal((batch, 4, 16, 16)).astype(np.float32)
    return x, t, ctx, cam, w


def unet_torch_run(model, x, t, ctx, cam, w, num_frames):
    """(output, d sum(out*w)/dx, d sum(out*w)/dcontext) as numpy."""
    xt, ct = to_torch(x, requires_grad=True), to_torch(ctx, requires_grad=True)
    out = model(xt, to_torch(t), ct, None if cam is None else to_torch(cam), num_frames=num_frames)
    (out * to_torch(w)).sum().backward()
    return to_numpy(out), to_numpy(xt.grad), to_numpy(ct.grad)


def unet_ms_run(model, x, t, ctx, cam, w, num_frames):
    import mindspore as ms
    cam_ms = None if cam is None else ms.Tensor(cam)

    def loss(xx, cc):
        out = model(xx, ms.Tensor(t), cc, cam_ms, num_frames)
        return (out * ms.Tensor(w)).sum(), out

    (_, out), (gx, gc) = ms.value_and_grad(loss, grad_position=(0, 1), has_aux=True)(ms.Tensor(x), ms.Tensor(ctx))
    return out.asnumpy(), gx.asnumpy(), gc.asnumpy()


# ------------------------------------------------------------------------------------------------ VAE


def randomize_vae(module, seed: int = 0) -> None:
    """Every parameter random (norm scales around 1), so a wrong key map cannot go unnoticed."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise * (0.5 / max(1, p[0].numel()) ** 0.5))


def vae_pair(model_params: dict, seed: int = 0):
    """torch VAE with random weights (on the torch device), and its MindSpore twin loaded through
    convert_state_dict."""
    from convert.keymaps import VAE
    from convert.pt2ms import convert_state_dict
    from mindspore_impl.core.checkpoint import load_state_dict
    from mindspore_impl.mvdream import vae as ms_vae
    from torch_ref.mvdream import vae as pt_vae
    params = model_params["first_stage_config"]["params"]
    pt = pt_vae.build_from_config(params).eval()
    randomize_vae(pt, seed)
    original = numpy_state(pt, VAE.prefix)
    converted = convert_state_dict(original, model_params, parts=["vae"], log=lambda *_: None)
    ms_model = ms_vae.build_from_config(params)
    loaded = load_state_dict(ms_model, converted, prefix=VAE.prefix, strict=True)
    assert len(loaded) == len(original)
    return torch_module(pt), ms_model


def vae_inputs(seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    noise = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    z = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    g = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    return x, noise, z, g


def vae_with_attention(model_params: dict) -> dict:
    """Tiny config with attention at resolution 16 (down level 1 and up level 1)."""
    mp = copy.deepcopy(model_params)
    mp["first_stage_config"]["params"]["ddconfig"]["attn_resolutions"] = [16]
    return mp


def sds_latents_loss(msm, noise, g):
    """MindSpore image -> scaled latent sample -> sum(latents * g) (what SDS differentiates)."""
    def loss(img):
        latents = msm.encode(img).sample(noise) * 0.18215
        return (latents * g).sum()
    return loss


# ------------------------------------------------------------------------------------------------ text tower


def text_with_layer(model_params: dict, layer: str) -> dict:
    mp = copy.deepcopy(model_params)
    mp["cond_stage_config"]["params"]["layer"] = layer
    return mp


def text_torch_model(model_params: dict, seed: int = 0):
    """torch_ref text tower with random weights everywhere (LayerNorm scales around 1) so a wrong key map
    shows; on the torch device."""
    import torch
    from torch_ref.mvdream import text_encoder as pt_te
    model = pt_te.build_from_config(model_params["cond_stage_config"]["params"]).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if ".ln_" in f".{name}" and name.endswith("weight") else 0.2 * noise)
    return torch_module(model)


def text_ms_from_original(model_params: dict, original: dict):
    from convert.keymaps import TEXT_ENCODER
    from convert.pt2ms import convert_state_dict
    from mindspore_impl.core.checkpoint import load_state_dict
    from mindspore_impl.mvdream import text_encoder as ms_te
    converted = convert_state_dict(original, model_params, parts=["text_encoder"], log=lambda *_: None)
    model = ms_te.build_from_config(model_params["cond_stage_config"]["params"])
    load_state_dict(model, converted, prefix=TEXT_ENCODER.prefix, strict=True)
    return model


def text_tokens(batch: int = 2, seed: int = 3) -> np.ndarray:
    """CLIP-like ids: start, random text, end, zero padding."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, 77), np.int32)
    for b, n in enumerate(rng.integers(3, 30, batch)):
        ids[b, 0], ids[b, n + 1] = 49406, 49407
        ids[b, 1:n + 1] = rng.integers(0, 49406, n)
    return ids


def text_run_torch(model, ids):
    import torch
    with torch.no_grad():
        return model(to_torch(ids.astype(np.int64)))


# ------------------------------------------------------------------------------------------------ samplers

SAMPLER_VIEWS = 4


def sampler_inputs(ctx_dim, seed=1):
    from mindspore_impl.mvdream.cameras import get_camera
    rng = np.random.RandomState(seed)
    x_T = rng.standard_normal((SAMPLER_VIEWS, 4, 8, 8)).astype(np.float32)
    c = rng.standard_normal((SAMPLER_VIEWS, 77, ctx_dim)).astype(np.float32)
    uc = rng.standard_normal((SAMPLER_VIEWS, 77, ctx_dim)).astype(np.float32)
    cam = get_camera(SAMPLER_VIEWS, elevation=15, azimuth_start=90)
    return x_T, c, uc, cam


def ms_unet_fn(unet):
    def fn(x, t, ctx, cam, num_frames):
        return unet(x, t, ctx, cam, num_frames=num_frames)
    return fn


def torch_unet_fn(unet):
    def fn(x, t, ctx, cam, num_frames):
        return unet(x, t, context=ctx, camera=cam, num_frames=num_frames)
    return fn


def stand_in_ms(x, t, ctx, cam, num_frames):
    """A cheap multiview 'UNet': mixes the views of a group, the context, camera and timestep."""
    from mindspore import ops
    b = x.shape[0]
    group_mean = x.reshape(b // num_frames, num_frames, -1).mean(axis=1, keep_dims=True)
    mix = ops.tile(group_mean, (1, num_frames, 1)).reshape(x.shape)
    bias = ctx.mean(axis=(1, 2)).reshape(b, 1, 1, 1) + cam.sum(axis=1).reshape(b, 1, 1, 1) * 0.1
    return ops.tanh(0.8 * x + 0.3 * mix + bias) * float(np.cos(t.asnumpy()[0] / 1000.0))


def stand_in_torch(x, t, ctx, cam, num_frames):
    import torch
    b = x.shape[0]
    group_mean = x.reshape(b // num_frames, num_frames, -1).mean(dim=1, keepdim=True)
    mix = group_mean.repeat(1, num_frames, 1).reshape(x.shape)
    bias = ctx.mean(dim=(1, 2)).reshape(b, 1, 1, 1) + cam.sum(dim=1).reshape(b, 1, 1, 1) * 0.1
    return torch.tanh(0.8 * x + 0.3 * mix + bias) * float(np.cos(t[0].item() / 1000.0))


def run_samplers(ms_model_fn, t_model_fn, x_T, c, uc, cam, sampler, steps, eta, karras, scale, clip_x0=None,
                 ac=None):
    """The same sampling run (CFG, cameras, numpy per-step noise) in both trees -> (MindSpore, torch) latents."""
    import mindspore as ms
    import torch
    from mindspore_impl.mvdream import samplers as mss
    from mindspore_impl.mvdream.schedule import make_alphas_cumprod
    from torch_ref.mvdream import samplers as ts
    ac = make_alphas_cumprod() if ac is None else ac
    f = SAMPLER_VIEWS
    ms_eps = mss.guided_eps_fn(ms_model_fn, ms.Tensor(c), ms.Tensor(uc), scale, ms.Tensor(cam), f)
    t_eps = ts.guided_eps_fn(t_model_fn, to_torch(c), to_torch(uc), scale, to_torch(cam), f)
    out_ms = mss.sample(sampler, ms_eps, ms.Tensor(x_T), ac, steps, eta=eta, rng=np.random.RandomState(5),
                        karras=karras, clip_x0=clip_x0)
    with torch.no_grad():
        out_t = ts.sample(sampler, t_eps, to_torch(x_T), ac, steps, eta=eta, rng=np.random.RandomState(5),
                          karras=karras, clip_x0=clip_x0)
    return out_ms, out_t


# ------------------------------------------------------------------------------------------------ hash grid

HASHGRID_UPSTREAM = {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
                     "base_resolution": 16, "per_level_scale": 1.447269237440378}
# base 8, x1.5 per level, 2^12 rows: levels 0-1 dense (512 and 1728 cells + padding), 2-7 hashed
HASHGRID_SMALL = {"n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 12, "base_resolution": 8,
                  "per_level_scale": 1.5, "seed": 7}


# independent numpy reference: written from tinycudann's grid.h, sharing no code with the modules
def np_layout(cfg):
    """Per level (scale, resolution, row offset, rows, dense) as in GridEncodingTemplated's constructor."""
    out, offset = [], 0
    for lvl in range(cfg["n_levels"]):
        scale = np.exp2(np.float32(lvl) * np.log2(np.float32(cfg["per_level_scale"]))) \
            * np.float32(cfg["base_resolution"]) - np.float32(1)
        res = int(np.ceil(scale)) + 1
        rows = min(((res ** 3 + 7) // 8) * 8, 2 ** cfg["log2_hashmap_size"])
        out.append((np.float32(scale), res, offset, rows, res ** 3 <= rows))
        offset += rows
    return out


def np_grid_index(corner, res, rows, dense):
    """grid_index(): uint32 dense index with stride = resolution, else fast_hash; then % rows."""
    c = corner.astype(np.uint32)
    if dense:
        idx = c[..., 0] + c[..., 1] * np.uint32(res) + c[..., 2] * np.uint32(res * res)
    else:
        idx = (c[..., 0] * np.uint32(1)) ^ (c[..., 1] * np.uint32(2654435761)) \
            ^ (c[..., 2] * np.uint32(805459861))
    return (idx % np.uint32(rows)).astype(np.int64)


def np_encode(x, params, cfg):
    """Returns (N, L*F) encoding and the (N, L, 8) table rows / trilinear weights it used."""
    nf = cfg["n_features_per_level"]
    table = params.reshape(-1, nf)
    outs, all_rows, all_w = [], [], []
    for scale, res, offset, rows, dense in np_layout(cfg):
        pos = x.astype(np.float32) * scale + np.float32(0.5)
        grid = np.floor(pos)
        frac = pos - grid
        acc = np.zeros((len(x), nf), np.float64)
        lvl_rows, lvl_w = [], []
        for corner in range(8):
            bit = np.array([(corner >> d) & 1 for d in range(3)])
            w = np.prod(np.where(bit == 1, frac, 1.0 - frac), axis=-1)
            r = offset + np_grid_index(grid.astype(np.int64) + bit, res, rows, dense)
            acc += w[:, None] * table[r]
            lvl_rows.append(r)
            lvl_w.append(w)
        outs.append(acc)
        all_rows.append(np.stack(lvl_rows, -1))
        all_w.append(np.stack(lvl_w, -1))
    return np.concatenate(outs, -1).astype(np.float32), np.stack(all_rows, 1), np.stack(all_w, 1)


def hashgrid_points(n, seed=0):
    x = np.random.RandomState(seed).rand(n, 3).astype(np.float32)
    x[0] = 0.0      # corners of the unit cube exercise the stride-wrapping of dense levels
    x[1] = 1.0
    x[2] = [1.0, 0.0, 0.5]
    return x


def hashgrid_params(n, seed=3):
    """Table values of order 1 so a wrong index shows up (the default init is +-1e-4)."""
    return np.random.RandomState(seed).uniform(-1, 1, n).astype(np.float32)


def hashgrid_rows(cfg) -> int:
    return sum(r[3] for r in np_layout(cfg))


def ms_hashgrid(cfg, params):
    import mindspore as ms
    from mindspore_impl.lift3d.geometry.hashgrid import HashGrid
    grid = HashGrid(3, cfg)
    grid.params.set_data(ms.Tensor(params))
    return grid


def torch_hashgrid(cfg, params):
    from torch_ref.lift3d.geometry.hashgrid import HashGrid
    return torch_module(HashGrid(3, cfg, params=params))


# ------------------------------------------------------------------------------------------------ geometry

GEOMETRY_SMALL_GRID = {"n_levels": 8, "log2_hashmap_size": 12}
GEOMETRY_NAMES = {
    "encoding.encoding.encoding.params",
    "density_network.layers.0.weight", "density_network.layers.2.weight",
    "feature_network.layers.0.weight", "feature_network.layers.2.weight",
}
GEOMETRY_CASES = {
    "fd-softplus-magic3d": {"normal_type": "finite_difference"},
    "laplacian-softplus-magic3d": {"normal_type": "finite_difference_laplacian"},
    "analytic-softplus-magic3d": {"normal_type": "analytic"},
    "analytic-truncexp-dreamfusion": {"normal_type": "analytic", "density_activation": "trunc_exp",
                                      "density_bias": "blob_dreamfusion", "density_blob_scale": 5.0,
                                      "density_blob_std": 0.2},
    "fd-exp-constbias": {"normal_type": "finite_difference", "density_activation": "exp",
                         "density_bias": -1.0},
}


def geometry_weighted_loss(geometry, weights):
    """A MindSpore Cell: scalar that touches density, features and normals with fixed random weights."""
    import mindspore as ms

    class WeightedLoss(ms.nn.Cell):
        def __init__(self):
            super().__init__()
            self.geometry = geometry
            self.w = ms.Tensor(weights)

        def construct(self, points):
            d, f, n = self.geometry.forward_with_normal(points)
            return (d * self.w[:, :1]).sum() + (f * self.w[:, 1:4]).sum() + (n * self.w[:, 4:]).sum()

    return WeightedLoss()


def geometry_pair(cfg, grid_scale=0.5, seed=0):
    """Torch geometry with random weights (grid values of order grid_scale; on the torch device) and its
    MindSpore copy."""
    import torch
    from mindspore_impl.core.checkpoint import load_state_dict
    from mindspore_impl.lift3d.geometry import ImplicitVolume
    from torch_ref.lift3d.geometry import ImplicitVolume as TorchImplicitVolume
    torch.manual_seed(seed)
    tgeo = TorchImplicitVolume(cfg)
    with torch.no_grad():
        tgeo.encoding.encoding.encoding.params.uniform_(-grid_scale, grid_scale)
    mgeo = ImplicitVolume(cfg)
    loaded = load_state_dict(mgeo, numpy_state(tgeo), strict=True)
    assert set(loaded) == GEOMETRY_NAMES
    return torch_module(tgeo), mgeo


def geometry_inputs(n=128, seed=0):
    rs = np.random.RandomState(seed)
    return rs.uniform(-0.95, 0.95, (n, 3)).astype(np.float32), rs.randn(n, 7).astype(np.float32)


def geometry_torch_run(tgeo, x, w):
    import torch
    tx = to_torch(x, requires_grad=True)
    d, f, n = tgeo.forward_with_normal(tx)
    tw = to_torch(w)
    loss = (d * tw[:, :1]).sum() + (f * tw[:, 1:4]).sum() + (n * tw[:, 4:]).sum()
    names = [k for k, _ in tgeo.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in tgeo.named_parameters()] + [tx])
    return (d, f, n), dict(zip(names, grads[:-1])), grads[-1]


def geometry_ms_run(mgeo, x, w):
    import mindspore as ms
    loss = geometry_weighted_loss(mgeo, w)
    params = loss.trainable_params()
    grad_fn = ms.value_and_grad(loss, 0, params)
    _, (gx, gparams) = grad_fn(ms.Tensor(x))
    outs = mgeo.forward_with_normal(ms.Tensor(x))
    return outs, {p.name.replace("geometry.", "", 1): g for p, g in zip(params, gparams)}, gx


# ------------------------------------------------------------------------------------------------ renderer

# tiny hash grid with one dense and hashed levels (2^10 table) so the checks stay fast
RENDER_GEOMETRY = {"radius": 1.0, "normal_type": None,
                   "pos_encoding_config": {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2,
                                           "log2_hashmap_size": 10, "base_resolution": 4, "per_level_scale": 2.0},
                   "mlp_network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none",
                                          "n_neurons": 16, "n_hidden_layers": 1}}
IMAGE_KEYS = ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth", "z_variance", "comp_normal")
SAMPLE_KEYS = ("weights", "t_points", "t_dirs", "normal")


def copy_params(pt_module, ms_cell):
    """Straight name copy torch -> MindSpore (the twins use the same parameter names)."""
    import mindspore as ms
    state = numpy_state(pt_module)
    for p in ms_cell.get_parameters():
        assert p.name in state, f"{p.name} missing from torch state {sorted(state)}"
        assert tuple(p.shape) == state[p.name].shape, p.name
        p.set_data(ms.Tensor(state[p.name]))
    return state


def renderer_pair(renderer_cfg, normal_type=None, material="none", seed=0):
    """(torch renderer on the torch device, MindSpore renderer) over the same textured field, material and
    environment-map background."""
    import torch
    from mindspore_impl.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground as MsEnv
    from mindspore_impl.lift3d.geometry.implicit_volume import ImplicitVolume as MsVolume
    from mindspore_impl.lift3d.materials.diffuse_with_point_light import DiffuseWithPointLightMaterial as MsDiffuse
    from mindspore_impl.lift3d.materials.no_material import NoMaterial as MsNoMat
    from mindspore_impl.lift3d.renderers import NeRFVolumeRenderer as MsRenderer
    from torch_ref.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground as PtEnv
    from torch_ref.lift3d.geometry.implicit_volume import ImplicitVolume as PtVolume
    from torch_ref.lift3d.materials.diffuse_with_point_light import DiffuseWithPointLightMaterial as PtDiffuse
    from torch_ref.lift3d.materials.no_material import NoMaterial as PtNoMat
    from torch_ref.lift3d.renderers import NeRFVolumeRenderer as PtRenderer
    torch.manual_seed(seed)
    geo_cfg = dict(RENDER_GEOMETRY, normal_type=normal_type)
    pt_geo, ms_geo = PtVolume(geo_cfg), MsVolume(geo_cfg)
    with torch.no_grad():
        for name, p in pt_geo.named_parameters():
            if "encoding" in name:
                p.uniform_(-1.0, 1.0)  # a textured field instead of the 1e-4 init
    if material == "diffuse":
        mat_cfg = {"ambient_light_color": [0.3, 0.3, 0.3], "diffuse_light_color": [0.7, 0.7, 0.7]}
        pt_mat, ms_mat = PtDiffuse(mat_cfg), MsDiffuse(mat_cfg)
    else:
        pt_mat, ms_mat = PtNoMat(), MsNoMat()
    pt_bg, ms_bg = PtEnv(), MsEnv()
    for pt_m, ms_m in ((pt_geo, ms_geo), (pt_mat, ms_mat), (pt_bg, ms_bg)):
        copy_params(pt_m, ms_m)
        torch_module(pt_m)  # the renderer only holds its sub-modules (neutral SubModules): each moves itself
    pt_r = torch_module(PtRenderer(renderer_cfg, pt_geo, pt_mat, pt_bg))
    return pt_r, MsRenderer(renderer_cfg, ms_geo, ms_mat, ms_bg)


def make_rays(b, h, w, seed=1):
    """Cameras at distance 2.2 looking roughly at the origin; the wide spread makes some rays miss the box."""
    rng = np.random.default_rng(seed)
    eye = rng.normal(size=(b, 1, 1, 3)).astype(np.float32)
    eye = 2.2 * eye / np.linalg.norm(eye, axis=-1, keepdims=True)
    target = rng.uniform(-0.9, 0.9, size=(b, h, w, 3)).astype(np.float32)
    d = target - eye
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    d[0, 0, 0] = eye[0, 0, 0] / np.linalg.norm(eye[0, 0, 0])  # one ray pointing away from the box: a miss
    o = np.broadcast_to(eye, (b, h, w, 3)).astype(np.float32)
    light = rng.uniform(-2, 2, size=(b, 3)).astype(np.float32)
    return o, d.astype(np.float32), light


def render_both(pt_r, ms_r, inputs, shading="diffuse", bg_aug=None):
    """Render in both trees and differentiate a loss on comp_rgb and opacity w.r.t. the geometry and background
    parameters -> (torch outputs, MindSpore outputs, [(name, torch grad or None, MindSpore grad)])."""
    import mindspore as ms
    import torch
    o, d, light, jitter = inputs
    rng = np.random.default_rng(7)
    g_rgb = rng.normal(size=o.shape).astype(np.float32)
    g_op = rng.normal(size=o.shape[:-1] + (1,)).astype(np.float32)

    pt_out = pt_r(to_torch(o), to_torch(d), to_torch(light), None if jitter is None else to_torch(jitter),
                  None if bg_aug is None else to_torch(bg_aug), shading=shading)
    pt_loss = (pt_out["comp_rgb"] * to_torch(g_rgb)).sum() + (pt_out["opacity"] * to_torch(g_op)).sum()
    pt_params = [p for m in (pt_r.geometry, pt_r.background) for p in m.parameters()]
    pt_grads = torch.autograd.grad(pt_loss, pt_params, allow_unused=True)

    ms_params = list(ms_r.geometry.trainable_params()) + list(ms_r.background.trainable_params())
    ms_args = (ms.Tensor(o), ms.Tensor(d), ms.Tensor(light), None if jitter is None else ms.Tensor(jitter),
               None if bg_aug is None else ms.Tensor(bg_aug))

    def loss_fn(*args):
        out = ms_r(*args, shading=shading)
        return (out["comp_rgb"] * ms.Tensor(g_rgb)).sum() + (out["opacity"] * ms.Tensor(g_op)).sum()

    ms_out = ms_r(*ms_args, shading=shading)
    ms_grads = ms.grad(loss_fn, grad_position=None, weights=ms_params)(*ms_args)
    return pt_out, ms_out, list(zip([p.name for p in ms_params], pt_grads, ms_grads))


# ------------------------------------------------------------------------------------------------ backgrounds

MVDREAM_BG = {"color_activation": "sigmoid", "random_aug": True}
MVDREAM_SHADING = {"ambient_only_steps": 5000, "textureless_prob": 0.5, "ambient_light_color": [1.0, 1.0, 1.0],
                   "diffuse_light_color": [0.0, 0.0, 0.0], "soft_shading": True}


def unit_dirs(rng, shape):
    d = rng.standard_normal(shape).astype(np.float32)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def copy_weights(pt_module, ms_cell):
    """torch state dict (parameters and buffers) -> MindSpore, strict on names and shapes."""
    from mindspore_impl.core.checkpoint import load_state_dict
    state = numpy_state(pt_module)
    loaded = load_state_dict(ms_cell, state, strict=True, what=type(ms_cell).__name__)
    assert sorted(loaded) == sorted(state)
    return state


def randomize_torch(module, seed):
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)


def torch_grads(fn, inputs, params):
    """Output and d(sum(out * cot))/d(inputs, params) in torch; cot is returned as numpy."""
    import torch
    xs = [to_torch(x, requires_grad=True) for x in inputs]
    out = fn(*xs)
    cot = np.random.default_rng(99).standard_normal(tuple(out.shape)).astype(np.float32)
    grads = torch.autograd.grad((out * to_torch(cot)).sum(), xs + list(params), allow_unused=True)
    return out, cot, grads[:len(xs)], grads[len(xs):]


def ms_grads(fn, inputs, weights, cot):
    import mindspore as ms
    xs = [ms.Tensor(x) for x in inputs]
    out = fn(*xs)

    def loss(*args):
        return (fn(*args) * ms.Tensor(cot)).sum()

    if weights:
        g_in, g_w = ms.grad(loss, grad_position=tuple(range(len(xs))), weights=weights)(*xs)
    else:
        g_in, g_w = ms.grad(loss, grad_position=tuple(range(len(xs))))(*xs), ()
    if len(xs) == 1 and not isinstance(g_in, tuple):
        g_in = (g_in,)
    return out, g_in, g_w


def env_map_pair(cfg=None, seed=0):
    """(torch environment map with random weights on the torch device, MindSpore copy)."""
    from mindspore_impl.lift3d.background import NeuralEnvironmentMapBackground as MsEnvMap
    from torch_ref.lift3d.background import NeuralEnvironmentMapBackground as PtEnvMap
    pt = PtEnvMap(cfg)
    randomize_torch(pt, seed)
    ms_bg = MsEnvMap(cfg)
    copy_weights(pt, ms_bg)
    return torch_module(pt), ms_bg


def material_inputs(n=64, f=3, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, f)).astype(np.float32) * 2
    viewdirs = unit_dirs(rng, (n, 3))
    positions = rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32)
    light_positions = np.repeat(rng.standard_normal((1, 3)).astype(np.float32) * 2, n, 0)
    normals = unit_dirs(rng, (n, 3))
    return features, viewdirs, positions, light_positions, normals


# ------------------------------------------------------------------------------------------------ SDS guidance

GUIDANCE_VIEWS, GUIDANCE_IMAGE, GUIDANCE_CTX = 4, 32, 32  # tiny VAE: 32x32 images -> 4 x 16 x 16 latents
GUIDANCE_ORDER = ("c2w", "text_embeddings", "t", "noise", "vae_noise")


def randomize_zero_tensors(module, seed: int) -> None:
    """Default init leaves zero_module convs at 0 (eps would be 0): give every all-zero tensor values."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def guidance_models():
    """(torch unet, torch vae, MindSpore unet, MindSpore vae) with the same random weights; torch on its device."""
    import torch
    from convert.pt2ms import convert_state_dict
    from mindspore_impl.core.checkpoint import load_state_dict
    from mindspore_impl.mvdream import unet as ms_unet
    from mindspore_impl.mvdream import vae as ms_vae
    from neutral.mvdream.checkpoint_layout import PREFIXES
    from torch_ref.mvdream import unet as t_unet
    from torch_ref.mvdream import vae as t_vae
    torch.manual_seed(0)
    params = load_model_params()
    tu = t_unet.build_from_config(dict(params["unet_config"]["params"])).eval()
    tv = t_vae.build_from_config(dict(params["first_stage_config"]["params"])).eval()
    randomize_zero_tensors(tu, 1)
    randomize_zero_tensors(tv, 2)
    state = numpy_state(tu, PREFIXES["unet"])
    state.update(numpy_state(tv, PREFIXES["vae"]))
    converted = convert_state_dict(state, params, parts=["unet", "vae"], log=lambda *_: None)
    mu = ms_unet.build_from_config(dict(params["unet_config"]["params"]))
    mv = ms_vae.build_from_config(dict(params["first_stage_config"]["params"]))
    load_state_dict(mu, converted, prefix=PREFIXES["unet"])
    load_state_dict(mv, converted, prefix=PREFIXES["vae"])
    return torch_module(tu), torch_module(tv), mu, mv


def guidance_cfg(**kw):
    from mindspore_impl.lift3d.guidance import multiview_diffusion_guidance as msg
    base = dict(n_view=GUIDANCE_VIEWS, image_size=GUIDANCE_IMAGE, guidance_scale=50.0,
                min_step_percent=[0, 0.98, 0.02, 8000], max_step_percent=[0, 0.98, 0.50, 8000])
    base.update(kw)
    return msg.Config(**base)


def guidance_pair(models, cfg):
    """(torch guidance on the torch device, MindSpore guidance) over shared models."""
    from mindspore_impl.lift3d.guidance import multiview_diffusion_guidance as msg
    from mindspore_impl.mvdream import schedule as ms_schedule
    from torch_ref.lift3d.guidance import multiview_diffusion_guidance as tg
    from torch_ref.mvdream import schedule as t_schedule
    tu, tv, mu, mv = models
    tgd = torch_module(tg.MultiviewDiffusionGuidance(cfg, tu, tv, t_schedule.NoiseSchedule()))
    mgd = msg.MultiviewDiffusionGuidance(cfg, mu, mv, ms_schedule.NoiseSchedule())
    return tgd, mgd


def guidance_c2w(n_obj: int) -> np.ndarray:
    from mindspore_impl.mvdream.cameras import create_camera_to_world_matrix
    mats = []
    for o in range(n_obj):
        for v in range(GUIDANCE_VIEWS):
            m = create_camera_to_world_matrix(10.0 + 5 * o, 30.0 + 90.0 * v)
            m[:3, 3] *= 2.5  # off the unit sphere, so normalize_camera matters
            mats.append(m)
    return np.stack(mats).astype(np.float32)


def guidance_inputs(mgd, n_obj: int, hw: int = 24, seed: int = 0, global_step: int = 4000):
    rng = np.random.default_rng(seed)
    b = n_obj * GUIDANCE_VIEWS
    mgd.update_step(global_step)
    inputs = mgd.sample_inputs(rng, b)
    inputs["rgb"] = rng.uniform(0, 1, (b, hw, hw, 3)).astype(np.float32)
    inputs["c2w"] = guidance_c2w(n_obj)
    inputs["text_embeddings"] = rng.standard_normal((2 * b, 77, GUIDANCE_CTX)).astype(np.float32)
    return inputs


def guidance_torch_step(tgd, inputs):
    """(loss, d loss / d rgb, grad_norm) as torch tensors (on the torch device)."""
    rgb = to_torch(inputs["rgb"], requires_grad=True)
    rest = [to_torch(inputs[k]) for k in GUIDANCE_ORDER]
    loss, grad_norm = tgd(rgb, *rest)
    loss.backward()
    return loss.detach(), rgb.grad, grad_norm


def guidance_ms_step(mgd, inputs):
    import mindspore as ms
    rest = [ms.Tensor(inputs[k]) for k in GUIDANCE_ORDER]

    def fn(rgb):
        return mgd(rgb, *rest)

    (loss, grad_norm), grad = ms.value_and_grad(fn, grad_position=0, has_aux=True)(ms.Tensor(inputs["rgb"]))
    return loss, grad, grad_norm


def relative_to_max(actual, reference):
    """(actual, reference) divided by max |reference|: gradients are small, compare them relative to their size."""
    a, r = to_numpy(actual), to_numpy(reference)
    scale = float(np.abs(r).max())
    assert scale > 0, "zero reference gradient"
    return a / scale, r / scale, scale


# ------------------------------------------------------------------------------------------------ diffusion training

MVDIFFUSION_MODEL = os.path.join(ROOT, "configs", "tiny-mvdiffusion-model.yaml")
DEMO_TOKENIZER = os.path.join(ROOT, "pretrained", "demo", "tokenizer")


def mvdiffusion_torch_models(mp, seed=0):
    """torch_ref UNet, first stage and text tower of a model YAML with random weights (on the CPU)."""
    from tests.tiny_mvdream_models import randomize
    from torch_ref.mvdream import first_stage, text_encoder, unet
    u = unet.build_from_config(dict(mp["unet_config"]["params"]))
    fs = first_stage.build_first_stage(dict(mp["first_stage_config"]))
    te = text_encoder.build_from_config(dict(mp["cond_stage_config"]["params"]))
    for i, m in enumerate((u, fs, te)):
        randomize(m, seed + i)
    return u, fs, te


def mvdiffusion_loss_case(config: str, tokenizer: str = DEMO_TOKENIZER) -> dict:
    """The multiview diffusion training loss (mvdream/training.py and its twin) on the same converted weights,
    batch, timesteps, caption dropout and noise. config "pixel" (identity first stage) or "vae" (tiny VAE).
    -> {"loss": (MindSpore, torch), "grads": {MindSpore name: (MindSpore, torch)}, "trained_text": max |grad|}."""
    import mindspore as ms
    from convert.pt2ms import convert_state_dict
    from mindspore_impl.mvdream import first_stage as ms_fs, text_encoder as ms_te, unet as ms_unet
    from mindspore_impl.mvdream.schedule import NoiseSchedule
    from mindspore_impl.mvdream.training import MultiviewDiffusionLoss, load_named, model_parameters, step_inputs
    from neutral.mvdream.tokenizer import load_tokenizer
    from neutral.mvdream.training import images_to_model, sample_step_noise
    from tests.test_train_mvdiffusion import random_data  # the dataset layout that test file pins
    from torch_ref.mvdream import schedule as t_schedule, training as t_training

    mp = load_model_params(MVDIFFUSION_MODEL if config == "pixel" else TINY_CONFIG)
    tu, tfs, tte = mvdiffusion_torch_models(mp)
    state = {}
    for prefix, m in (("model.diffusion_model.", tu), ("first_stage_model.", tfs), ("cond_stage_model.model.", tte)):
        state.update(numpy_state(m, prefix))
    converted = convert_state_dict(state, mp, log=lambda *_: None)
    mu = ms_unet.build_from_config(dict(mp["unet_config"]["params"]))
    mfs = ms_fs.build_first_stage(dict(mp["first_stage_config"]))
    mte = ms_te.build_from_config(dict(mp["cond_stage_config"]["params"]))
    load_named(model_parameters(mu, mfs, mte), converted, "converted torch weights")

    tok = load_tokenizer(tokenizer)
    scale = float(mp["scale_factor"])
    f, b = 4, 2
    size = int(mp["unet_config"]["params"]["image_size"]) * ms_fs.downsample_of(mp["first_stage_config"])
    latent = (int(mp["unet_config"]["params"]["in_channels"]),) + (int(mp["unet_config"]["params"]["image_size"]),) * 2
    data = random_data(n=b, size=size, seed=3)
    rng = np.random.default_rng(5)
    batch = {"images": images_to_model(data["images"]), "camera": data["cameras"].reshape(-1, 16),
             "tokens": tok(data["captions"]).astype(np.int32)}
    batch.update(sample_step_noise(rng, b, f, latent, 1000, 0.0, "object"))
    batch["drop"] = np.array([0.0, 1.0], np.float32)  # the second caption becomes the empty prompt
    vocab = int(mp["cond_stage_config"]["params"]["arch"]["vocab_size"])
    assert batch["tokens"].max() < vocab

    empty = tok([""])
    m_loss = MultiviewDiffusionLoss(mu, mfs, mte, NoiseSchedule(), empty, f, scale)
    t_loss = torch_module(t_training.MultiviewDiffusionLoss(tu, tfs, tte, t_schedule.NoiseSchedule(), empty, f, scale))
    for p in mfs.get_parameters():
        p.requires_grad = False
    trainable = list(mu.trainable_params()) + list(mte.trainable_params())
    loss_ms, grads_ms = ms.value_and_grad(m_loss, None, ms.ParameterTuple(trainable))(*step_inputs(batch))
    loss_t = t_loss(*t_training.step_inputs(batch, torch_device()))
    loss_t.backward()
    # gradients: the UNet's first conv and output conv, the text tower's token embedding
    t_named = dict(list(tu.named_parameters()) + [("te." + k, v) for k, v in tte.named_parameters()])
    ms_names = [n for n, _ in mu.parameters_and_names()] + ["te." + n for n, _ in mte.parameters_and_names()]
    grads = dict(zip(ms_names, grads_ms))
    pairs = {"input_blocks.0.0.weight": "input_blocks.0.0.weight", "out.2.weight": "out.2.weight",
             "te.token_embedding.embedding_table": "te.token_embedding.weight"}
    return {"loss": (loss_ms.asnumpy(), to_numpy(loss_t)),
            "grads": {m: (grads[m].asnumpy(), to_numpy(t_named[t].grad)) for m, t in pairs.items()},
            "trained_text": float(np.abs(grads["te.token_embedding.embedding_table"].asnumpy()).max())}


# ------------------------------------------------------------------------------------------------ one SDS training step

TINY_SDS = os.path.join(ROOT, "configs", "tiny-sds.yaml")
# tiny-sds anneals t from 980 to [20, 500] over 8 steps; at step 6 t is in [260, 620]. (At t=980 x0 divides
# by sqrt(alpha_bar) = 0.07 after CFG 50: float noise of the UNet is amplified past 1e-4 in the gradients.)
STEP = 6
SHADING = {"geometry.normal_type": "analytic", "material_type": "diffuse-with-point-light-material",
           "material": {"ambient_only_steps": 0, "soft_shading": True, "textureless_prob": 0.5,
                        "ambient_light_color": [1.0, 1.0, 1.0], "diffuse_light_color": [0.0, 0.0, 0.0]},
           "loss.lambda_orient": 10.0, "loss.lambda_sparsity": 1.0, "loss.lambda_opaque": 1.0,
           "loss.lambda_z_variance": 1.0, "grad_clip": 0.5}


def make_tiny(root: str) -> tuple:
    """(paths of a fresh tiny MVDream checkpoint (scripts/make_tiny_checkpoint.py), prompt cache folder)."""
    from scripts.make_tiny_checkpoint import make_tiny_checkpoint
    paths = make_tiny_checkpoint(os.path.join(root, "tiny-mvdream"), seed=0, log=lambda *_: None)
    return paths, os.path.join(root, "cache")


def tiny_overrides(paths: dict, cache_dir: str) -> list:
    """configs/tiny-sds.yaml pointed at a fresh tiny checkpoint, 16x16 renders, 8 samples per ray."""
    return [f"system.guidance.ckpt_path={paths['ckpt']}", f"system.guidance.config_path={paths['config']}",
            f"system.prompt_processor.tokenizer_path={paths['tokenizer']}",
            f"system.prompt_processor.cache_dir={cache_dir}", "data.width=16", "data.height=16",
            "system.renderer.num_samples_per_ray=8"]


def tiny_config(tiny, shading: bool):
    import launch
    from omegaconf import OmegaConf
    paths, cache = tiny
    cfg = launch.load_config(TINY_SDS, tiny_overrides(paths, cache))
    if shading:  # mvdream-sd21-shading's modules (shaded from step 0) and every regulariser on
        for key, value in SHADING.items():
            OmegaConf.update(cfg.system, key, value, merge=False)
    return cfg


def build_ms_system(cfg):
    import launch
    from omegaconf import OmegaConf

    from neutral import registry
    launch.import_modules()
    dm = registry.find(cfg.data_type)(OmegaConf.to_container(cfg.data, resolve=True), seed=0)
    system = registry.find(cfg.system_type)(OmegaConf.to_container(cfg.system, resolve=True), seed=0)
    return dm, system


def torch_guidance(ms_system, paths):
    """The torch_ref guidance with the UNet and VAE read back from the original-layout .pt, on the torch device."""
    import torch
    from convert.io import read_torch_checkpoint
    from scripts.make_tiny_checkpoint import PARTS
    from torch_ref.lift3d.guidance.multiview_diffusion_guidance import MultiviewDiffusionGuidance
    from torch_ref.mvdream import schedule, unet, vae
    params = load_model_params(paths["config"])
    state = read_torch_checkpoint(paths["pt"])
    models = {}
    for name, prefix, key in PARTS[:2]:
        module = {"unet": unet, "vae": vae}[name].build_from_config(dict(params[key]["params"])).eval()
        module.load_state_dict({k[len(prefix):]: torch.from_numpy(v) for k, v in state.items()
                                if k.startswith(prefix)}, strict=True)
        models[name] = module
    noise = schedule.NoiseSchedule(params["timesteps"], params["linear_start"], params["linear_end"])
    return torch_module(MultiviewDiffusionGuidance(ms_system.guidance.cfg, models["unet"], models["vae"], noise,
                                                   params["scale_factor"]))


def copy_ms_to_torch(ms_system, modules):
    """Parameters and buffers by name: MindSpore '<module>.<path>' = torch module <module>'s '<path>'."""
    import torch
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


def torch_twin(ms_system, sys_cfg):
    """torch_ref geometry / material / background / renderer with the MindSpore system's current values, on the
    torch device."""
    from omegaconf import OmegaConf

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
    for m in (geo, mat, bg, renderer):  # the renderer only holds the others: each moves itself
        torch_module(m)
    return modules


def texture_field(ms_system, seed: int = 3):
    """A textured field and background instead of the init. The untrained system renders an almost uniform
    grey image (std 0.005), where the VAE's first GroupNorm divides by a near-zero std: there the gradient is
    ill-conditioned (torch alone moves 1e-3 relative for a 1e-7 change of the image), a property of the input."""
    import mindspore as ms
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
    from torch_ref.lift3d.systems import mvdream_system as twin
    params, moments = {}, {}
    for group in optimizer.param_groups:
        prefix = group["name"]
        owner = twin.get_by_path(modules, prefix)
        for sub, p in owner.named_parameters():
            name = f"{prefix}.{sub}"
            params[name] = p.detach().cpu().numpy()
            moments[name] = optimizer.state[p]["exp_avg"].detach().cpu().numpy()
    return params, moments


def sds_step_pair(tiny, cfg) -> SimpleNamespace:
    """One training step of the MindSpore system (system.run_step) and of its torch twin (torch_ref
    mvdream_system.training_step) from the same state, inputs and draws."""
    from omegaconf import OmegaConf

    from torch_ref.lift3d.systems import mvdream_system as twin
    paths, _ = tiny
    dm, system = build_ms_system(cfg)
    texture_field(system)
    system.configure_optimizers()
    system.on_train_batch_start(STEP)  # occupancy-grid update and timestep range
    inputs = system.draw_step_inputs(dm.sample(STEP))
    snapshot = tuple(map(copy.deepcopy, system.state_dict()))  # asnumpy() may share the parameters' memory

    modules = torch_twin(system, cfg.system)
    guidance = torch_guidance(system, paths)
    guidance.update_step(STEP)
    optimizer = twin.build_optimizer(modules, OmegaConf.to_container(cfg.system.optimizer, resolve=True))

    metrics = system.run_step(inputs)
    t_loss, t_terms = twin.training_step(modules.renderer, guidance, optimizer, inputs, system.loss_active,
                                         grad_clip=cfg.system.get("grad_clip"))
    ms_params, ms_moments = trained_state(system)
    t_params, t_moments = torch_trained_state(modules, optimizer)
    return SimpleNamespace(system=system, inputs=inputs, snapshot=snapshot, metrics=metrics, t_loss=t_loss,
                           t_terms=t_terms, ms_params=ms_params, ms_moments=ms_moments, t_params=t_params,
                           t_moments=t_moments)


# ------------------------------------------------------------------------------------------------ converter


def converter_round_trip(tmp_dir: str, seed: int = 0) -> tuple[dict, dict]:
    """The tiny UNet + VAE + text tower with random weights as an original .pt -> convert.pt2ms -> MindSpore .ckpt
    -> convert.ms2pt -> .pt again: (original state, restored state), numpy."""
    from convert.io import read_torch_checkpoint, write_torch_checkpoint
    from convert.ms2pt import revert_state_dict
    from convert.pt2ms import convert_state_dict
    from mindspore_impl.core.checkpoint import read_params, save_params
    from tests.tiny_mvdream_models import torch_state
    mp = load_model_params()
    state, _ = torch_state(("unet", "vae", "text_encoder"), seed, mp)
    src, mid, back = (os.path.join(tmp_dir, n) for n in ("original.pt", "converted.ckpt", "back.pt"))
    write_torch_checkpoint(state, src)
    save_params(convert_state_dict(read_torch_checkpoint(src), mp, log=lambda *_: None), mid)
    write_torch_checkpoint(revert_state_dict(read_params(mid), mp, log=lambda *_: None), back)
    return read_torch_checkpoint(src), read_torch_checkpoint(back)
