"""Project one MVDream SDS training step onto Ascend 910 cards from FLOP and byte counts.

THIS IS A PROJECTION, NOT A MEASUREMENT. No Ascend card ran this port; the numbers below come from counting the
work of one step and dividing it by published peak rates times an assumed utilisation. A run on a card confirms
or refutes them (scripts/bench_sds_step.py on the card, then compare its s/step with this table).

What is counted, per phase of the step of configs/mvdream-sd21.yaml (stage 1: 8 views x 64x64; stage 2: 4 views x
256x256; 64 + 64 samples per ray):
  render     hash grid (16 levels x 8 corner gathers + trilinear weights) + density/feature MLPs + material +
             compositing, ANALYTICALLY from the config, per evaluated sample (coarse pass: density only, no
             gradient; fine pass: full field, forward + backward), times the number of samples. Also at an
             evaluated fraction of 0.25 (empty-space skipping: only the field evaluation shrinks).
  vae        resize to 256 + VAE encoder forward + backward (the SDS gradient reaches the image through the
             encoder; the encoder weights are frozen, so the backward computes input gradients only), counted
             with torch.utils.flop_counter.FlopCounterMode on the torch_ref VAE built on the META device.
  unet       the CFG UNet call: one forward at batch 2 x B (B = views of the stage) on 32x32 latents, fp16 weights
             (system.amp_level=O2), no backward: the guidance stops the gradient at the UNet input and output
             (mindspore_impl/lift3d/guidance/multiview_diffusion_guidance.py latent_loss: stop_gradient on the
             latents fed to q_sample and on eps). Counted on the META device.
  optimizer  AdamW on the field and background parameters (plus, in deferred steps, the per-chunk gradient
             accumulation of MindSpore's _deferred_step, which adds a dense table-sized gradient per chunk).

FLOPs: matmul/conv FLOPs (cube units) from FlopCounterMode (it knows mm/addmm/bmm/baddbmm/convolution and their
backward; the script lists any matmul-like op it did not count). Elementwise work (vector units) is not a FLOP for
FlopCounterMode: it is estimated as 2 operations per output element of every non-matmul op (UNet, VAE), and
analytically for the renderer.
Bytes: a LOWER BOUND for op-by-op execution. Every op's output is written once and read once (2 x the summed
output bytes, views excluded, from a TorchDispatchMode), plus the weights read once per forward (the UNet's 867.6 M
weights in fp16: 1.7 GB per CFG call) and again per backward; re-reads, padding, strided layouts and cache misses
add to it (only fusion across ops could move less). Ascend 910A has no FlashAttentionScore (the port takes the
float32 math path there, which writes the attention scores); 910B uses it, so the score tensors are not counted
there. Hash-grid corner rows are costed at HBM, --gather-bytes (32) per access; the 48 MiB table would fit a 910B's
192 MB L2, so on 910B this is pessimistic (--gather-bytes 8: only the useful bytes).

Time per phase = max(cube FLOPs / (cube peak x u_cube), vector ops / (vector peak x u_vec),
HBM bytes / (HBM bandwidth x u_hbm)); the phases are summed (no overlap between phases). The `+launch` column adds
--launch-us per kernel (an ASSUMED host/launch cost per op, not a published number) times the kernel count; the
port's deferred step (render_chunk_rays=512) launches its render graphs once per 512-ray chunk.

    python scripts/project_ascend.py                      # real size (meta device; seconds)
    python scripts/project_ascend.py --json projection.json
    python scripts/project_ascend.py --config configs/tiny-mvdream.yaml   # tiny models (the test)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODEL_CONFIG = os.path.join(ROOT, "configs", "sd-v2-base.yaml")
SYSTEM_CONFIG = os.path.join(ROOT, "configs", "mvdream-sd21.yaml")

# mindone examples/mvdream README, Ascend 910*, MindSpore 2.4.1, PyNative: train step/s per stage; its renderer
# takes 32 stratified + 32 importance samples per ray, dense, in one graph.
MINDONE_STEP_PER_S = {1: 0.857, 2: 0.465}
MINDONE_SAMPLES = (32, 32)


@dataclass(frozen=True)
class Card:
    name: str
    cube_fp16: float      # FLOP/s, matrix (cube) units, fp16
    vector_fp16: float    # FLOP/s, vector units, fp16 (a fused multiply-add counts 2)
    vector_fp32: float    # FLOP/s, vector units, fp32
    hbm: float            # bytes/s
    memory_gb: int
    flash_attention: bool  # the port takes FlashAttentionScore on this card (mindspore_impl/mvdream/attention.py)
    source: str


# Published numbers, where found:
#  910A: 256 TFLOPS fp16 from 32 Da Vinci cores with 4096 fp16 MACs per cycle each
#        (https://www.anandtech.com/show/14756/hot-chips-live-blogs-huawei-da-vinci-architecture,
#        https://www.besthub.dev/articles/how-huawei-ascend-910-redefines-ai-training-performance-d95c7f11f1dc);
#        four HBM stacks, 1.2 TB/s (https://www.besthub.dev/articles/inside-huawei-s-ascend-ai-processor-architecture-
#        performance-and-design-secrets-04d306ca703a). Vector unit 2048 bits per core (Hot Chips 31, summarised at
#        https://vengineer.hatenablog.com/entry/2019/09/06/070000): 128 fp16 / 64 fp32 lanes; at the clock implied by
#        the cube peak (256e12 / (32 x 8192) = 0.98 GHz) that is 8.0 TFLOPS fp16 and 4.0 TFLOPS fp32 with FMA counted
#        as 2 (DERIVED here, not published).
#  910B3 / 910B4: cube 294.9 / 245.7 TFLOPS fp16, vector 18.4 / 15.4 TFLOPS fp16, HBM 1.6 / 0.8 TB/s, 64 / 32 GB,
#        from a public Ascend performance-model table (a HWConf class found by code search; its repository was not
#        identified). They match 20 cube cores x 8192 FLOP/cycle at 1.8 / 1.5 GHz. A measured fp16 matmul on a 910B2
#        (table peak 353.8) reaches 314.5 TFLOPS at 4096^2 but 98 TFLOPS at 1024^2
#        (https://github.com/zzc0721/torch-performance-test-data/issues/109). fp32 vector = half the fp16 rate.
HARDWARE = {
    "910A": Card("Ascend 910A (Atlas 300T / 800 training, 32 GB)", 256e12, 8.0e12, 4.0e12, 1.2e12, 32, False,
                 "256 TFLOPS fp16 (32 cores x 4096 MAC), 4 HBM stacks 1.2 TB/s: Huawei Hot Chips 31 and launch "
                 "material; vector peak derived from the 2048-bit vector unit"),
    "910B3": Card("Ascend 910B3 (Atlas 800T A2, 64 GB)", 294.9e12, 18.4e12, 9.2e12, 1.6e12, 64, True,
                  "294.9 TFLOPS fp16 cube, 18.4 TFLOPS fp16 vector, 1.6 TB/s: public Ascend performance-model table"),
    "910B4": Card("Ascend 910B4 (32 GB)", 245.7e12, 15.4e12, 7.7e12, 0.8e12, 32, True,
                  "245.7 TFLOPS fp16 cube, 15.4 TFLOPS fp16 vector, 0.8 TB/s: public Ascend performance-model table"),
}


@dataclass(frozen=True)
class Utilisation:
    cube: float
    vector: float
    hbm: float


# ASSUMED fractions of peak. Cube: 30% / 50%. The UNet and VAE run many small products (32x32 latents, 320..1280
# channels; the VAE's 3x3 convs at 256x256 with 128..512 channels): the 910B2 measurement above reaches 28% of peak
# at 1024^2 and 89% at 4096^2. Vector: the same fractions; the renderer's vector work is integer hashing, trilinear
# weights and gathers, which suit the Da Vinci vector unit poorly (no hardware gather: each corner row is a DMA
# from global memory, in 32-byte Unified Buffer granules, 512-byte cache lines preferred:
# https://www.hiascend.com/document/detail/en/canncommercial/800/opdevg/Ascendcopdevg/atlas_ascendc_10_0010.html),
# so its real efficiency may be lower. HBM: 60% / 80% of peak.
SCENARIOS = {"conservative": Utilisation(0.30, 0.30, 0.60), "optimistic": Utilisation(0.50, 0.50, 0.80)}

VECTOR_OPS_PER_ELEMENT = 2.0  # elementwise ops per output element of a non-matmul op (UNet, VAE): an assumption
CUBE_OPS = {"mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward", "_convolution",
            "cudnn_convolution", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention"}
NO_KERNEL_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view", "detach",
                 "alias", "lift_fresh", "lift_fresh_copy", "_reshape_alias", "t", "view", "as_strided"}


# ============================================================================ counting


@dataclass
class Cost:
    """The work of one phase. cube: matmul/conv FLOPs; vec16 / vec32: vector-unit operations in fp16 / fp32;
    hbm: bytes to and from HBM (lower bound), attention scores excluded; hbm_attn: the bytes of materialised
    attention scores (counted only on a card without flash attention); kernels: ops launched (attention
    internals counted as one kernel); kernels_attn: the extra kernels of the math attention path."""
    cube: float = 0.0
    vec16: float = 0.0
    vec32: float = 0.0
    hbm: float = 0.0
    hbm_attn: float = 0.0
    kernels: float = 0.0
    kernels_attn: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Cost)))

    def scaled(self, k: float) -> "Cost":
        return Cost(*(getattr(self, f.name) * k for f in fields(Cost)))

    def with_kernels(self, kernels: float, kernels_attn: float = 0.0) -> "Cost":
        return Cost(self.cube, self.vec16, self.vec32, self.hbm, self.hbm_attn, kernels, kernels_attn)


def _op_tally_class():
    """The TorchDispatchMode subclass (built on first use so that importing this script stays light)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class OpTally(TorchDispatchMode):
        """Sums, over every op that runs under it: output bytes, output elements of non-matmul ops (by dtype
        width) and the number of ops (views and allocations excluded: they move no data). Ops inside
        `attention_region()` are also summed apart, so the math attention's score tensors can be told from the
        rest."""

        def __init__(self):
            super().__init__()
            self.bytes = 0
            self.elems16 = 0
            self.elems32 = 0
            self.kernels = 0
            self.attn_bytes = 0
            self.attn_kernels = 0
            self.attn_out_bytes = 0
            self.attn_calls = 0
            self.op_names: dict[str, int] = {}
            self._in_attention = False

        @contextlib.contextmanager
        def attention_region(self):
            self._in_attention = True
            try:
                yield
            finally:
                self._in_attention = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            returns = func._schema.returns
            if name in NO_KERNEL_OPS or any(r.alias_info is not None and not r.alias_info.is_write for r in returns):
                return out
            tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            written = sum(t.numel() * t.element_size() for t in tensors)
            self.bytes += written
            self.kernels += 1
            self.op_names[name] = self.op_names.get(name, 0) + 1
            if name not in CUBE_OPS:
                for t in tensors:
                    if t.element_size() <= 2 and t.is_floating_point():
                        self.elems16 += t.numel()
                    else:
                        self.elems32 += t.numel()
            if self._in_attention:
                self.attn_bytes += written
                self.attn_kernels += 1
            return out

    return OpTally


