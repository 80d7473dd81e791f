"""`papr-renderer` (PyTorch reference; twin of mindspore_impl/lift3d/renderers/papr_renderer.py), computed the
way upstream zvict/papr computes it: models/model.py (PAPR._calculate_global_distances, _calculate_distances,
_get_kqv, forward), models/attn.py, models/mlp.py, models/unet.py, models/utils.py (posenc). Differences from
upstream, shared with the MindSpore twin: point masks (bucketed padding, front_only), per-ray ray origins,
a floor under the renormalising sum, world-unit inputs scaled by coord_scale here, and the background colour
coming from the background module."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from neutral.lift3d import papr
from neutral.lift3d.nerf_volume_renderer import SubModules

IMAGE_KEYS = ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth")


def posenc(x, frequencies: int, factor: float):
    rets = [x]
    for i in range(frequencies):
        for fn in (torch.sin, torch.cos):
            rets.append(fn(factor ** i * x))
    return torch.flatten(torch.stack(rets, -1), start_dim=-2, end_dim=-1)


class LayerNorm(nn.Module):
    def __init__(self, features: int, eps: float) -> None:
        super().__init__()
        self.a_2 = nn.Parameter(torch.ones(features))
        self.b_2 = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.a_2 * (x - mean) / (std + self.eps) + self.b_2


def _activation(name: str):
    return nn.LeakyReLU(0.2) if name == "leakyrelu" else nn.ReLU()


class MLP(nn.Module):
    def __init__(self, d_in: int, cfg: papr.EmbedMLPConfig) -> None:
        super().__init__()
        layers = [nn.Identity()]
        for i, (a, b) in enumerate(papr.mlp_layer_dims(d_in, cfg)):
            layers.append(nn.Linear(a, b))
            layers.append(nn.Identity() if i == cfg.n_layers - 1 else _activation(cfg.activation))
        self.model = nn.ModuleList(layers)
        self.skip_layers = [2 * i + 1 for i in cfg.skip_layers]
        for p in self.model.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x):
        inp = x
        for i, layer in enumerate(self.model):
            if i in self.skip_layers:
                x = torch.cat([x, inp], dim=-1)
            x = layer(x)
        return x


class FeedForward(nn.Module):
    def __init__(self, d_in: int, cfg: papr.EmbedMLPConfig, eps: float) -> None:
        super().__init__()
        if cfg.norm == "layernorm":
            self.innorm, self.outnorm = LayerNorm(d_in, eps), LayerNorm(cfg.d_out, eps)
        else:
            self.innorm, self.outnorm = nn.Identity(), nn.Identity()
        self.mlp = MLP(d_in, cfg)

    def forward(self, x):
        return self.outnorm(self.mlp(self.innorm(x)))


class Embeddings(nn.Module):
    def __init__(self, cfg: papr.PAPRRendererConfig, feature_dim: int) -> None:
        super().__init__()
        d_k, d_q, d_v = papr.embed_dims(cfg, feature_dim)
        self.embed_k = FeedForward(d_k, cfg.key_mlp, cfg.eps)
        self.embed_q = FeedForward(d_q, cfg.query_mlp, cfg.eps)
        self.embed_v = FeedForward(d_v, cfg.value_mlp, cfg.eps)

    def forward(self, key, query, value):
        return self.embed_k(key), self.embed_q(query), self.embed_v(value)


class AttentionLayer(nn.Module):
    def __init__(self, cfg: papr.PAPRRendererConfig) -> None:
        super().__init__()
        self.d_model = cfg.attention_dim
        self.w_k = nn.Linear(cfg.key_mlp.d_out, cfg.attention_dim)
        self.w_q = nn.Linear(cfg.query_mlp.d_out, cfg.attention_dim)
        nn.init.xavier_uniform_(self.w_k.weight)
        nn.init.xavier_uniform_(self.w_q.weight)

    def forward(self, key, query):
        """key (R,k,Dk), query (R,1,Dq) -> (R,k), as upstream: one head, matmul, / sqrt(d_model), ReLU."""
        n = key.shape[0]
        key = self.w_k(key).view(n, -1, 1, self.d_model).transpose(1, 2)
        query = self.w_q(query).view(n, -1, 1, self.d_model).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(self.d_model)
        return F.relu(scores).reshape(n, -1)


class ProximityAttention(nn.Module):
    def __init__(self, cfg: papr.PAPRRendererConfig, feature_dim: int) -> None:
        super().__init__()
        self.embed = Embeddings(cfg, feature_dim)
        self.attention_layer = AttentionLayer(cfg)

    def forward(self, key, query, value):
        k, q, v = self.embed(key, query, value)
        return v, self.attention_layer(k, q)


class SingleConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), SingleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
        self.conv = SingleConv(cin, cout)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dy, dx = x2.size(2) - x1.size(2), x2.size(3) - x1.size(3)
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class SmallUNet(nn.Module):
    def __init__(self, cin: int, cout: int, c: int) -> None:
        super().__init__()
        self.inc = SingleConv(cin, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.up1 = Up(4 * c, 2 * c)
        self.up2 = Up(2 * c, c)
        self.outc = OutConv(c, cout)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        return self.outc(self.up2(self.up1(x3, x2), x1))


class PAPRRenderer(nn.Module):
    Config = papr.PAPRRendererConfig

    def __init__(self, cfg: Any, geometry, material=None, background=None) -> None:
        super().__init__()
        self.cfg = papr.parse_renderer_config(cfg, getattr(geometry, "cfg", None))
        self.sub_modules = SubModules(geometry, material, background)
        self.k = self.cfg.k
        self.proximity_attn = ProximityAttention(self.cfg, geometry.cfg.feature_dim)
        self.decoder = SmallUNet(self.cfg.feature_channels, 3, self.cfg.decoder_channels)

    @property
    def geometry(self):
        return self.sub_modules.geometry

    @property
    def background(self):
        return self.sub_modules.background

    # ------------------------------------------------------------------ selection
    def _valid(self, mask, along):
        valid = mask > 0.5
        return valid & (along > 0) if self.cfg.front_only else valid

    def _global_distances(self, rays_o, rays_d, points):
        """Upstream _calculate_global_distances with per-ray origins: rays (R,3), points (P,3) ->
        perpendicular distances (R,P) and (p - o).d (R,P)."""
        v = points.unsqueeze(0) - rays_o.unsqueeze(1)                      # (R,P,3)
        d = rays_d.unsqueeze(1)
        vd = torch.sum(v * d, dim=-1)
        proj = d * (vd / (torch.sum(d * d, dim=-1) + self.cfg.eps)).unsqueeze(-1)
        return torch.norm(v - proj, dim=-1), vd

    def _nearest(self, dist, valid, k: int):
        dist = torch.where(valid, dist, torch.full_like(dist, math.sqrt(papr.BIG_DISTANCE)))
        return dist.topk(k, dim=-1, largest=False, sorted=True)[1]

    @torch.no_grad()
    def select_points(self, rays_o, rays_d, pts, mask):
        """(B,h,w,3) rays and (P,3) points in PAPR units -> (B,h,w,k) indices (the MindSpore twin's)."""
        b, h, w, _ = rays_o.shape
        cand, n_pts = self.cfg.candidate_size, pts.shape[0]
        if not cand or cand >= n_pts:
            dist, vd = self._global_distances(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), pts)
            return self._nearest(dist, self._valid(mask.unsqueeze(0), vd), self.k).reshape(b, h, w, self.k)
        t = self.cfg.candidate_tile

        def tiles(x):
            return x.reshape(b, h // t, t, w // t, t, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, t * t, 3)

        o_t, d_t = tiles(rays_o), tiles(rays_d)
        d_unit = d_t / (torch.norm(d_t, dim=-1, keepdim=True) + self.cfg.eps)
        dist_c, vd_c = self._global_distances(o_t.mean(1), d_unit.mean(1), pts)
        cand_idx = self._nearest(dist_c, self._valid(mask.unsqueeze(0), vd_c), cand)        # (G,C)
        c_pts, c_mask = pts[cand_idx], mask[cand_idx]
        v = c_pts.unsqueeze(1) - o_t.unsqueeze(2)                                          # (G,T,C,3)
        dv = d_t.unsqueeze(2)
        vd = torch.sum(v * dv, -1)
        proj = dv * (vd / (torch.sum(dv * dv, -1) + self.cfg.eps)).unsqueeze(-1)
        local = self._nearest(torch.norm(v - proj, dim=-1), self._valid(c_mask.unsqueeze(1), vd), self.k)
        idx = torch.gather(cand_idx.unsqueeze(1).expand(-1, t * t, -1), 2, local)          # (G,T,k)
        return idx.reshape(b, h // t, w // t, t, t, self.k).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, self.k)

    # ------------------------------------------------------------------ attention
    def ray_features(self, rays_o, rays_d, pts, influence, features, mask):
        c = self.cfg
        b, h, w, _ = rays_o.shape
        scale = float(c.coord_scale)
        o, points = rays_o * scale, pts * scale
        idx = self.select_points(o, rays_d, points, mask).reshape(-1, self.k)
        o, d = o.reshape(-1, 3), rays_d.reshape(-1, 3)
        sel = points[idx]                                                              # (R,k,3)
        # upstream _calculate_distances
        rays = (d / (torch.norm(d, dim=-1, keepdim=True) + c.eps)).unsqueeze(-2)
        v = sel - o.unsqueeze(1)
        along = torch.sum(v * rays, dim=-1) / (torch.sum(rays * rays, dim=-1) + c.eps)  # (R,k)
        proj = rays * along.unsqueeze(-1)
        perp = v - proj
        # upstream _get_kqv (k_type = q_type = v_type = 1, point features in the value)
        kf, qf, vf = c.key_frequencies, c.query_frequencies, c.value_frequencies
        key = torch.cat([posenc(sel.detach(), kf[0], c.pe_factor), posenc(proj, kf[1], c.pe_factor),
                         posenc(perp, kf[2], c.pe_factor)], -1)
        query = posenc(d.unsqueeze(-2), qf[0], c.pe_factor)
        value = torch.cat([posenc(proj, vf[0], c.pe_factor), posenc(perp, vf[1], c.pe_factor), features[idx]], -1)
        embedv, scores = self.proximity_attn(key, query, value)
        scores = scores * influence[idx].squeeze(-1)
        scores = torch.where(self._valid(mask[idx], along), scores, torch.full_like(scores, papr.MASKED_SCORE))
        scores = torch.cat([scores, torch.full_like(scores[:, :1], c.background_score)], -1)
        attn = F.softmax(scores, dim=-1)
        topk_attn, bkg_attn = attn[:, :self.k], attn[:, self.k:]
        mix = topk_attn / topk_attn.sum(-1, keepdim=True).clamp_min(1e-30) if c.normalize_topk_attn else topk_attn
        fused = torch.sum(embedv * mix.unsqueeze(-1), dim=1)
        depth = torch.sum(topk_attn * along, -1, keepdim=True) / scale
        return fused.reshape(b, h, w, -1), (1.0 - bkg_attn).reshape(b, h, w, 1), depth.reshape(b, h, w, 1)

    def decode_and_composite(self, fused, opacity, depth, bg):
        fg = self.decoder(fused.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.cfg.normalize_topk_attn:
            fg = fg * opacity
        return {"comp_rgb": fg + bg * (1.0 - opacity), "comp_rgb_fg": fg, "comp_rgb_bg": bg, "opacity": opacity,
                "depth": depth}

    def forward(self, rays_o, rays_d, light_positions=None, jitter=None, bg_aug_color=None, shading="diffuse",
                ambient_color=None, diffuse_color=None):
        pts, influence, features, mask = self.geometry()
        fused, opacity, depth = self.ray_features(rays_o, rays_d, pts, influence, features, mask)
        return self.decode_and_composite(fused, opacity, depth, self.background(rays_d, bg_aug_color))

    def band_rows(self, b: int, h: int, w: int, chunk_size: Optional[int] = None) -> int:
        rows = max(1, int(chunk_size or self.cfg.eval_chunk_size) // (b * w))
        if self.cfg.candidate_size:
            t = self.cfg.candidate_tile
            rows = max(t, rows // t * t)
        return min(rows, h)

    @torch.no_grad()
    def render_chunked(self, rays_o, rays_d, light_positions=None, jitter=None, bg_aug_color=None,
                       shading="diffuse", ambient_color=None, diffuse_color=None, chunk_size: Optional[int] = None):
        b, h, w, _ = rays_o.shape
        rows = self.band_rows(b, h, w, chunk_size)
        pad = (-h) % rows
        if pad:
            rays_o = torch.cat([rays_o, rays_o[:, -1:].expand(b, pad, w, 3)], 1)
            rays_d = torch.cat([rays_d, rays_d[:, -1:].expand(b, pad, w, 3)], 1)
        pts, influence, features, mask = self.geometry()
        pieces = [self.ray_features(rays_o[:, s:s + rows], rays_d[:, s:s + rows], pts, influence, features, mask)
                  for s in range(0, h + pad, rows)]
        fused, opacity, depth = (torch.cat(p, 1)[:, :h] for p in zip(*pieces))
        return self.decode_and_composite(fused, opacity, depth, self.background(rays_d[:, :h], bg_aug_color))
