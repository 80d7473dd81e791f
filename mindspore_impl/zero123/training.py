"""Training a Zero-1-to-3 model (cvlab-columbia/zero123's recipe), MindSpore: the loss and the initial weights.

One sample = a condition view and a target view of one object with T, the target's camera relative to the
condition's (neutral/zero123/training.py draws the pairs and every random number; the graph is deterministic given
its inputs). Upstream zero123/ldm/models/diffusion/ddpm.py `LatentDiffusion.get_input` and `p_losses`:

    z0        = first_stage.encode_sample(target, fs_noise) * scale_factor     (frozen; pixel space: the image)
    c_concat  = first_stage.encode_mode(cond) * (1 - drop_image)               (frozen, not scaled)
    emb       = cond_stage_model.encode(cond)                                  [B, 1, D] (trained iff the YAML's
                                                                                cond_stage_trainable)
    c_cross   = cc_projection(cat([emb * (1 - drop_embedding), T]))            null_crossattn "embedding" (upstream)
              | cc_projection(cat([emb, T])) * (1 - drop_embedding)            "projected": the CFG branch's zeros
    x_t       = sqrt(a_t) z0 + sqrt(1 - a_t) noise
    loss      = mean((unet(cat([x_t, c_concat]), t, c_cross) - noise) ** 2)    (eps prediction, l2 "simple")

The system that trains with it: zero123/diffusion_system.py. Twin: torch_ref/zero123/training.py.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mindspore_impl.core.parameters import write_parameter
from mindspore_impl.core.train_step import batch_tensors
from neutral.zero123.training import NULL_CROSSATTN, STEP_INPUTS


class Zero123DiffusionLoss(nn.Cell):
    """construct(target (B,3,H,W) and cond (B,3,H,W) in [-1, 1], T (B,4), t (B,) int32, noise (B,C,h,w),
    fs_noise (B,C,h,w), drop_embedding (B,), drop_image (B,) float {0,1}) -> scalar eps-MSE loss."""

    def __init__(self, model: nn.Cell, schedule: nn.Cell, null_crossattn: str = "embedding",
                 train_image_encoder: bool = False):
        super().__init__()
        if null_crossattn not in NULL_CROSSATTN:
            raise ValueError(f"null_crossattn must be one of {NULL_CROSSATTN}, got {null_crossattn!r}")
        self.model = model
        self.schedule = schedule
        self.scale_factor = float(model.dims.scale_factor)
        self.project_null = null_crossattn == "projected"
        self.train_image_encoder = bool(train_image_encoder)

    def conditions(self, cond, T, drop_embedding, drop_image):
        """(c_concat, c_crossattn) of a batch with its condition dropout."""
        fs = self.model.first_stage_model
        c_concat = ops.stop_gradient(fs.encode_mode(cond)) * (1.0 - drop_image).reshape(-1, 1, 1, 1)
        emb = self.model.cond_stage_model.encode(cond)
        if not self.train_image_encoder:
            emb = ops.stop_gradient(emb)
        keep = (1.0 - drop_embedding).reshape(-1, 1, 1)
        if self.project_null:
            c_crossattn = self.model.camera_conditioning(emb, T) * keep
        else:
            c_crossattn = self.model.camera_conditioning(emb * keep, T)
        return c_concat, c_crossattn

    def construct(self, target, cond, T, t, noise, fs_noise, drop_embedding, drop_image):
        z0 = ops.stop_gradient(self.model.first_stage_model.encode_sample(target, fs_noise) * self.scale_factor)
        c_concat, c_crossattn = self.conditions(cond, T, drop_embedding, drop_image)
        x_t = self.schedule.q_sample(z0, t, noise)
        eps = self.model.apply_model(x_t, t, c_concat, c_crossattn)
        return ops.mean((eps.astype(ms.float32) - noise) ** 2)


def step_inputs(batch: dict[str, np.ndarray]) -> tuple:
    """Host arrays -> the loss cell's positional tensors (in STEP_INPUTS order)."""
    return batch_tensors(batch, STEP_INPUTS)


# ---------------------------------------------------------------- initial weights

def _is_zero_module(name: str) -> bool:
    """The UNet layers upstream wraps in zero_module (openaimodel.py: out conv, ResBlock out_layers.3;
    attention.py: SpatialTransformer proj_out)."""
    return name.startswith("out.2.") or ".out_layers.3." in name or ".proj_out." in name


def init_weights(model, seed: int) -> None:
    """Upstream's initial weights on top of MindSpore's (torch-equal) Dense / Conv defaults, for training a model
    from scratch (the demo): zero_module layers of the UNet at 0; cc_projection as LatentDiffusion.__init__ makes
    it (the image-embedding block the identity, bias 0, the T columns at their default); the image tower as openai
    CLIP's VisionTransformer.__init__ (class / positional embeddings and proj ~ N(0, width^-1/2)) with
    torch.nn.MultiheadAttention's in_proj (xavier uniform, bias 0) and out_proj bias 0."""
    rng = np.random.default_rng(seed)
    for name, p in model.model.diffusion_model.parameters_and_names():
        if _is_zero_module(name):
            write_parameter(p, np.zeros(p.shape, np.float32))
    proj = model.cc_projection
    w = proj.weight.asnumpy().copy()  # (context_dim, image_embed_dim + 4)
    d = model.dims.image_embed_dim
    w[:, :d] = np.eye(w.shape[0], d, dtype=np.float32)  # nn.init.eye_ of the embedding block
    write_parameter(proj.weight, w)
    write_parameter(proj.bias, np.zeros(proj.bias.shape, np.float32))
    visual = model.cond_stage_model.model.visual
    scale = visual.class_embedding.shape[0] ** -0.5
    for p in (visual.class_embedding, visual.positional_embedding, visual.proj):
        write_parameter(p, (scale * rng.standard_normal(p.shape)).astype(np.float32))
    for name, p in visual.transformer.parameters_and_names():
        if name.endswith("attn.in_proj_weight"):
            bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))  # xavier_uniform_ of the packed (3 W, W) weight
            write_parameter(p, rng.uniform(-bound, bound, p.shape).astype(np.float32))
        elif name.endswith("attn.in_proj_bias") or name.endswith("attn.out_proj.bias"):
            write_parameter(p, np.zeros(p.shape, np.float32))


def model_parameters(model) -> dict[str, ms.Parameter]:
    """The checkpoint names of the model (neutral/zero123/checkpoint_layout.py prefixes, converted names) ->
    Parameters: what loading.py loads strictly, independent of where the model is attached."""
    return {name: p for name, p in model.parameters_and_names()}
