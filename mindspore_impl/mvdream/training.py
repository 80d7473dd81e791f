"""Training the multiview diffusion model (MVDream recipe), MindSpore.

One sample = the F views (4) of one object, contiguous in the batch ("(b f)" layout), each with its
16-value camera condition (normalize_camera(c2w) flattened, what the SDS guidance feeds the UNet).
Per step (host draws every random number, the graph is deterministic given its inputs):

    z0    = first_stage.encode_sample(images, fs_noise) * scale_factor   (frozen; identity in pixel space)
    text  = where(drop, empty-prompt tokens, caption tokens)             (classifier-free dropout, p ~ 0.1)
    ctx   = text_encoder(text), repeated over the F views of its object
    x_t   = sqrt(a_t) z0 + sqrt(1 - a_t) noise                           (one t per object by default)
    loss  = mean((unet(x_t, t, ctx, camera, F) - noise) ** 2)           (eps prediction)

The system that trains with it (forward + backward + AdamW + EMA through core/train_step.py, the batches from
mvdream/data/datamodule.py): mvdream/diffusion_system.py. Twin: torch_ref/mvdream/training.py (same loss on the
same inputs).
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mindspore_impl.core.checkpoint import check_state_dict
from mindspore_impl.core.parameters import write_parameter
from mindspore_impl.core.train_step import batch_tensors
from neutral.mvdream.training import FIRST_STAGE_PREFIX, STEP_INPUTS, TEXT_PREFIX, UNET_PREFIX


# ---------------------------------------------------------------- the loss

class MultiviewDiffusionLoss(nn.Cell):
    """construct(images ((B F),3,H,W) in [-1,1], camera ((B F),16), tokens (B,L) int32, drop (B,) float {0,1},
    t ((B F),) int32, noise ((B F),C,h,w), fs_noise ((B F),C,h,w)) -> scalar eps-MSE loss.

    empty_tokens: (1, L) int32 tokens of the empty prompt "" (what a dropped caption becomes).
    The first stage is frozen (no gradient reaches it); the text encoder is trained when its
    parameters are in the optimizer, else its output is cut from the graph (train_text_encoder=False).
    """

    def __init__(self, unet: nn.Cell, first_stage: nn.Cell, text_encoder: nn.Cell, schedule: nn.Cell,
                 empty_tokens: np.ndarray, num_frames: int, scale_factor: float, train_text_encoder: bool = True):
        super().__init__()
        self.unet = unet
        self.first_stage = first_stage
        self.text_encoder = text_encoder
        self.schedule = schedule
        self.empty_tokens = ms.Tensor(np.asarray(empty_tokens, np.int32).reshape(1, -1))
        self.num_frames = int(num_frames)
        self.scale_factor = float(scale_factor)
        self.train_text_encoder = bool(train_text_encoder)

    def encode_text(self, tokens, drop):
        """Caption tokens with dropped rows replaced by the empty prompt -> ((B F), L, C) context."""
        keep = (drop < 0.5).reshape(-1, 1)
        tokens = ops.where(keep, tokens, ops.broadcast_to(self.empty_tokens, tokens.shape))
        ctx = self.text_encoder(tokens).astype(ms.float32)
        if not self.train_text_encoder:
            ctx = ops.stop_gradient(ctx)
        return ops.repeat_elements(ctx, self.num_frames, axis=0)

    def construct(self, images, camera, tokens, drop, t, noise, fs_noise):
        z0 = ops.stop_gradient(self.first_stage.encode_sample(images, fs_noise) * self.scale_factor)
        ctx = self.encode_text(tokens, drop)
        x_t = self.schedule.q_sample(z0, t, noise)
        eps = self.unet(x_t, t, ctx, camera, self.num_frames)
        return ops.mean((eps - noise) ** 2)


def step_inputs(batch: dict[str, np.ndarray]) -> tuple:
    """Host arrays -> the loss cell's positional tensors (in STEP_INPUTS order)."""
    return batch_tensors(batch, STEP_INPUTS)


# ---------------------------------------------------------------- names and state

def named_params(cell: nn.Cell, prefix: str) -> dict[str, ms.Parameter]:
    """prefix + the parameter's path inside `cell` (independent of where `cell` is attached)."""
    return {prefix + name: p for name, p in cell.parameters_and_names()}


def model_parameters(unet, first_stage, text_encoder) -> dict[str, ms.Parameter]:
    """The original-format (converted) names of the three sub-models -> their Parameters."""
    out = named_params(unet, UNET_PREFIX)
    out.update(named_params(first_stage, FIRST_STAGE_PREFIX))
    out.update(named_params(text_encoder, TEXT_PREFIX))
    return out


def load_named(params: dict[str, ms.Parameter], state: dict[str, np.ndarray], what: str) -> None:
    """Strict copy of `state` into `params` (same keys and shapes, else CheckpointError listing them)."""
    check_state_dict({k: tuple(p.shape) for k, p in params.items()}, state, what)
    for k, p in params.items():
        write_parameter(p, state[k])


def arrays_of(params: dict[str, ms.Parameter]) -> dict[str, np.ndarray]:
    return {k: p.asnumpy() for k, p in params.items()}
