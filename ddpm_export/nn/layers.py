"""Small layer factories shared by the blocks: normalization, convolutions, zero init.

Normalization always computes its statistics in float32 and casts back (improved-diffusion's
``GroupNorm32``), so an fp16 export records the precision policy in the graph itself.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_export.checks import Registry
from ddpm_export.config import UNetConfig


class GroupNorm32(nn.GroupNorm):
    """GroupNorm over [B, C, H, W] computed in float32. ``num_groups == 1`` is LayerNorm over (C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class BatchNorm32(nn.BatchNorm2d):
    """BatchNorm2d computed in float32 (running statistics in eval, batch statistics in train)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch_stats = self.training or self.running_mean is None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        mean = None if self.running_mean is None else self.running_mean.float()
        var = None if self.running_var is None else self.running_var.float()
        y = F.batch_norm(x.float(), mean, var, self.weight.float(), self.bias.float(),
                         use_batch_stats, self.momentum, self.eps)
        if self.training and mean is not None and mean is not self.running_mean:
            self.running_mean.copy_(mean)  # statistics updated in a float32 copy of non-float32 buffers
            self.running_var.copy_(var)
        return y.to(x.dtype)


#: ``UNetConfig.norm`` -> ``(cfg, channels) -> module``; an unknown name is refused with the choices.
NORMS: Registry[Callable[[UNetConfig, int], nn.Module]] = Registry("norm", {
    "group": lambda cfg, channels: GroupNorm32(cfg.num_groups, channels, eps=cfg.norm_eps),
    "batch": lambda cfg, channels: BatchNorm32(channels, eps=cfg.norm_eps),
    "layer": lambda cfg, channels: GroupNorm32(1, channels, eps=cfg.norm_eps),  # LayerNorm over (C, H, W)
})


def make_norm(cfg: UNetConfig, channels: int) -> nn.Module:
    """The configured normalization over ``channels``: group, batch or layer (= 1 group)."""
    return NORMS[cfg.norm](cfg, channels)


def instance_norm(channels: int, eps: float) -> nn.Module:
    """Affine-free instance norm (GroupNorm with groups == channels), used by AdaIN."""
    return GroupNorm32(channels, channels, eps=eps, affine=False)


def make_block_conv(cfg: UNetConfig, in_ch: int, out_ch: int) -> nn.Module:
    """A residual block's k x k convolution: plain, or depthwise + pointwise when ``separable``.

    Padding ``dilation * (k - 1) / 2`` keeps H and W.
    """
    k, d = cfg.kernel_size, cfg.dilation
    pad = d * (k - 1) // 2
    if cfg.separable:
        return nn.Sequential(
            nn.Conv2d(in_ch, in_ch, k, padding=pad, dilation=d, groups=in_ch),
            nn.Conv2d(in_ch, out_ch, 1),
        )
    return nn.Conv2d(in_ch, out_ch, k, padding=pad, dilation=d)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (so a residual branch starts as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def last_linear_or_conv(module: nn.Module) -> nn.Module:
    """The last Conv2d / Linear inside ``module`` (itself when it is one)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return module
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise TypeError(f"{type(module).__name__} holds no Conv2d or Linear to zero-initialise")
    return layers[-1]
