"""What-if costs: parameters and FLOPs of the same U-Net with one cost switch changed.

Each variant is the model's UNetConfig with one field replaced (``dataclasses.replace``, so it is
validated like any config) and counted on the meta device (no weights) with the same FLOP hooks
as :func:`~ddpm_export.analysis.blocks.block_table`.
Switches: ``separable`` (a k x k conv costs ``k^2 C_in C_out`` weights, depthwise + pointwise
``k^2 C_in + C_in C_out``), spatial attention at each feature-map size, and the bottleneck
attention (``mid_attention``). A variant that the config rejects is reported with the reason.
"""

from __future__ import annotations

import dataclasses

import torch

from ddpm_export.analysis.blocks import meta_model
from ddpm_export.analysis.flops import FlopHooks
from ddpm_export.analysis.inputs import example_inputs
from ddpm_export.config import UNetConfig
from ddpm_export.configbase import ConfigError

__all__ = ["WhatIf", "cost", "what_if"]


@dataclasses.dataclass(frozen=True)
class WhatIf:
    """One variant: ``change`` in words, its params / FLOPs (None when ``error``) and the
    attention score bytes at the batch."""

    change: str
    params: int | None
    flops: int | None
    score_bytes: int | None
    error: str | None = None


def _variants(cfg: UNetConfig) -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = [
        (f"separable {'off' if cfg.separable else 'on'}", {"separable": not cfg.separable})]
    for size in cfg.resolutions:
        on = size in cfg.attention_resolutions
        sizes = tuple(r for r in cfg.attention_resolutions if r != size) if on else \
            tuple(sorted((*cfg.attention_resolutions, size), reverse=True))
        out.append((f"attention at {size}x{size} {'off' if on else 'on'}", {"attention_resolutions": sizes}))
    out.append((f"mid attention {'off' if cfg.mid_attention else 'on'}", {"mid_attention": not cfg.mid_attention}))
    return out


def cost(cfg: UNetConfig, change: str, batch: int = 1) -> WhatIf:
    """Parameters, FLOPs per image and attention score bytes at ``batch`` of the UNet of ``cfg``."""
    unet = meta_model(cfg)
    x, t, cond = example_inputs(cfg, 1, device="meta")
    with FlopHooks(unet) as counted, torch.no_grad():
        unet(x, t, cond)
    scores = sum(c.score_bytes(batch) for calls in counted.attention.values() for c in calls)
    return WhatIf(change, sum(p.numel() for p in unet.parameters()), sum(counted.flops.values()), scores)


def what_if(cfg: UNetConfig, batch: int = 1) -> tuple[WhatIf, list[WhatIf]]:
    """``(the model as configured, one WhatIf per variant)``."""
    results = []
    for change, fields in _variants(cfg):
        try:
            variant = dataclasses.replace(cfg, **fields)
        except ConfigError as e:
            results.append(WhatIf(change, None, None, None, str(e)))
            continue
        results.append(cost(variant, change, batch))
    return cost(cfg, "as configured", batch), results