def matmul_like_uncounted(op_names, flop_counter) -> list[str]:
    """Ops that look like matrix products but have no FlopCounterMode formula (their FLOPs would be missing)."""
    known = {getattr(k, "__name__", str(k)).split(".")[-1] for k in flop_counter.flop_registry}
    products = {"matmul", "einsum", "linear", "mv", "addmv", "dot", "vdot", "tensordot", "addbmm", "addr", "outer"}
    looks_like = lambda n: n.endswith("mm") or "conv" in n or "attention" in n or n in products
    return sorted(n for n in op_names if looks_like(n) and n not in known and n not in CUBE_OPS)


@contextlib.contextmanager
def counting(mark_attention: bool = False):
    """with counting() as c: run torch code. Afterwards c["flops"] (FlopCounterMode's total), c["tally"] (the
    OpTally) and c["uncounted"] (matmul-like ops without a FLOP formula). mark_attention: sum the internals of
    torch_ref.mvdream.attention.attention apart (see attention_marked)."""
    from torch.utils.flop_counter import FlopCounterMode
    result = {}
    tally = _op_tally_class()()
    marked = attention_marked(tally) if mark_attention else contextlib.nullcontext()
    with FlopCounterMode(display=False) as fc, tally, marked:
        yield result
    result["flops"] = float(fc.get_total_flops())
    result["tally"] = tally
    result["uncounted"] = matmul_like_uncounted(tally.op_names, fc)


