"""How a residual block is conditioned on the time (+ class) embedding.

Each variant replaces one normalization of the block: ``forward(h [B, C, H, W], emb [B, E])``
returns the normalized, conditioned features with ``out_channels`` channels. One primitive,
``norm(h) * (1 + scale) + shift``, serves FiLM / AdaGN and AdaIN (docs/conventions.md).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_export.checks import Registry
from ddpm_export.config import UNetConfig
from ddpm_export.nn.attention import Attention
from ddpm_export.nn.layers import instance_norm, make_norm, zero_module

#: number of tokens the embedding is split into for ``time_conditioning="attention"``
TIME_TOKENS = 4


class AddConditioning(nn.Module):
    """``norm(h + Linear(SiLU(emb))[..., None, None])`` (Ho et al. 2020; diffusers "default")."""

    def __init__(self, cfg: UNetConfig, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.proj = nn.Linear(emb_dim, channels)
        self.norm = make_norm(cfg, channels)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.norm(h + self.proj(F.silu(emb))[:, :, None, None])


class ScaleShiftConditioning(nn.Module):
    """``norm(h) * (1 + scale) + shift`` with ``scale, shift = Linear(SiLU(emb)).chunk(2)``.

    FiLM / AdaGN (Perez et al. 2018; Dhariwal & Nichol 2021) with the configured norm, or AdaIN
    (Huang & Belongie 2017) with an affine-free instance norm when ``instance=True``.
    """

    def __init__(self, cfg: UNetConfig, channels: int, emb_dim: int, *, instance: bool) -> None:
        super().__init__()
        self.out_channels = channels
        self.proj = nn.Linear(emb_dim, 2 * channels)
        self.norm = instance_norm(channels, cfg.norm_eps) if instance else make_norm(cfg, channels)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        return self.norm(h) * (1 + scale) + shift


class ConcatConditioning(nn.Module):
    """``cat([norm(h), broadcast(Linear(SiLU(emb)))], dim=1)``: 2C channels out."""

    def __init__(self, cfg: UNetConfig, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.out_channels = 2 * channels
        self.proj = nn.Linear(emb_dim, channels)
        self.norm = make_norm(cfg, channels)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        plane = self.proj(F.silu(emb))[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        return torch.cat([self.norm(h), plane], dim=1)


class AttentionConditioning(nn.Module):
    """Features attend to the embedding: ``n + Attn(n, tokens)`` with ``n = norm(h)``.

    ``tokens = Linear(SiLU(emb))`` reshaped to [B, TIME_TOKENS, C].
    """

    def __init__(self, cfg: UNetConfig, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.proj = nn.Linear(emb_dim, TIME_TOKENS * channels)
        self.norm = make_norm(cfg, channels)
        self.attn = Attention(channels, cfg.heads_for(channels))
        if cfg.zero_init:
            zero_module(self.attn.to_out)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = h.shape
        n = self.norm(h)
        tokens = self.proj(F.silu(emb)).reshape(b, TIME_TOKENS, c)
        out = self.attn(n.reshape(b, c, hgt * wid).transpose(1, 2), context=tokens)
        return n + out.transpose(1, 2).reshape(b, c, hgt, wid)


#: ``UNetConfig.time_conditioning`` -> ``(cfg, channels, emb_dim) -> module``; unknown names are refused.
CONDITIONING_BLOCKS: Registry[Callable[[UNetConfig, int, int], nn.Module]] = Registry("time_conditioning", {
    "add": AddConditioning,
    "concat": ConcatConditioning,
    "film": lambda cfg, channels, emb_dim: ScaleShiftConditioning(cfg, channels, emb_dim, instance=False),
    "adain": lambda cfg, channels, emb_dim: ScaleShiftConditioning(cfg, channels, emb_dim, instance=True),
    "attention": AttentionConditioning,
})


def make_conditioning(cfg: UNetConfig, channels: int, emb_dim: int) -> nn.Module:
    """The conditioning chosen by ``cfg.time_conditioning``."""
    return CONDITIONING_BLOCKS[cfg.time_conditioning](cfg, channels, emb_dim)
