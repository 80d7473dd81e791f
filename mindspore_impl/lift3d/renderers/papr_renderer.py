"""`papr-renderer`: PAPR's proximity attention point rendering (MindSpore; twin of
torch_ref/lift3d/renderers/papr_renderer.py). Upstream: zvict/papr models/model.py (PAPR.forward),
models/attn.py (embeddings, attention), models/mlp.py, models/unet.py (SmallUNet), models/utils.py (posenc).

Per ray (all shapes static, so the step compiles in GRAPH mode):
1. the k points nearest the ray by perpendicular distance (ops.topk over every bucketed point, or over a
   per-tile candidate set; masked and, with front_only, behind-the-camera points never win against others);
2. along-ray vector s and perpendicular vector t of each (upstream _calculate_distances, PAPR units =
   world * coord_scale); key = MLP(PE([p (no gradient), s, t])), query = MLP(PE(ray direction)),
   value = MLP([PE(s), PE(t), point feature]);
3. score = ReLU(w_q(q) . w_k(k) / sqrt(attention_dim)) * influence; a background token with the fixed score
   `background_score` joins the softmax over the k points; the (renormalised) point weights mix the values into
   a feature map (B, C, H, W);
4. the SmallUNet decodes the feature map into the foreground colour; comp_rgb = fg * opacity + bg * (1 - opacity)
   with opacity = 1 - the background weight (upstream normalize_topk_attn) and depth = the point weights times
   the along-ray distances (world units), as the NeRF renderer's keys.

The decoder mixes neighbouring pixels, so a render needs whole images (or training patches): construct renders
the grid it is given; render_chunked computes the feature map in bands of rows (one compiled band shape) and
decodes the full image once, as upstream test.py does with its max_height x max_width tiles.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Uniform, XavierUniform

from neutral.config import ConfigError
from neutral.lift3d import papr
from neutral.lift3d.nerf_volume_renderer import SubModules
from neutral.registry import register

IMAGE_KEYS = ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth")


def posenc(x, frequencies: int, factor: float):
    """Upstream models/utils.py posenc (input kept): per input channel [x, sin(f^0 x), cos(f^0 x), ...]."""
    parts = [x]
    for i in range(frequencies):
        scaled = x * (factor ** i)
        parts.append(ops.sin(scaled))
        parts.append(ops.cos(scaled))
    stacked = ops.stack(parts, -1)
    return stacked.reshape(stacked.shape[:-2] + (stacked.shape[-2] * stacked.shape[-1],))


# ---------------------------------------------------------------------------------------------- embedding MLPs
class LayerNorm(nn.Cell):
    """Upstream models/attn.py LayerNorm: a * (x - mean) / (unbiased std + eps) + b."""

    def __init__(self, features: int, eps: float) -> None:
        super().__init__()
        self.a_2 = ms.Parameter(ops.ones((features,), ms.float32), name="a_2")
        self.b_2 = ms.Parameter(ops.zeros((features,), ms.float32), name="b_2")
        self.eps = eps
        self.n = features

    def construct(self, x):
        mean = x.mean(-1, keep_dims=True)
        centred = x - mean
        std = ops.sqrt((centred * centred).sum(-1, keepdims=True) / (self.n - 1))
        return self.a_2 * centred / (std + self.eps) + self.b_2


def _activation(name: str):
    return nn.LeakyReLU(0.2) if name == "leakyrelu" else nn.ReLU()


class MLP(nn.Cell):
    """Upstream models/mlp.py MLP (no weight norm): `model` = [Identity, Linear, act, ..., Linear, Identity]
    (the last activation is "none"); skip layers concatenate the MLP input before their linear layer."""

    def __init__(self, d_in: int, cfg: papr.EmbedMLPConfig) -> None:
        super().__init__()
        layers = [nn.Identity()]
        for i, (a, b) in enumerate(papr.mlp_layer_dims(d_in, cfg)):
            layers.append(nn.Dense(a, b, weight_init=XavierUniform(), bias_init=Uniform(1.0 / math.sqrt(a))))
            layers.append(nn.Identity() if i == cfg.n_layers - 1 else _activation(cfg.activation))
        self.model = nn.CellList(layers)
        self.n_layers = cfg.n_layers
        self.skip = tuple(i in cfg.skip_layers for i in range(cfg.n_layers))

    def construct(self, x):
        inp = x
        for i in range(self.n_layers):
            if self.skip[i]:
                x = ops.concat([x, inp], -1)
            x = self.model[2 * i + 2](self.model[2 * i + 1](x))
        return x


class FeedForward(nn.Cell):
    """Upstream models/attn.py FeedForward without residual or dropout (both off upstream)."""

    def __init__(self, d_in: int, cfg: papr.EmbedMLPConfig, eps: float) -> None:
        super().__init__()
        self.use_norm = cfg.norm == "layernorm"
        if self.use_norm:
            self.innorm = LayerNorm(d_in, eps)
            self.outnorm = LayerNorm(cfg.d_out, eps)
        self.mlp = MLP(d_in, cfg)

    def construct(self, x):
        if self.use_norm:
            return self.outnorm(self.mlp(self.innorm(x)))
        return self.mlp(x)


class Embeddings(nn.Cell):
    def __init__(self, cfg: papr.PAPRRendererConfig, feature_dim: int) -> None:
        super().__init__()
        d_k, d_q, d_v = papr.embed_dims(cfg, feature_dim)
        self.embed_k = FeedForward(d_k, cfg.key_mlp, cfg.eps)
        self.embed_q = FeedForward(d_q, cfg.query_mlp, cfg.eps)
        self.embed_v = FeedForward(d_v, cfg.value_mlp, cfg.eps)

    def construct(self, key, query, value):
        return self.embed_k(key), self.embed_q(query), self.embed_v(value)


class AttentionLayer(nn.Cell):
    """Upstream models/attn.py AttentionLayer: ReLU of the scaled dot product of w_q(query) and w_k(key)."""

    def __init__(self, cfg: papr.PAPRRendererConfig) -> None:
        super().__init__()
        dk, dq = cfg.key_mlp.d_out, cfg.query_mlp.d_out
        self.w_k = nn.Dense(dk, cfg.attention_dim, weight_init=XavierUniform(), bias_init=Uniform(1 / math.sqrt(dk)))
        self.w_q = nn.Dense(dq, cfg.attention_dim, weight_init=XavierUniform(), bias_init=Uniform(1 / math.sqrt(dq)))
        self.scale = 1.0 / math.sqrt(cfg.attention_dim)
        self.relu = nn.ReLU()

    def construct(self, key, query):
        """key (R,k,Dk), query (R,1,Dq) -> scores (R,k)."""
        return self.relu((self.w_q(query) * self.w_k(key)).sum(-1) * self.scale)


class ProximityAttention(nn.Cell):
    def __init__(self, cfg: papr.PAPRRendererConfig, feature_dim: int) -> None:
        super().__init__()
        self.embed = Embeddings(cfg, feature_dim)
        self.attention_layer = AttentionLayer(cfg)

    def construct(self, key, query, value):
        """-> values (R,k,C), scores (R,k)."""
        k, q, v = self.embed(key, query, value)
        return v, self.attention_layer(k, q)


# ---------------------------------------------------------------------------------------------- decoder
def _conv3(cin: int, cout: int):
    return nn.Conv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=True)


class SingleConv(nn.Cell):
    """Upstream models/unet.py SingleConv with norm "none": conv 3x3 + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.double_conv = nn.SequentialCell([_conv3(cin, cout), nn.ReLU()])

    def construct(self, x):
        return self.double_conv(x)