@contextlib.contextmanager
def attention_marked(tally):
    """torch_ref.mvdream.attention.attention wrapped so that its internals (scores, softmax, casts) are also
    summed apart; its result, which a fused kernel would write, is remembered so it can be added back."""
    import torch_ref.mvdream.attention as attention_module
    original = attention_module.attention

    def marked(q, k, v, heads, scale):
        with tally.attention_region():
            out = original(q, k, v, heads, scale)
        tally.attn_out_bytes += out.numel() * out.element_size()
        tally.attn_calls += 1
        return out

    attention_module.attention = marked
    try:
        yield
    finally:
        attention_module.attention = original


def cost_of(count: dict, weight_bytes: float = 0.0) -> Cost:
    """A Cost from a counting() result: HBM bytes = 2 x outputs (each written once and read once) + the weights
    read once; attention internals (minus the result a fused kernel writes) go to hbm_attn / kernels_attn."""
    t = count["tally"]
    internal = max(0, t.attn_bytes - t.attn_out_bytes)
    return Cost(cube=count["flops"], vec16=VECTOR_OPS_PER_ELEMENT * t.elems16,
                vec32=VECTOR_OPS_PER_ELEMENT * t.elems32, hbm=2.0 * (t.bytes - internal) + weight_bytes,
                hbm_attn=2.0 * internal, kernels=t.kernels - t.attn_kernels + t.attn_calls,
                kernels_attn=t.attn_kernels - t.attn_calls)


def param_bytes(params) -> float:
    return float(sum(p.numel() * p.element_size() for p in params))


# ============================================================================ the diffusion model on the meta device


def unet_cost(model_params: dict, batch: int, latent: tuple, n_view: int, fp16: bool = True) -> tuple[Cost, dict]:
    """One CFG UNet call on `batch` (= 2 x B) samples, no gradient, built and run on the meta device."""
    import torch
    from torch_ref.mvdream import unet
    u_params = dict(model_params["unet_config"]["params"])
    u_params["use_fp16"] = fp16
    with torch.device("meta"):
        model = unet.build_from_config(u_params).eval()
    c, h, w = latent
    x = torch.empty(batch, c, h, w, device="meta")
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    text = torch.empty(batch, 77, int(u_params["context_dim"]), device="meta")
    camera_dim = u_params.get("camera_dim")
    camera = torch.empty(batch, int(camera_dim), device="meta") if camera_dim else None
    with torch.no_grad(), counting(mark_attention=True) as count:
        model(x, t, text, camera, n_view)
    weights = param_bytes(model.parameters())
    info = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "weight_bytes": weights, "batch": batch,
            "latent": list(latent), "attention_calls": count["tally"].attn_calls, "uncounted_ops": count["uncounted"]}
    return cost_of(count, weights), info


def vae_cost(model_params: dict, render_res: int, image_size: int) -> tuple[Cost, Cost, dict]:
    """One view through encode_images: (B=1,H,W,3) render -> bilinear resize to image_size -> *2-1 -> encoder ->
    quant_conv -> posterior sample x scale_factor, forward, then the backward to the image (frozen weights: input
    gradients only). Meta device. -> (forward cost, backward cost, info); latent shape in info."""
    import torch
    import torch.nn.functional as F
    from torch_ref.mvdream import first_stage
    with torch.device("meta"):
        vae = first_stage.build_first_stage(dict(model_params["first_stage_config"])).eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    encoder_params = list(vae.encoder.parameters()) + list(vae.quant_conv.parameters())
    weights = param_bytes(encoder_params)
    rgb = torch.empty(1, render_res, render_res, 3, device="meta", requires_grad=True)
    scale = float(model_params.get("scale_factor", 0.18215))
    with counting() as fwd:
        x = rgb.permute(0, 3, 1, 2)
        if render_res != image_size:
            x = F.interpolate(x, (image_size, image_size), mode="bilinear", align_corners=False)
        moments = vae.quant_conv(vae.encoder(x * 2.0 - 1.0))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        latents = (mean + std * torch.empty_like(mean)) * scale
    with counting() as bwd:
        latents.backward(torch.empty_like(latents))
    info = {"encoder_params_m": sum(p.numel() for p in encoder_params) / 1e6, "weight_bytes": weights,
            "latent": list(latents.shape[1:]), "uncounted_ops": sorted(set(fwd["uncounted"] + bwd["uncounted"]))}
    return cost_of(fwd, weights), cost_of(bwd, weights), info


# ============================================================================ the renderer, analytically


def mlp_flops(dims: list) -> float:
    """Forward FLOPs of a bias-free MLP with these layer widths (2 per multiply-add)."""
    return float(sum(2 * a * b for a, b in zip(dims[:-1], dims[1:])))


