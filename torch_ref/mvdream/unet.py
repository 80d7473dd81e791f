"""MVDream multiview UNet (ldm/modules/diffusionmodules/openaimodel.py: MultiViewUNetModel), PyTorch reference.

SD 2.1's openaimodel UNet plus (a) `camera_embed`, whose output is added to the timestep embedding,
and (b) joint self-attention over the `num_frames` views of one object in every transformer block.
Parameter names equal the original checkpoint's `model.diffusion_model.*` names.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from neutral.mvdream.unet import attention_heads, check_unet_config
from torch_ref.mvdream.attention import SpatialTransformer3D
from torch_ref.mvdream.nn_util import normalization, timestep_embedding, zero_module


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as second argument."""


class TimestepEmbedSequential(nn.Sequential):
    """Passes emb to TimestepBlocks and (context, num_frames) to transformers."""

    def forward(self, x, emb, context=None, num_frames=1):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_frames=num_frames)
            else:
                x = layer(x)
        return x


class Upsample(nn.Module):
    """Nearest x2 upsampling, then an optional 3x3 conv."""

    def __init__(self, channels, use_conv, out_channels=None):
        super().__init__()
        self.channels = channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv, or 2x2 average pooling without conv_resample."""

    def __init__(self, channels, use_conv, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("Downsample without conv cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        return self.op(x)


class ResBlock(TimestepBlock):
    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_scale_shift_norm=False,
                 use_checkpoint=False, norm_groups=32):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(normalization(channels, norm_groups), nn.SiLU(),
                                       nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(normalization(self.out_channels, norm_groups), nn.SiLU(), nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x, emb):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x, emb):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class MultiViewUNetModel(nn.Module):
    """model(x [(B F), C, H, W], timesteps [(B F)], context [(B F), L, context_dim],
    camera [(B F), camera_dim] or None, num_frames=F) -> [(B F), out_channels, H, W] in x's dtype.

    use_checkpoint: activation checkpointing of every ResBlock / transformer block.
    norm_num_groups: GroupNorm groups (this port's extension; upstream and the default: 32).
    use_fp16 / use_bf16: Linear and Conv weights in that dtype (norms stay float32 and normalize in
    float32, attention softmax in float32); activations run in that dtype.
    """

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2,
                 num_classes=None, use_checkpoint=False, use_fp16=False, use_bf16=False, num_heads=-1,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False, resblock_updown=False,
                 use_new_attention_order=False, use_spatial_transformer=False, transformer_depth=1,
                 context_dim=None, n_embed=None, legacy=True, disable_self_attentions=None,
                 num_attention_blocks=None, disable_middle_self_attn=False, use_linear_in_transformer=False,
                 adm_in_channels=None, camera_dim=None, norm_num_groups=32):
        super().__init__()
        channel_mult = list(channel_mult)
        context_dim = list(context_dim) if isinstance(context_dim, (list, tuple)) else context_dim
        self.num_res_blocks = check_unet_config(
            use_spatial_transformer=use_spatial_transformer, context_dim=context_dim, num_heads=num_heads,
            num_head_channels=num_head_channels, dims=dims, num_classes=num_classes, n_embed=n_embed,
            resblock_updown=resblock_updown, use_new_attention_order=use_new_attention_order,
            disable_self_attentions=disable_self_attentions, disable_middle_self_attn=disable_middle_self_attn,
            transformer_depth=transformer_depth, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
            num_attention_blocks=num_attention_blocks, use_fp16=use_fp16, use_bf16=use_bf16,
            adm_in_channels=adm_in_channels)
        del image_size, num_heads_upsample  # unused upstream too (num_heads_upsample only feeds AttentionBlock)
        self.model_channels = model_channels
        self.dtype = torch.bfloat16 if use_bf16 else (torch.float16 if use_fp16 else torch.float32)
        time_embed_dim = model_channels * 4

        def res(ch_in, ch_out=None):
            return ResBlock(ch_in, time_embed_dim, dropout, ch_out, use_scale_shift_norm, use_checkpoint,
                            norm_num_groups)

        def transformer(ch):
            heads, dim_head = attention_heads(ch, num_heads, num_head_channels, legacy)
            return SpatialTransformer3D(ch, heads, dim_head, transformer_depth, dropout, context_dim,
                                        use_linear_in_transformer, use_checkpoint, norm_num_groups)

        def wants_attention(ds, level, nr):
            return ds in attention_resolutions and (num_attention_blocks is None or nr < num_attention_blocks[level])

        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        if camera_dim is not None:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, time_embed_dim), nn.SiLU(),
                                              nn.Linear(time_embed_dim, time_embed_dim))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for nr in range(self.num_res_blocks[level]):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if wants_attention(ds, level, nr):
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample, ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch), transformer(ch), res(ch))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(self.num_res_blocks[level] + 1):
                layers = [res(ch + chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if wants_attention(ds, level, i):
                    layers.append(transformer(ch))
                if level and i == self.num_res_blocks[level]:
                    layers.append(Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch, norm_num_groups), nn.SiLU(),
                                 zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)))
        if self.dtype != torch.float32:
            self._cast_weights(self.dtype)

    def _cast_weights(self, dtype):
        """Linear/Conv weights to `dtype`; GroupNorm/LayerNorm affine parameters stay float32.
        (Upstream's convert_to_fp16 is a no-op, so its use_fp16 only cast activations.)"""
        norms = (nn.GroupNorm, nn.LayerNorm)
        for module in self.modules():
            if not isinstance(module, norms):
                for p in module.parameters(recurse=False):
                    p.data = p.data.to(dtype)

    def forward(self, x, timesteps, context=None, camera=None, num_frames=1):
        if x.shape[0] % num_frames:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_frames={num_frames}")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))
        if camera is not None:
            if not hasattr(self, "camera_embed"):
                raise ValueError("camera given but the model was built without camera_dim")
            emb = emb + self.camera_embed(camera.to(emb.dtype))
        if isinstance(context, torch.Tensor):
            context = context.to(self.dtype)
        h = x.type(self.dtype)
        hs = []
        for module in self.input_blocks:
            h = module(h, emb, context, num_frames)
            hs.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context, num_frames)
        return self.out(h).type(x.dtype)


def build_from_config(params: dict) -> MultiViewUNetModel:
    """Build from an original YAML's unet_config.params (used by the converter on the meta device)."""
    return MultiViewUNetModel(**params)
