"""Residual block, down/up sampling, squeeze-excitation and ASPP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_export.config import UNetConfig
from ddpm_export.nn.conditioning import make_conditioning
from ddpm_export.nn.layers import last_linear_or_conv, make_block_conv, make_norm, zero_module


class SqueezeExcitation(nn.Module):
    """Channel attention ``h * sigmoid(W2 SiLU(W1 mean_hw(h)))`` (Hu et al. 2018), reduction 4."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 4, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.silu(self.fc1(h.mean(dim=(2, 3)))))
        return h * torch.sigmoid(s)[:, :, None, None]


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding: ``forward(x [B, Cin, H, W], emb [B, E]) -> [B, Cout, H, W]``.

    - ``pre`` (Ho et al. 2020, improved-diffusion, diffusers ``ResnetBlock2D``):
      ``h = conv1(act(norm1(x))); h = conv2(drop(act(cond(h, emb)))); out = skip(x) + se(h)``.
    - ``post`` (He et al. 2016 ordering):
      ``h = drop(act(cond(conv1(x), emb))); h = norm2(conv2(h)); out = act(skip(x) + se(h))``.

    ``cond`` is the configured conditioning (it owns the second norm of ``pre`` and the first of
    ``post``); ``skip`` is a 1 x 1 conv when the channel count changes. With ``zero_init`` the
    branch's last layer (conv2 for ``pre``, norm2's affine for ``post``) starts at zero.
    """

    def __init__(self, cfg: UNetConfig, in_ch: int, out_ch: int, emb_dim: int) -> None:
        super().__init__()
        self.pre = cfg.block_order == "pre"
        self.norm1 = make_norm(cfg, in_ch) if self.pre else None
        self.conv1 = make_block_conv(cfg, in_ch, out_ch)
        self.cond = make_conditioning(cfg, out_ch, emb_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = make_block_conv(cfg, self.cond.out_channels, out_ch)
        self.norm2 = None if self.pre else make_norm(cfg, out_ch)
        self.se = SqueezeExcitation(out_ch) if cfg.squeeze_excitation else None
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        if cfg.zero_init:
            zero_module(last_linear_or_conv(self.conv2) if self.pre else self.norm2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.norm1 is not None:
            h = self.conv1(F.silu(self.norm1(x)))
            h = self.conv2(self.dropout(F.silu(self.cond(h, emb))))
        else:
            h = self.dropout(F.silu(self.cond(self.conv1(x), emb)))
            h = self.norm2(self.conv2(h))
        if self.se is not None:
            h = self.se(h)
        out = (x if self.skip is None else self.skip(x)) + h
        return out if self.pre else F.silu(out)


class Downsample(nn.Module):
    """Halve H and W: a 3 x 3 stride-2 conv (padding 1, or TF 'SAME' = pad right/bottom by 1) or 2 x 2 average pooling."""

    def __init__(self, cfg: UNetConfig, channels: int) -> None:
        super().__init__()
        self.asymmetric = cfg.downsample == "conv" and cfg.downsample_padding == "asymmetric"
        if cfg.downsample == "conv":
            self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.asymmetric else 1)
        else:
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour interpolation, then a 3 x 3 conv.

    ``forward(x [B, C, H, W]) -> [B, C, 2H, 2W]``. ``rewrite`` is None unless set while exporting
    (:func:`ddpm_export.nn.rewrites.use_rewrites`): the same map with 16/36 of the multiply-adds,
    as one stride-2 4 x 4 transposed convolution (:func:`ddpm_export.nn.rewrites.upsample_deconv`)
    or as four 2 x 2 convolutions and a depth-to-space (:class:`ddpm_export.nn.subpixel.SubpixelUpsample`).
    """

    rewrite: nn.Module | None

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.rewrite = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rewrite is not None:
            return self.rewrite(x)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as a residual branch (Chen et al. 2017, DeepLab v3).

    Branches: 1 x 1 conv, a 3 x 3 conv per dilation rate, and global pooling; each conv -> norm
    -> SiLU; concatenated and projected back by a 1 x 1 conv (zero-initialised with ``zero_init``).
    ``forward(x [B, C, H, W]) -> x + proj(cat(branches))``.
    """

    def __init__(self, cfg: UNetConfig, channels: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(channels, channels, 1)]
        convs += [nn.Conv2d(channels, channels, 3, padding=r, dilation=r) for r in cfg.aspp_rates]
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(make_norm(cfg, channels) for _ in convs)
        self.pool_conv = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels * (len(convs) + 1), channels, 1)
        if cfg.zero_init:
            zero_module(self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [F.silu(norm(conv(x))) for conv, norm in zip(self.convs, self.norms)]
        pooled = F.silu(self.pool_conv(x.mean(dim=(2, 3), keepdim=True)))
        branches.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return x + self.proj(torch.cat(branches, dim=1))