def renderer_model(system_cfg: dict, gather_bytes: float) -> dict:
    """Per-sample and per-ray work of the NeRF renderer of system_cfg, from its config (fp32 throughout).

    Keys (each a Cost): coarse_eval / fine_fwd_eval / fine_bwd_eval: the field at one EVALUATED sample (scales
    with the evaluated fraction); coarse_sample / fine_fwd_sample / fine_bwd_sample: the per-sample work that
    stays dense (positions, occupancy test, compositing); compaction_sample: the cost of compacting one sample
    (only with a fraction < 1); ray_fwd / ray_bwd: background and sample placement per ray. Also "detail": the
    numbers behind them (ops per hash level, MLP widths, table size)."""
    from neutral.lift3d.background import NeuralEnvironmentMapBackgroundConfig
    from neutral.config import parse_structured
    from neutral.lift3d.hashgrid import build_layout
    from neutral.lift3d.implicit_volume import parse_config
    from neutral.lift3d.mlp import layer_dims, parse_mlp_config
    from neutral.lift3d.nerf_volume_renderer import Config as RendererConfig

    geo = parse_config(system_cfg["geometry"])
    grid_cfg, layouts, n_rows = build_layout(3, geo.pos_encoding_config)
    n_feat = grid_cfg.n_features_per_level
    enc_dim = grid_cfg.n_levels * n_feat
    mlp_cfg = parse_mlp_config(geo.mlp_network_config)
    density_dims = layer_dims(enc_dim, 1, mlp_cfg)
    feature_dims = layer_dims(enc_dim, geo.n_feature_dims, mlp_cfg)
    hidden = sum(density_dims[1:-1]) + sum(feature_dims[1:-1])

    # one hash level, per sample (vector ops; a multiply-add counts 2): scale + offset (6), floor (3), fraction (3);
    # 8 corners x 3 integer adds (24); the row index per corner: dense levels x + y*r + z*r^2 (4), hashed levels
    # 2 multiplies + 2 xors + modulo + table offset (6); trilinear weights: 1 - frac (3) + 2 products per corner
    # (16); interpolation: 8 corners x F features x multiply-add.
    setup, weights, interp = 12 + 24, 3 + 16, 8 * n_feat * 2
    index = {True: 8 * 4, False: 8 * 6}
    level_fwd = [setup + index[lay.dense] + weights + interp for lay in layouts]
    # backward per level (a bprop that recomputes rows and weights, as issue 11 asks): recompute (setup, index,
    # weights) + grad x weight (8F) + scatter-add (8F)
    level_bwd = [setup + index[lay.dense] + weights + 16 * n_feat for lay in layouts]
    row_bytes = 4 * n_feat
    per_access = max(row_bytes, gather_bytes)
    grid_fwd = Cost(vec32=sum(level_fwd), hbm=grid_cfg.n_levels * 8 * per_access + 2 * 4 * (3 + enc_dim))
    grid_bwd = Cost(vec32=sum(level_bwd), hbm=grid_cfg.n_levels * 8 * 2 * per_access + 2 * 4 * enc_dim)

    density_fwd = mlp_flops(density_dims)
    feature_fwd = mlp_flops(feature_dims)
    act_bytes = lambda dims: 2 * 4 * sum(dims[1:])  # each layer output written and read once, fp32
    # blob bias sqrt(x^2+y^2+z^2) (~11), softplus (~8), occupancy mask (1); material sigmoid on the features (~6 each)
    density_tail, material = 20, 6 * geo.n_feature_dims
    coarse_eval = grid_fwd + Cost(cube=density_fwd, vec32=sum(density_dims[1:-1]) + density_tail,
                                  hbm=act_bytes(density_dims))
    fine_fwd_eval = grid_fwd + Cost(cube=density_fwd + feature_fwd, vec32=hidden + density_tail + material,
                                    hbm=act_bytes(density_dims) + act_bytes(feature_dims))
    # MLP backward: input and weight gradients (2 x forward FLOPs); ReLU masks; activation gradients
    fine_bwd_eval = grid_bwd + Cost(cube=2 * (density_fwd + feature_fwd), vec32=hidden + density_tail + material,
                                    hbm=2 * (act_bytes(density_dims) + act_bytes(feature_dims)))

    # dense per-sample work: position o + t d (6) and contraction (9); occupancy cell index (~16) and a lookup in
    # the 32^3 grid (cache resident); compositing forward (alpha, transmittance, weights, rgb / opacity / depth /
    # z-variance sums: ~28), backward ~2x; ~11 fp32 values per sample written and read once each way.
    coarse_sample = Cost(vec32=6 + 9 + 16 + 17, hbm=2 * 4 * 7)
    fine_fwd_sample = Cost(vec32=6 + 9 + 16 + 28, hbm=2 * 4 * 11)
    fine_bwd_sample = Cost(vec32=56, hbm=2 * 4 * 11)
    # compaction: prefix sum + slot (~4 ops), gather of the sample's position into the buffer and scatter of
    # density + rgb back (12 + 16 bytes), the slot index (4 bytes) written and read
    compaction_sample = Cost(vec32=4, hbm=12 + 16 + 2 * 4)

    rc = parse_structured(RendererConfig, system_cfg["renderer"], "renderer")
    sc, si = rc.num_samples_per_ray, rc.num_importance_samples
    s = sc + si
    # per ray: sample placement (stratified t, pdf cumsum, inverse-CDF search, sort of the merged samples) and the
    # t arrays written and read; the background: SH encoding (degree^2 coefficients, ~40 ops) + MLP + sigmoid
    bg = parse_structured(NeuralEnvironmentMapBackgroundConfig, system_cfg.get("background") or {}, "background")
    degree = int(bg.dir_encoding_config.get("degree", 3))
    bg_dims = layer_dims(degree ** 2, bg.n_output_dims, parse_mlp_config(bg.mlp_network_config))
    log2 = lambda n: math.log2(max(n, 2))
    placement = 2 * sc + (2 * si * log2(sc) + 2 * s * log2(s) if si else 0)
    ray_fwd = Cost(cube=mlp_flops(bg_dims), vec32=placement + 40 + sum(bg_dims[1:-1]) + 18,
                   hbm=2 * 4 * (sc + si + s) + act_bytes(bg_dims) + 4 * 3 * 4)
    ray_bwd = Cost(cube=2 * mlp_flops(bg_dims), vec32=40 + sum(bg_dims[1:-1]) + 18, hbm=2 * act_bytes(bg_dims))

    field_params = n_rows * n_feat + sum(a * b for a, b in zip(density_dims[:-1], density_dims[1:])) \
        + sum(a * b for a, b in zip(feature_dims[:-1], feature_dims[1:]))
    bg_params = sum(a * b for a, b in zip(bg_dims[:-1], bg_dims[1:]))
    return {"coarse_eval": coarse_eval, "fine_fwd_eval": fine_fwd_eval, "fine_bwd_eval": fine_bwd_eval,
            "coarse_sample": coarse_sample, "fine_fwd_sample": fine_fwd_sample, "fine_bwd_sample": fine_bwd_sample,
            "compaction_sample": compaction_sample, "ray_fwd": ray_fwd, "ray_bwd": ray_bwd,
            "samples": (sc, si), "trained_params": field_params + bg_params,
            "trained_tensors": len(density_dims) + len(feature_dims) + len(bg_dims) - 2,
            "detail": {"hash_levels": grid_cfg.n_levels, "features_per_level": n_feat,
                       "dense_levels": sum(lay.dense for lay in layouts), "table_rows": n_rows,
                       "table_bytes": n_rows * n_feat * 4, "gather_bytes_per_corner": per_access,
                       "ops_per_level_fwd": level_fwd, "ops_per_level_bwd": level_bwd,
                       "density_mlp": density_dims, "feature_mlp": feature_dims, "background_mlp": bg_dims,
                       "mlp_flops_fine_fwd": density_fwd + feature_fwd, "mlp_flops_coarse": density_fwd}}