class Down(nn.Cell):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.SequentialCell([nn.MaxPool2d(kernel_size=2, stride=2), SingleConv(cin, cout)])

    def construct(self, x):
        return self.maxpool_conv(x)


class Up(nn.Cell):
    """Upstream Up with bilinear=False, single=True: transposed conv x2, pad to the skip, concat, conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Conv2dTranspose(cin, cin // 2, 2, stride=2, pad_mode="valid", has_bias=True)
        self.conv = SingleConv(cin, cout)

    def construct(self, x1, x2):
        x1 = self.up(x1)
        dy = x2.shape[2] - x1.shape[2]
        dx = x2.shape[3] - x1.shape[3]
        if dy or dx:  # odd sizes: static shapes, so this is decided when tracing
            x1 = ops.pad(x1, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
        return self.conv(ops.concat([x2, x1], 1))


class OutConv(nn.Cell):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, has_bias=True)

    def construct(self, x):
        return self.conv(x)


class SmallUNet(nn.Cell):
    """Upstream models/unet.py SmallUNet (bilinear False, single True, norm none, last_act none, render_scale 1)
    with base width c (upstream 128): c, 2c, 4c."""

    def __init__(self, cin: int, cout: int, c: int) -> None:
        super().__init__()
        self.inc = SingleConv(cin, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.up1 = Up(4 * c, 2 * c)
        self.up2 = Up(2 * c, c)
        self.outc = OutConv(c, cout)

    def construct(self, x):
        """x (B, Cin, H, W), H, W >= 4 -> (B, cout, H, W)."""
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        return self.outc(self.up2(self.up1(x3, x2), x1))


# ---------------------------------------------------------------------------------------------- selection
def perpendicular_dist2(o, d, pts, eps: float):
    """Squared distance of every point to every ray and (p - o).d: o, d (R,3), pts (P,3) -> (R,P), (R,P).
    Expanded with two K=3 matmuls instead of the (R,P,3) difference upstream materialises."""
    pts_t = pts.transpose(1, 0)
    vd = ops.matmul(d, pts_t) - (o * d).sum(-1, keepdims=True)
    vv = (pts * pts).sum(-1).reshape(1, -1) - 2.0 * ops.matmul(o, pts_t) + (o * o).sum(-1, keepdims=True)
    return vv - vd * vd / ((d * d).sum(-1, keepdims=True) + eps), vd


def _tiles(x, t: int):
    """(B,H,W,C) -> (B*H/t*W/t, t*t, C), tiles of t x t pixels."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // t, t, w // t, t, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b * (h // t) * (w // t), t * t, c)


