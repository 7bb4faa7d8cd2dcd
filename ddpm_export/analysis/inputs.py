"""Example model inputs for analysis: ``(x [B, C, H, W], t [B] int64, cond)`` for a UNetConfig."""

from __future__ import annotations

import torch

from ddpm_export.config import UNetConfig

#: tokens of the example context of a context-conditional model
CONTEXT_LENGTH = 8


def example_inputs(cfg: UNetConfig, batch: int, *, device: str | torch.device = "cpu",
                   timesteps: torch.Tensor | None = None, size: int | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Standard-normal ``x`` [B, C, size, size] (default: the model's sample size), ``t`` (default:
    T/2 for every image) and the conditioning the model needs: random class ids, or a random
    context [B, 8, context_dim]."""
    s = size or cfg.sample_size
    meta = torch.device(device).type == "meta"

    def randn(*shape: int) -> torch.Tensor:
        return torch.empty(shape, device=device) if meta else torch.randn(shape, generator=generator).to(device)

    x = randn(batch, cfg.in_channels, s, s)
    t = (timesteps if timesteps is not None else torch.full((batch,), cfg.num_train_timesteps // 2)).to(device)
    if cfg.cond_kind == "class":
        ids = torch.randint(0, cfg.num_class_rows, (batch,), generator=generator)
        return x, t, ids.to(device)
    if cfg.cond_kind == "context":
        assert cfg.context_dim is not None
        return x, t, randn(batch, CONTEXT_LENGTH, cfg.context_dim)
    return x, t, None