def renderer_kernels(system_cfg: dict, rays: int = 4) -> dict:
    """Ops launched by ONE ray chunk of the torch_ref renderer (forward without gradient; forward + backward),
    counted on a few real rays on the CPU with a small hash table (the op sequence does not depend on the number
    of rays or the table size). Also its matmul FLOPs and output bytes per sample, to cross-check the analytic
    model: the MLP FLOPs must agree, the bytes are those of torch_ref's unfused ops (int64 corner indices)."""
    import copy

    import numpy as np
    import torch
    from torch_ref.lift3d.background.neural_environment_map import NeuralEnvironmentMapBackground
    from torch_ref.lift3d.geometry.implicit_volume import ImplicitVolume
    from torch_ref.lift3d.materials.no_material import NoMaterial
    from torch_ref.lift3d.renderers import NeRFVolumeRenderer

    geo_cfg = copy.deepcopy(system_cfg["geometry"])
    geo_cfg.setdefault("pos_encoding_config", {})["log2_hashmap_size"] = 10
    geometry = ImplicitVolume(geo_cfg)
    renderer = NeRFVolumeRenderer(system_cfg["renderer"], geometry, NoMaterial(system_cfg.get("material") or {}),
                                  NeuralEnvironmentMapBackground(system_cfg.get("background") or {}))
    rng = np.random.default_rng(0)
    origins = torch.from_numpy(np.tile(np.array([[0.0, 0.0, 2.5]], np.float32), (rays, 1)))
    dirs = torch.from_numpy(np.array([[0.05 * i, 0.02, -1.0] for i in range(rays)], np.float32))
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    light = torch.zeros(rays, 3)
    jitter = torch.from_numpy(rng.random((rays, renderer.jitter_samples), dtype=np.float32))
    colors = (torch.ones(3), torch.zeros(3))
    args = (origins, dirs, light, jitter, None, "diffuse") + colors
    with torch.no_grad(), counting() as fwd:
        renderer.render_ray_chunk(*args)
    with counting() as both:
        out = renderer.render_ray_chunk(*args)
        out["comp_rgb"].sum().backward()
    fine = rays * renderer.jitter_samples
    return {"rays": rays, "kernels_fwd": fwd["tally"].kernels, "kernels_fwd_bwd": both["tally"].kernels,
            "matmul_flops_fwd": fwd["flops"], "matmul_flops_fwd_bwd": both["flops"],
            "torch_ref_bytes_per_sample_fwd": fwd["tally"].bytes / fine,
            "torch_ref_bytes_per_sample_fwd_bwd": both["tally"].bytes / fine,
            "uncounted_ops": sorted(set(fwd["uncounted"] + both["uncounted"]))}


# ============================================================================ one step, phase by phase


@dataclass(frozen=True)
class Workload:
    label: str
    views: int              # images per step (= batch size B)
    res: int                # render resolution
    samples: tuple          # (stratified, importance) samples per ray
    chunk_rays: int         # deferred backpropagation over chunks of this many rays; 0: one graph
    fraction: float         # evaluated fraction of the samples (empty-space skipping); 1: dense


def render_costs(w: Workload, model: dict) -> tuple[Cost, Cost]:
    """(forward, backward) of the renderer over every ray of the step, from renderer_model's per-sample costs."""
    sc, si = w.samples
    s, f = sc + si, w.fraction
    n_rays = w.views * w.res * w.res
    fwd = model["fine_fwd_sample"].scaled(s) + model["fine_fwd_eval"].scaled(s * f) + model["ray_fwd"]
    if si:
        fwd = fwd + model["coarse_sample"].scaled(sc) + model["coarse_eval"].scaled(sc * f)
    if f < 1.0:
        fwd = fwd + model["compaction_sample"].scaled(s + (sc if si else 0))
    bwd = model["fine_bwd_sample"].scaled(s) + model["fine_bwd_eval"].scaled(s * f) + model["ray_bwd"]
    return fwd.scaled(n_rays), bwd.scaled(n_rays)