def _untile(x, b: int, h: int, w: int, t: int):
    c = x.shape[-1]
    x = x.reshape(b, h // t, w // t, t, t, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


@register("papr-renderer")
class PAPRRenderer(nn.Cell):
    Config = papr.PAPRRendererConfig

    def __init__(self, cfg: Any, geometry, material=None, background=None) -> None:
        super().__init__()
        self.cfg = papr.parse_renderer_config(cfg, getattr(geometry, "cfg", None))
        self.sub_modules = SubModules(geometry, material, background)
        c = self.cfg
        self.k = c.k
        self.scale = float(c.coord_scale)
        self.eps = float(c.eps)
        self.proximity_attn = ProximityAttention(c, geometry.cfg.feature_dim)
        self.decoder = SmallUNet(c.feature_channels, 3, c.decoder_channels)

    @property
    def geometry(self):
        return self.sub_modules.geometry

    def recompute_cells(self) -> list:
        """The cells a system's use_recompute recomputes in the backward pass (lift3d/systems/base.py)."""
        return [self.proximity_attn, self.decoder]

    @property
    def background(self):
        return self.sub_modules.background

    # ------------------------------------------------------------------ selection
    def _valid(self, mask, vd):
        valid = mask > 0.5
        if self.cfg.front_only:
            valid = ops.logical_and(valid, vd > 0)
        return valid

    def _topk_nearest(self, dist2, valid, k: int):
        far = ops.ones_like(dist2) * papr.BIG_DISTANCE
        _, idx = ops.topk(-ops.select(valid, dist2, far), k)
        return idx

    def select_points(self, rays_o, rays_d, pts, mask):
        """rays_o, rays_d (B,h,w,3) and points (P,3) in PAPR units, mask (P,) -> indices (B,h,w,k) of the k
        points nearest each ray (nearest first on the exact path). No gradient."""
        rays_o, rays_d, pts = ops.stop_gradient(rays_o), ops.stop_gradient(rays_d), ops.stop_gradient(pts)
        b, h, w, _ = rays_o.shape
        n_pts = pts.shape[0]
        cand = self.cfg.candidate_size
        if not cand or cand >= n_pts:
            dist2, vd = perpendicular_dist2(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), pts, self.eps)
            idx = self._topk_nearest(dist2, self._valid(mask.reshape(1, -1), vd), self.k)
            return idx.reshape(b, h, w, self.k)
        t = self.cfg.candidate_tile
        if h % t or w % t:
            raise ValueError(f"papr-renderer: with candidate_size the image ({h}x{w}) must be a multiple of "
                             f"candidate_tile {t}")
        o_t, d_t = _tiles(rays_o, t), _tiles(rays_d, t)                     # (G,T,3)
        d_unit = d_t / (ops.norm(d_t, dim=-1, keepdim=True) + self.eps)
        dist2_c, vd_c = perpendicular_dist2(o_t.mean(1), d_unit.mean(1), pts, self.eps)   # (G,P)
        cand_idx = self._topk_nearest(dist2_c, self._valid(mask.reshape(1, -1), vd_c), cand)  # (G,C)
        c_pts = ops.gather(pts, cand_idx, 0)                                 # (G,C,3)
        c_mask = ops.gather(mask, cand_idx, 0)                               # (G,C)
        v = ops.expand_dims(c_pts, 1) - ops.expand_dims(o_t, 2)              # (G,T,C,3)
        dv = ops.expand_dims(d_t, 2)
        vd = (v * dv).sum(-1)
        dist2 = (v * v).sum(-1) - vd * vd / ((dv * dv).sum(-1) + self.eps)
        local = self._topk_nearest(dist2, self._valid(ops.expand_dims(c_mask, 1), vd), self.k)  # (G,T,k)
        g, n_t = local.shape[0], local.shape[1]
        idx = ops.gather_elements(ops.broadcast_to(ops.expand_dims(cand_idx, 1), (g, n_t, cand)), 2, local)
        return _untile(idx, b, h, w, t)

    # ------------------------------------------------------------------ attention
    def ray_features(self, rays_o, rays_d, pts, influence, features, mask):
        """rays (B,h,w,3) world units; the point cloud's tensors -> feature map (B,h,w,C), opacity (B,h,w,1),
        depth (B,h,w,1) (world units)."""
        c = self.cfg
        b, h, w, _ = rays_o.shape
        o = rays_o * self.scale
        p = pts * self.scale
        idx = self.select_points(o, rays_d, p, mask).reshape(-1, self.k)     # (R,k)
        o, d = o.reshape(-1, 3), rays_d.reshape(-1, 3)
        sel = ops.gather(p, idx, 0)                                          # (R,k,3)
        d_unit = d / (ops.norm(d, dim=-1, keepdim=True) + self.eps)
        du = ops.expand_dims(d_unit, 1)
        v = sel - ops.expand_dims(o, 1)
        along = (v * du).sum(-1, keepdims=True) / ((du * du).sum(-1, keepdims=True) + self.eps)  # (R,k,1)
        s_vec = du * along                   # along-ray vector (upstream proj)
        t_vec = v - s_vec                    # perpendicular vector (upstream D)
        kf, qf, vf = c.key_frequencies, c.query_frequencies, c.value_frequencies
        key = ops.concat([posenc(ops.stop_gradient(sel), kf[0], c.pe_factor), posenc(s_vec, kf[1], c.pe_factor),
                          posenc(t_vec, kf[2], c.pe_factor)], -1)
        query = posenc(ops.expand_dims(d, 1), qf[0], c.pe_factor)
        value = ops.concat([posenc(s_vec, vf[0], c.pe_factor), posenc(t_vec, vf[1], c.pe_factor),
                            ops.gather(features, idx, 0)], -1)
        values, scores = self.proximity_attn(key, query, value)            # (R,k,C), (R,k)
        scores = scores * ops.gather(influence, idx, 0).squeeze(-1)
        valid = self._valid(ops.gather(mask, idx, 0), along.squeeze(-1))
        scores = ops.select(valid, scores, ops.ones_like(scores) * papr.MASKED_SCORE)
        bg_score = ops.ones_like(scores[:, :1]) * c.background_score
        attn = ops.softmax(ops.concat([scores, bg_score], -1), -1)
        point_w = attn[:, :self.k]
        opacity = 1.0 - attn[:, self.k:]
        if c.normalize_topk_attn:  # the floor only matters when every chosen point is masked (weights all 0)
            mix = point_w / ops.maximum(point_w.sum(-1, keepdims=True), ops.ones_like(opacity) * 1e-30)
        else:
            mix = point_w
        fused = (ops.expand_dims(mix, -1) * values).sum(1)
        depth = (point_w * along.squeeze(-1)).sum(-1, keepdims=True) / self.scale
        return fused.reshape(b, h, w, -1), opacity.reshape(b, h, w, 1), depth.reshape(b, h, w, 1)

    def decode_and_composite(self, fused, opacity, depth, bg):
        """Feature map (B,H,W,C) -> the image dict (NeRF renderer keys)."""
        fg = self.decoder(fused.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
        if self.cfg.normalize_topk_attn:
            fg = fg * opacity
        return {"comp_rgb": fg + bg * (1.0 - opacity), "comp_rgb_fg": fg, "comp_rgb_bg": bg, "opacity": opacity,
                "depth": depth}

    def construct(self, rays_o, rays_d, light_positions=None, jitter=None, bg_aug_color=None, shading="diffuse",
                  ambient_color=None, diffuse_color=None):
        """rays_o, rays_d (B,H,W,3) (a training patch or a whole image); bg_aug_color (3,) or (B,3). Light,
        jitter and shading are accepted for the NeRF renderer's signature and unused (no sampling, no shading).
        Returns comp_rgb, comp_rgb_fg (premultiplied), comp_rgb_bg (B,H,W,3), opacity, depth (B,H,W,1)."""
        pts, influence, features, mask = self.geometry()
        fused, opacity, depth = self.ray_features(rays_o, rays_d, pts, influence, features, mask)
        return self.decode_and_composite(fused, opacity, depth, self.background(rays_d, bg_aug_color))

    def band_rows(self, b: int, h: int, w: int, chunk_size: Optional[int] = None) -> int:
        """Rows per band of render_chunked: about chunk_size rays over the batch, a multiple of the candidate
        tile when the candidate search is on."""
        rows = max(1, int(chunk_size or self.cfg.eval_chunk_size) // (b * w))
        if self.cfg.candidate_size:
            t = self.cfg.candidate_tile
            rows = max(t, rows // t * t)
        return min(rows, h)

    def render_chunked(self, rays_o, rays_d, light_positions=None, jitter=None, bg_aug_color=None,
                       shading="diffuse", ambient_color=None, diffuse_color=None, chunk_size: Optional[int] = None):
        """construct's outputs for a whole image, the attention run in bands of rows (the last band padded with
        copies of the last row, so every band has one compiled shape) and the decoder run once on the full
        feature map. Host-side loop; no gradients."""
        b, h, w, _ = rays_o.shape
        rows = self.band_rows(b, h, w, chunk_size)
        pad = (-h) % rows
        if pad:
            rays_o = ops.concat([rays_o, ops.broadcast_to(rays_o[:, -1:], (b, pad, w, 3))], 1)
            rays_d = ops.concat([rays_d, ops.broadcast_to(rays_d[:, -1:], (b, pad, w, 3))], 1)
        # the Parameters themselves, not a geometry() call: in GRAPH mode that call runs a graph compiled at the first
        # call, which keeps the capacity it was compiled with after a prune or grow changes it
        pts, influence, features, mask = self.geometry.tensors()
        pieces = ([], [], [])
        for s in range(0, h + pad, rows):
            out = self.ray_features(rays_o[:, s:s + rows], rays_d[:, s:s + rows], pts, influence, features, mask)
            for store, x in zip(pieces, out):
                store.append(ops.stop_gradient(x))
        fused, opacity, depth = (ops.concat(p, 1)[:, :h] for p in pieces)
        bg = self.background(rays_d[:, :h], bg_aug_color)
        return {k: ops.stop_gradient(v) for k, v in self.decode_and_composite(fused, opacity, depth, bg).items()}
