"""The reference U-Net: ``forward(x [B, C, H, W] f32, t [B] i64, cond) -> [B, C_out, H, W]``.

Layout (Ho et al. 2020; the same skip structure as diffusers ``UNet2DModel``, so diffusers
checkpoints map one to one): ``conv_in``; per level ``num_res_blocks`` residual blocks (each
followed by attention at ``attention_resolutions``) and a downsample except at the last level;
a bottleneck ``res -> attn -> res (-> ASPP)``; per level on the way up ``num_res_blocks + 1``
blocks, each taking one skip by concatenation, and an upsample except at the top; then
``norm -> SiLU -> conv_out``. Every activation saved on the way down is consumed on the way up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_export.config import UNetConfig
from ddpm_export.contract.conditioning import CONDITIONINGS
from ddpm_export.nn.attention import AttentionBlock
from ddpm_export.nn.blocks import ASPP, Downsample, ResBlock, Upsample
from ddpm_export.nn.embeddings import ClassEmbedding, TimeEmbedding
from ddpm_export.nn.layers import make_norm


class Level(nn.Module):
    """One resolution: residual blocks, their attention blocks (maybe none), and a resampler."""

    def __init__(self, resnets: list[ResBlock], attentions: list[AttentionBlock],
                 resample: nn.Module | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.resample = resample


class UNet(nn.Module):
    """The configurable DDPM U-Net. See the module docstring for the layout."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        chans, sizes = cfg.level_channels, cfg.resolutions
        emb_dim = 4 * cfg.time_embed_dim
        self.time_embedding = TimeEmbedding(cfg)
        self.class_embedding = ClassEmbedding(cfg.num_class_rows, emb_dim) if cfg.num_classes is not None else None
        self.conditioning = CONDITIONINGS[cfg.cond_kind]
        ctx_dim = self.conditioning.cross_attention_dim(cfg)
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)

        skips = [chans[0]]
        ch = chans[0]
        self.down = nn.ModuleList()
        for i, (out_ch, size) in enumerate(zip(chans, sizes)):
            resnets, attns = [], []
            for _ in range(cfg.num_res_blocks):
                resnets.append(ResBlock(cfg, ch, out_ch, emb_dim))
                ch = out_ch
                if size in cfg.attention_resolutions:
                    attns.append(AttentionBlock(cfg, ch, size, ctx_dim))
                skips.append(ch)
            last = i == len(chans) - 1
            self.down.append(Level(resnets, attns, None if last else Downsample(cfg, ch)))
            if not last:
                skips.append(ch)

        self.mid_resnets = nn.ModuleList([ResBlock(cfg, ch, ch, emb_dim), ResBlock(cfg, ch, ch, emb_dim)])
        self.mid_attention = (AttentionBlock(cfg, ch, sizes[-1], ctx_dim, norm=cfg.mid_attention_norm)
                              if cfg.mid_attention else None)
        self.aspp = ASPP(cfg, ch) if cfg.aspp_rates else None

        self.up = nn.ModuleList()
        for i in reversed(range(len(chans))):
            out_ch, size = chans[i], sizes[i]
            resnets, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                resnets.append(ResBlock(cfg, ch + skips.pop(), out_ch, emb_dim))
                ch = out_ch
                if size in cfg.attention_resolutions:
                    attns.append(AttentionBlock(cfg, ch, size, ctx_dim))
            self.up.append(Level(resnets, attns, Upsample(ch) if i > 0 else None))
        assert not skips, "every skip connection must be consumed"

        self.norm_out = make_norm(cfg, ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    def embed(self, t: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Time (+ class) embedding [B, 4 C0] in float32, and the cross-attention context or None."""
        emb = self.time_embedding(t)
        self.conditioning.check_given(cond, self.config.context_dim)
        if self.class_embedding is None:  # unconditional (cond is None) or a context to cross-attend to
            return emb, cond
        label_emb = self.class_embedding(cond)
        if self.config.class_conditioning == "embedding":
            return emb + label_emb, None
        # two tokens (time, class): softmax over a single key would be constant 1
        return emb, torch.stack([emb, label_emb], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W], t [B] int64, cond: class ids [B] int64, a context [B, L, D], or None."""
        emb, context = self.embed(t, cond)
        emb = emb.to(x.dtype)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for j, resnet in enumerate(level.resnets):
                h = resnet(h, emb)
                if level.attentions:
                    h = level.attentions[j](h, context)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid_resnets[0](h, emb)
        if self.mid_attention is not None:
            h = self.mid_attention(h, context)
        h = self.mid_resnets[1](h, emb)
        if self.aspp is not None:
            h = self.aspp(h)
        for level in self.up:
            for j, resnet in enumerate(level.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
                if level.attentions:
                    h = level.attentions[j](h, context)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