def sds_loss_cost(views: int, latent: tuple) -> Cost:
    """q_sample, two x0 reconstructions, the per-object std rescale and the loss on (B, 4, h, w) latents:
    ~30 elementwise ops, each writing and reading one latent-sized fp32 tensor."""
    elems = views * int(math.prod(latent))
    return Cost(vec32=30 * elems, hbm=30 * 2 * 4 * elems, kernels=30)


def step_phases(w: Workload, model: dict, kernels: dict, unet: Cost, vae_fwd: Cost, vae_bwd: Cost,
                latent: tuple) -> dict:
    """Phase name -> Cost of one training step. Deferred (chunk_rays > 0), as mindspore_impl's _deferred_step:
    render every chunk without a graph, encode each view (VAE forward), the CFG UNet and the SDS loss, the VAE
    vector-Jacobian product per view (forward again + backward), then every chunk again with its gradient
    (stratified + importance + field forward + field backward), accumulating a dense gradient of every trained
    tensor per chunk, then AdamW. One graph (chunk_rays = 0): render forward + backward once, VAE forward +
    backward on the whole batch."""
    render_fwd, render_bwd = render_costs(w, model)
    params, tensors = model["trained_params"], model["trained_tensors"]
    adamw = Cost(vec32=16 * params, hbm=8 * 4 * params, kernels=2 * tensors)  # p, g, m, v read; p, m, v written
    loss = sds_loss_cost(w.views, latent)
    if w.chunk_rays > 0:
        chunks = math.ceil(w.views * w.res * w.res / w.chunk_rays)
        return {
            "render (no grad)": render_fwd.with_kernels(chunks * kernels["kernels_fwd"]),
            "vae encode": vae_fwd.scaled(w.views),
            "unet cfg": unet,
            "sds loss": loss,
            "vae vjp": (vae_fwd + vae_bwd).scaled(w.views),
            "render + backward": (render_fwd + render_bwd).with_kernels(chunks * kernels["kernels_fwd_bwd"]),
            "grad accumulate": Cost(vec32=2 * params, hbm=4 * 4 * params, kernels=tensors).scaled(chunks),
            "adamw": adamw,
        }
    return {
        "render + backward": (render_fwd + render_bwd).with_kernels(kernels["kernels_fwd_bwd"]),
        "vae fwd + bwd": (vae_fwd + vae_bwd).scaled(w.views).with_kernels(vae_fwd.kernels + vae_bwd.kernels),
        "unet cfg": unet,
        "sds loss": loss,
        "adamw": adamw,
    }


def phase_time(c: Cost, card: Card, u: Utilisation) -> tuple[float, str]:
    """Roofline time of one phase on one card: the slowest of cube, vector and HBM (they overlap within a phase)."""
    hbm = c.hbm + (0.0 if card.flash_attention else c.hbm_attn)
    times = {"cube": c.cube / (card.cube_fp16 * u.cube),
             "vector": c.vec16 / (card.vector_fp16 * u.vector) + c.vec32 / (card.vector_fp32 * u.vector),
             "hbm": hbm / (card.hbm * u.hbm)}
    bound = max(times, key=times.get)
    return times[bound], bound


def kernel_count(c: Cost, card: Card) -> float:
    return c.kernels + (0.0 if card.flash_attention else c.kernels_attn)


def total(phases: dict) -> Cost:
    out = Cost()
    for c in phases.values():
        out = out + c
    return out


def project(phases: dict, card: Card, u: Utilisation, launch_us: float) -> dict:
    per_phase = {name: phase_time(c, card, u) for name, c in phases.items()}
    roofline = sum(t for t, _ in per_phase.values())
    kernels = sum(kernel_count(c, card) for c in phases.values())
    launch = kernels * launch_us * 1e-6
    return {"s_per_step": roofline, "step_per_s": 1.0 / roofline, "kernels": kernels,
            "s_per_step_with_launch": roofline + launch, "step_per_s_with_launch": 1.0 / (roofline + launch),
            "phases": {name: {"s": t, "bound": b} for name, (t, b) in per_phase.items()}}


# ============================================================================ report


def load_system(system_path: str, overrides: list) -> tuple[dict, dict]:
    """(data config, system config) of a text-to-3D YAML through the project's config loader."""
    import launch
    from omegaconf import OmegaConf
    cfg = launch.load_config(system_path, ["system.prompt_processor.prompt=projection"] + list(overrides))
    return (OmegaConf.to_container(cfg.data, resolve=True), OmegaConf.to_container(cfg.system, resolve=True))


def stage_list(data_cfg: dict) -> list[tuple[int, int, int]]:
    """[(stage, views, resolution)] from the data config's batch_size / width lists (one entry: one stage)."""
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]
    batches, widths = as_list(data_cfg["batch_size"]), as_list(data_cfg["width"])
    n = max(len(batches), len(widths))
    pick = lambda values, i: values[min(i, len(values) - 1)]
    return [(i + 1, int(pick(batches, i)), int(pick(widths, i))) for i in range(n)]


def with_samples(system_cfg: dict, samples: tuple) -> dict:
    out = dict(system_cfg)
    out["renderer"] = dict(system_cfg["renderer"], num_samples_per_ray=samples[0], num_importance_samples=samples[1])
    return out


