"""Timestep and class embeddings.

The sinusoid follows docs/conventions.md: ``freqs[i] = exp(-ln(max_period) * i / (half - shift))``,
``arg = t * freqs`` in float32 (never fp16: t = 937 must stay 937), ``[cos, sin]`` when
``flip_sin_to_cos`` (OpenAI, diffusers ``UNet2DModel``) else ``[sin, cos]`` (Ho et al. 2020).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ddpm_export.config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps.

    Args:
        t: [B] timesteps (any dtype; converted to float32).
    Returns:
        [B, dim] float32; an odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    arg = t.to(torch.float32)[:, None] * freqs[None, :]
    sin, cos = torch.sin(arg), torch.cos(arg)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """t [B] int64 -> embedding [B, 4 * C0], computed in float32 whatever the model's dtype.

    - ``sinusoidal``: ``MLP(PE_C0(t))`` with ``MLP = Linear(C0, 4C0) -> SiLU -> Linear(4C0, 4C0)``
      (Ho et al. 2020, appendix B; diffusers ``TimestepEmbedding``).
    - ``learned``: ``MLP(table[t])`` with a ``[T, C0]`` table (exports as a Gather).
    - ``hybrid``: ``PE_4C0(t) + MLP'(PE_4C0(t))`` with ``MLP' = Linear(4C0, 4C0) -> SiLU -> Linear``.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.kind = cfg.time_embedding
        self.flip_sin_to_cos = cfg.flip_sin_to_cos
        self.freq_shift = cfg.freq_shift
        self.max_period = cfg.max_period
        c0 = cfg.time_embed_dim
        self.out_dim = 4 * c0
        self.pe_dim = self.out_dim if self.kind == "hybrid" else c0
        self.table = nn.Embedding(cfg.num_train_timesteps, c0) if self.kind == "learned" else None
        self.linear_1 = nn.Linear(self.pe_dim, self.out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(self.out_dim, self.out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            e = self.table.weight.float()[t]
        else:
            e = timestep_embedding(t, self.pe_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                                   freq_shift=self.freq_shift, max_period=self.max_period)
        h = nn.functional.linear(e, self.linear_1.weight.float(), self.linear_1.bias.float())
        h = nn.functional.linear(self.act(h), self.linear_2.weight.float(), self.linear_2.bias.float())
        return e + h if self.kind == "hybrid" else h


class ClassEmbedding(nn.Module):
    """Class ids [B] int64 -> [B, dim] rows of a table; the last row is the null class when present."""

    def __init__(self, num_rows: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(num_rows, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table.weight.float()[labels]
