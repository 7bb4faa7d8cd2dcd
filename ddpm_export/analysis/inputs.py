"""Example model inputs for analysis: ``(x [B, C, H, W], t [B] int64, cond)`` for a UNetConfig."""

from __future__ import annotations

import numpy as np
import torch

from ddpm_export.config import UNetConfig
from ddpm_export.contract.spec import ExportSpec

#: tokens of the example context of a context-conditional model
CONTEXT_LENGTH = 8


def example_inputs(cfg: UNetConfig, batch: int, *, device: str | torch.device = "cpu",
                   timesteps: torch.Tensor | None = None, size: int | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Standard-normal ``x`` [B, C, size, size] (default: the model's sample size), ``t`` (default:
    T/2 for every image) and the conditioning the model needs, drawn by its contract descriptor
    (:meth:`~ddpm_export.contract.conditioning.Conditioning.sample`: random class ids, or a random
    context [B, 8, context_dim]; seeded from ``generator``)."""
    s = size or cfg.sample_size
    meta = torch.device(device).type == "meta"

    def randn(*shape: int) -> torch.Tensor:
        return torch.empty(shape, device=device) if meta else torch.randn(shape, generator=generator).to(device)

    x = randn(batch, cfg.in_channels, s, s)
    t = (timesteps if timesteps is not None else torch.full((batch,), cfg.num_train_timesteps // 2)).to(device)
    spec = ExportSpec.from_config(cfg)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    drawn = spec.conditioning.sample(rng, spec, batch, CONTEXT_LENGTH)
    cond = next((torch.from_numpy(v).to(device) for v in drawn.values()), None)
    return x, t, cond