def build_report(args) -> dict:
    from neutral.mvdream.model_config import load_model_config
    t0 = time.perf_counter()
    model_params = load_model_config(args.config)
    data_cfg, system_cfg = load_system(args.system_config, args.set)
    g = system_cfg["guidance"]
    image_size, n_view = int(g.get("image_size", 256)), int(g.get("n_view", data_cfg.get("n_view", 4)))
    chunk_rays = int(system_cfg.get("render_chunk_rays", 0)) if args.chunk_rays is None else args.chunk_rays
    samples = (int(system_cfg["renderer"]["num_samples_per_ray"]),
               int(system_cfg["renderer"].get("num_importance_samples", 0)))
    ours_model = renderer_model(system_cfg, args.gather_bytes)
    mindone_model = renderer_model(with_samples(system_cfg, MINDONE_SAMPLES), args.gather_bytes)
    kernels = renderer_kernels(system_cfg)
    rays, (sc, si) = kernels["rays"], samples
    d = ours_model["detail"]
    bg = mlp_flops(d["background_mlp"])
    analytic_fwd = rays * ((sc * d["mlp_flops_coarse"] if si else 0) + (sc + si) * d["mlp_flops_fine_fwd"] + bg)
    mlp_check = {"analytic_fwd": analytic_fwd,
                 "analytic_fwd_bwd": analytic_fwd + rays * (2 * (sc + si) * d["mlp_flops_fine_fwd"] + 2 * bg)}
    report = {"projection": True,
              "what": "PROJECTION of one SDS training step onto Ascend cards from FLOP and byte counts; not a measurement",
              "model_config": os.path.relpath(args.config, ROOT), "system_config": os.path.relpath(args.system_config, ROOT),
              "assumptions": {"scenarios": {k: asdict(v) for k, v in SCENARIOS.items()},
                              "vector_ops_per_element": VECTOR_OPS_PER_ELEMENT, "gather_bytes": args.gather_bytes,
                              "launch_us_per_kernel": args.launch_us,
                              "bytes": "lower bound: each op output written once and read once, plus weights "
                                       "read once per forward and once per backward"},
              "hardware": {k: asdict(v) for k, v in HARDWARE.items()},
              "renderer": {"per_sample": {k: asdict(v) for k, v in ours_model.items() if isinstance(v, Cost)},
                           "detail": ours_model["detail"], "kernels_per_chunk": kernels,
                           "mlp_check": mlp_check},
              "stages": {}}
    vae_by_res = {}
    for stage, views, res in stage_list(data_cfg):
        if res not in vae_by_res:
            vae_by_res[res] = vae_cost(model_params, res, image_size)
        vae_fwd, vae_bwd, vae_info = vae_by_res[res]
        latent = tuple(vae_info["latent"])
        unet, unet_info = unet_cost(model_params, 2 * views, latent, n_view if views % n_view == 0 else views)
        rows, phase_sets = [], {}
        for fraction in args.fractions:
            w = Workload("this port", views, res, samples, chunk_rays, fraction)
            phases = step_phases(w, ours_model, kernels, unet, vae_fwd, vae_bwd, latent)
            phase_sets[fraction] = phases
            for card_key, card in HARDWARE.items():
                for scen_key, u in SCENARIOS.items():
                    rows.append({"card": card_key, "scenario": scen_key, "fraction": fraction,
                                 **project(phases, card, u, args.launch_us)})
        mindone_w = Workload("mindone workload", views, res, MINDONE_SAMPLES, 0, 1.0)
        mindone_phases = step_phases(mindone_w, mindone_model, kernels, unet, vae_fwd, vae_bwd, latent)
        mindone_total = total(mindone_phases)
        measured = MINDONE_STEP_PER_S.get(stage)
        implied = {}
        if measured:
            for card_key, card in HARDWARE.items():
                implied[card_key] = {"cube_utilisation": mindone_total.cube * measured / card.cube_fp16,
                                     "projected_step_per_s": {k: project(mindone_phases, card, u, args.launch_us)
                                                              for k, u in SCENARIOS.items()}}
        n_rays = views * res * res
        report["stages"][str(stage)] = {
            "views": views, "res": res, "samples": list(samples), "rays": n_rays,
            "fine_samples": n_rays * sum(samples), "coarse_samples": n_rays * samples[0] if samples[1] else 0,
            "chunk_rays": chunk_rays, "chunks": math.ceil(n_rays / chunk_rays) if chunk_rays else 0,
            "unet": unet_info, "vae": vae_info,
            "phases": {str(f): {k: asdict(c) for k, c in p.items()} for f, p in phase_sets.items()},
            "totals": {str(f): asdict(total(p)) for f, p in phase_sets.items()},
            "rows": rows,
            "mindone": {"measured_step_per_s": measured, "samples": list(MINDONE_SAMPLES), "one_graph": True,
                        "step_total": asdict(mindone_total),
                        "s_per_kernel_if_launch_bound": (1.0 / measured / mindone_total.kernels) if measured else None,
                        "implied": implied}}
    report["seconds"] = time.perf_counter() - t0
    return report


