"""MVDream multiview UNet (ldm/modules/diffusionmodules/openaimodel.py: MultiViewUNetModel), native MindSpore.

SD 2.1's openaimodel UNet plus (a) `camera_embed`, whose output is added to the timestep embedding,
and (b) joint self-attention over the `num_frames` views of one object in every transformer block.
Parameter names equal the original checkpoint's `model.diffusion_model.*` names, except that norm
weight/bias are gamma/beta (convert/keymaps.py maps them). Static shapes throughout (GRAPH mode safe).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from mindspore_impl.mvdream.attention import SpatialTransformer3D
from mindspore_impl.mvdream.nn_util import conv2d, dense, normalization, timestep_embedding, timestep_freqs
from neutral.mvdream.unet import attention_heads, check_unet_config


class TimestepEmbedSequential(nn.SequentialCell):
    """Children named 0, 1, ... (as torch); every child takes (x, emb, context, num_frames)."""

    def construct(self, x, emb, context=None, num_frames=1):
        for cell in self.cell_list:
            x = cell(x, emb, context, num_frames)
        return x


class InputConv(nn.Conv2d):
    """The UNet's first 3x3 conv, with the TimestepEmbedSequential call signature."""

    def __init__(self, c_in, c_out):
        super().__init__(c_in, c_out, 3, pad_mode="pad", padding=1, has_bias=True)

    def construct(self, x, emb=None, context=None, num_frames=1):
        return self.bias_add(self.conv2d(x, self.weight), self.bias)


class Upsample(nn.Cell):
    """Nearest x2 upsampling, then an optional 3x3 conv."""

    def __init__(self, channels, use_conv, out_channels=None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = conv2d(channels, out_channels or channels, 3, padding=1)

    def construct(self, x, emb=None, context=None, num_frames=1):
        x = ops.repeat_elements(ops.repeat_elements(x, 2, axis=2), 2, axis=3)
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Cell):
    """Stride-2 3x3 conv, or 2x2 average pooling without conv_resample."""

    def __init__(self, channels, use_conv, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("Downsample without conv cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def construct(self, x, emb=None, context=None, num_frames=1):
        return self.op(x)


class ResBlock(nn.Cell):
    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_scale_shift_norm=False,
                 norm_groups=32):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.SequentialCell(normalization(channels, norm_groups), nn.SiLU(),
                                           conv2d(channels, self.out_channels, 3, padding=1))
        self.emb_layers = nn.SequentialCell(
            nn.SiLU(), dense(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.SequentialCell(normalization(self.out_channels, norm_groups), nn.SiLU(),
                                            nn.Dropout(p=dropout),
                                            conv2d(self.out_channels, self.out_channels, 3, padding=1))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = conv2d(channels, self.out_channels, 1)

    def construct(self, x, emb, context=None, num_frames=1):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).astype(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            c = self.out_channels
            h = self.out_layers[0](h) * (1 + emb_out[:, :c]) + emb_out[:, c:]
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class MultiViewUNetModel(nn.Cell):
    """model(x [(B F), C, H, W], timesteps [(B F)], context [(B F), L, context_dim],
    camera [(B F), camera_dim] or None, num_frames=F (a Python int)) -> [(B F), out_channels, H, W] float32.

    use_checkpoint: recompute every ResBlock / SpatialTransformer3D in the backward pass.
    norm_num_groups: GroupNorm groups (this port's extension; upstream and the default: 32).
    use_fp16 / use_bf16: Dense and Conv weights in that dtype (norms stay float32 and normalize in
    float32, attention softmax in float32); inputs are cast in, the output is float32.
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
        self.freqs = timestep_freqs(model_channels)
        self.dtype = ms.bfloat16 if use_bf16 else (ms.float16 if use_fp16 else ms.float32)
        self.has_camera = camera_dim is not None
        time_embed_dim = model_channels * 4

        def res(ch_in, ch_out=None):
            return ResBlock(ch_in, time_embed_dim, dropout, ch_out, use_scale_shift_norm, norm_num_groups)

        def transformer(ch):
            heads, dim_head = attention_heads(ch, num_heads, num_head_channels, legacy)
            return SpatialTransformer3D(ch, heads, dim_head, transformer_depth, dropout, context_dim,
                                        use_linear_in_transformer, norm_num_groups)

        def wants_attention(ds, level, nr):
            return ds in attention_resolutions and (num_attention_blocks is None or nr < num_attention_blocks[level])

        self.time_embed = nn.SequentialCell(dense(model_channels, time_embed_dim), nn.SiLU(),
                                            dense(time_embed_dim, time_embed_dim))
        if self.has_camera:
            self.camera_embed = nn.SequentialCell(dense(camera_dim, time_embed_dim), nn.SiLU(),
                                                  dense(time_embed_dim, time_embed_dim))
        input_blocks = [TimestepEmbedSequential(InputConv(in_channels, model_channels))]
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for nr in range(self.num_res_blocks[level]):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if wants_attention(ds, level, nr):
                    layers.append(transformer(ch))
                input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                input_blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample, ch)))
                chans.append(ch)
                ds *= 2
        self.input_blocks = nn.CellList(input_blocks)
        self.middle_block = TimestepEmbedSequential(res(ch), transformer(ch), res(ch))
        output_blocks = []
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(self.num_res_blocks[level] + 1):
                layers = [res(ch + chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if wants_attention(ds, level, i):
                    layers.append(transformer(ch))
                if level and i == self.num_res_blocks[level]:
                    layers.append(Upsample(ch, conv_resample, ch))
                    ds //= 2
                output_blocks.append(TimestepEmbedSequential(*layers))
        self.output_blocks = nn.CellList(output_blocks)
        self.out = nn.SequentialCell(normalization(ch, norm_num_groups), nn.SiLU(), conv2d(model_channels, out_channels, 3, padding=1))
        if use_checkpoint:
            self._recompute_blocks()
        if self.dtype != ms.float32:
            self._cast_weights(self.dtype)

    def _recompute_blocks(self):
        for _, cell in self.cells_and_names():
            if isinstance(cell, (ResBlock, SpatialTransformer3D)):
                cell.recompute()

    def _cast_weights(self, dtype):
        """Dense/Conv weights to `dtype`; GroupNorm/LayerNorm gamma/beta stay float32."""
        for p in self.get_parameters():
            if not p.name.endswith((".gamma", ".beta")):
                p.set_dtype(dtype)

    def construct(self, x, timesteps, context=None, camera=None, num_frames=1):
        if x.shape[0] % num_frames != 0:
            raise ValueError("MultiViewUNetModel: the batch is not a multiple of num_frames")
        emb = self.time_embed(timestep_embedding(timesteps, self.freqs, self.model_channels).astype(self.dtype))
        if camera is not None:
            if not self.has_camera:
                raise ValueError("MultiViewUNetModel: camera given but the model was built without camera_dim")
            emb = emb + self.camera_embed(camera.astype(self.dtype))
        if context is not None:
            context = context.astype(self.dtype)
        h = x.astype(self.dtype)
        hs = []
        for module in self.input_blocks:
            h = module(h, emb, context, num_frames)
            hs.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        skip = len(hs)
        for module in self.output_blocks:  # skip connections in reverse order (no list.pop: GRAPH mode)
            skip -= 1
            h = module(ops.concat((h, hs[skip]), axis=1), emb, context, num_frames)
        return self.out(h).astype(ms.float32)


def build_from_config(params: dict) -> MultiViewUNetModel:
    """Build from an original YAML's unet_config.params."""
    return MultiViewUNetModel(**params)