def print_report(r: dict) -> None:
    out = print
    out("MVDream SDS training step on one Ascend card: a PROJECTION from FLOP and byte counts, NOT a measurement")
    out(f"  models {r['model_config']}, system {r['system_config']}; counted on torch's meta device in {r['seconds']:.1f} s")
    out("  assumptions: cube/vector/HBM utilisation conservative 30%/30%/60%, optimistic 50%/50%/80%; bytes are a "
        f"lower bound; hash-grid corner gathers {r['assumptions']['gather_bytes']:.0f} B each; "
        f"+launch adds {r['assumptions']['launch_us_per_kernel']:g} us per kernel (assumed)")
    d, k = r["renderer"]["detail"], r["renderer"]["kernels_per_chunk"]
    ps = r["renderer"]["per_sample"]
    out(f"  renderer per evaluated fine sample: {ps['fine_fwd_eval']['vec32']:.0f} vector ops + "
        f"{ps['fine_fwd_eval']['cube']:.0f} MLP FLOPs + {ps['fine_fwd_eval']['hbm'] / 1e3:.1f} kB forward; "
        f"{ps['fine_bwd_eval']['vec32']:.0f} ops + {ps['fine_bwd_eval']['cube']:.0f} FLOPs + "
        f"{ps['fine_bwd_eval']['hbm'] / 1e3:.1f} kB backward ({d['hash_levels']} levels x 8 corners, table "
        f"{d['table_bytes'] / 2 ** 20:.0f} MiB); torch_ref as written writes "
        f"{k['torch_ref_bytes_per_sample_fwd_bwd'] / 1e3:.1f} kB per sample (fwd+bwd); "
        f"{k['kernels_fwd']} / {k['kernels_fwd_bwd']} ops per chunk (fwd / fwd+bwd)")
    uncounted = sorted({op for s in r["stages"].values() for op in s["unet"]["uncounted_ops"] + s["vae"]["uncounted_ops"]}
                       | set(k["uncounted_ops"]))
    out(f"  FlopCounterMode on meta tensors: matmul-like ops without a FLOP formula: {', '.join(uncounted) or 'none'} "
        "(elementwise ops, the bilinear resize included, are vector work: 2 ops per output element)")
    check = r["renderer"]["mlp_check"]
    out(f"  check: renderer MLP FLOPs of one {k['rays']}-ray chunk, analytic {check['analytic_fwd']:.0f} (fwd) / "
        f"{check['analytic_fwd_bwd']:.0f} (fwd+bwd) vs FlopCounterMode on torch_ref {k['matmul_flops_fwd']:.0f} / "
        f"{k['matmul_flops_fwd_bwd']:.0f}")
    for stage, s in r["stages"].items():
        sc, si = s["samples"]
        mode = f"deferred, {s['chunks']} chunks of {s['chunk_rays']} rays" if s["chunk_rays"] else "one graph"
        out("")
        out(f"stage {stage}: {s['views']} views x {s['res']}x{s['res']}, {sc} + {si} samples/ray "
            f"({s['fine_samples'] / 1e6:.2f} M fine + {s['coarse_samples'] / 1e6:.2f} M coarse samples), {mode}; "
            f"UNet batch {s['unet']['batch']} on {s['unet']['latent'][1]}x{s['unet']['latent'][2]} latents")
        fractions = list(s["phases"])
        head = (f"  {'phase':18s} {'cube TFLOP':>10s} {'vec Gop':>9s} {'HBM GB':>8s} {'kernels':>8s}"
                + "".join(f" {c + ' ms':>9s}" for c in HARDWARE))
        out(f"  phases at evaluated fraction {fractions[0]} (ms: conservative scenario; 910A adds the attention scores)")
        out(head)
        rows = {(x["card"], x["scenario"], x["fraction"]): x for x in s["rows"]}
        for name, c in s["phases"][fractions[0]].items():
            times = "".join(f" {rows[(ck, 'conservative', float(fractions[0]))]['phases'][name]['s'] * 1e3:9.1f}"
                            for ck in HARDWARE)
            out(f"  {name:18s} {c['cube'] / 1e12:10.3f} {(c['vec16'] + c['vec32']) / 1e9:9.1f} "
                f"{c['hbm'] / 1e9:8.2f} {c['kernels']:8.0f}{times}")
        tot = s["totals"][fractions[0]]
        out(f"  {'total':18s} {tot['cube'] / 1e12:10.3f} {(tot['vec16'] + tot['vec32']) / 1e9:9.1f} "
            f"{tot['hbm'] / 1e9:8.2f} {tot['kernels']:8.0f}"
            + "".join(f" {rows[(ck, 'conservative', float(fractions[0]))]['s_per_step'] * 1e3:9.1f}" for ck in HARDWARE))
        m = s["mindone"]
        out(f"  projected step/s of this port (roofline, and with the launch cost) at each evaluated fraction; "
            f"mindone measured {m['measured_step_per_s']} step/s on its own workload ({m['samples'][0]} + "
            f"{m['samples'][1]} samples, dense, one graph, PyNative), projected here as 'mindone wl.'")
        out(f"  {'card':6s} {'scenario':13s}" + "".join(f" {'f=' + f + ' step/s':>14s} {'+launch':>8s}" for f in fractions)
            + f" {'mindone wl.':>11s} {'measured':>9s} {'of proj.':>8s} {'cube util.':>10s}")
        for ck in HARDWARE:
            for sk in SCENARIOS:
                cells = "".join(f" {rows[(ck, sk, float(f))]['step_per_s']:14.2f} "
                                f"{rows[(ck, sk, float(f))]['step_per_s_with_launch']:8.2f}" for f in fractions)
                implied = m["implied"].get(ck)
                if implied:
                    proj = implied["projected_step_per_s"][sk]["step_per_s"]
                    cells += (f" {proj:11.2f} {m['measured_step_per_s']:9.3f} "
                              f"{100 * m['measured_step_per_s'] / proj:7.0f}% {100 * implied['cube_utilisation']:9.1f}%")
                out(f"  {ck:6s} {sk:13s}{cells}")
        mt = m["step_total"]
        out(f"  mindone's workload: {mt['cube'] / 1e12:.2f} TFLOP cube, {(mt['vec16'] + mt['vec32']) / 1e9:.0f} Gop vector, "
            f"{mt['hbm'] / 1e9:.1f} GB, {mt['kernels']:.0f} kernels per step; at {m['measured_step_per_s']} step/s that "
            f"is {1e6 * m['s_per_kernel_if_launch_bound']:.0f} us per kernel if it were launch bound")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=MODEL_CONFIG, help="original model YAML (default configs/sd-v2-base.yaml; "
                                                            "configs/tiny-mvdream.yaml for the tiny models)")
    ap.add_argument("--system-config", default=SYSTEM_CONFIG, help="text-to-3D YAML (default configs/mvdream-sd21.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the system YAML")
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.25],
                    help="evaluated fractions of the samples (empty-space skipping)")
    ap.add_argument("--chunk-rays", type=int, help="deferred chunk size (default: system.render_chunk_rays; 0: one graph)")
    ap.add_argument("--gather-bytes", type=float, default=32.0,
                    help="bytes moved per hash-grid corner row (default 32: the Unified Buffer's 32-byte granule)")
    ap.add_argument("--launch-us", type=float, default=5.0, help="assumed launch cost per kernel, microseconds")
    ap.add_argument("--json", help="write every number to this file")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.config, args.system_config = os.path.abspath(args.config), os.path.abspath(args.system_config)
    report = build_report(args)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"  numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    from neutral.errors import run_cli
    run_cli(main)
