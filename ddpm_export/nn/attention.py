"""Multi-head attention: the weights (``Attention``) apart from the kernel that combines them.

The default kernel is the decomposed, export-friendly form of docs/conventions.md:
``softmax((q d^-1/4)(k d^-1/4)^T + bias) v`` with the softmax in float32 — what TensorRT fuses
and what fp16 survives (improved-diffusion ``QKVAttention``). Like diffusers' attention
processors, each ``Attention`` module holds its own ``kernel``; export swaps the kernels of one
model, never the weights and never a global setting, through :func:`use_attention_kernel`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import nn

from ddpm_export.config import UNetConfig
from ddpm_export.errors import BadInputError
from ddpm_export.nn.layers import make_norm, zero_module

#: (q [B, h, N, d], k [B, h, M, d], v [B, h, M, d], bias [h, N, M] | None) -> [B, h, N, d]
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def decomposed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """MatMul -> Softmax -> MatMul with q and k each pre-scaled by d^-1/4. The product runs in the
    model's dtype; the logits are then cast to float32 for the bias add and the softmax (a no-op
    cast for an fp32 model)."""
    scale = int(q.shape[-1]) ** -0.25  # a Python float: a constant in the exported graph
    w = torch.matmul(q * scale, (k * scale).transpose(-1, -2)).float()
    if bias is not None:
        w = w + bias.float()
    return torch.matmul(torch.softmax(w, dim=-1).to(v.dtype), v)


@contextlib.contextmanager
def use_attention_kernel(model: nn.Module, kernel: AttentionKernel) -> Iterator[None]:
    """Run every ``Attention`` of ``model`` with ``kernel`` inside the block (e.g. while exporting),
    then give each module back the kernel it had. Other models (and other threads' models) are
    untouched."""
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    before = [m.kernel for m in modules]
    for m in modules:
        m.kernel = kernel
    try:
        yield
    finally:
        for m, k in zip(modules, before):
            m.kernel = k


class Attention(nn.Module):
    """Weights of multi-head attention: ``to_q``, ``to_k``, ``to_v``, ``to_out`` (diffusers' names).

    ``forward(x [B, N, C], context [B, M, C_ctx] | None, bias [h, N, M] | None) -> [B, N, C]``;
    self-attention when ``context`` is None. ``kernel`` combines q, k, v (default
    :func:`decomposed_attention`); it is not a parameter and not part of the state dict.

    ``fold_qk`` and ``fold_vo`` are None unless set while exporting
    (:func:`ddpm_export.nn.rewrites.use_rewrites`, single-head self-attention): then the module
    computes ``kernel(fold_qk(x_q), x_k, fold_vo(x))``, two projections instead of four, the
    same map (:func:`ddpm_export.nn.rewrites.fold_attention` gives the algebra).
    """

    kernel: AttentionKernel
    fold_qk: nn.Linear | None
    fold_vo: nn.Linear | None

    def __init__(self, channels: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = channels if context_dim is None else context_dim
        self.heads = heads
        self.kernel = decomposed_attention
        self.fold_qk = self.fold_vo = None
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(kv_dim, channels)
        self.to_v = nn.Linear(kv_dim, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, qk_extra: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        kv = x if context is None else context
        q_in = x if qk_extra is None else x + qk_extra
        k_in = kv if (qk_extra is None or context is not None) else kv + qk_extra
        if self.fold_qk is not None and self.fold_vo is not None:
            return self._folded(self.fold_qk, self.fold_vo, q_in, k_in, kv, bias)
        h = self.heads
        q = self.to_q(q_in).reshape(b, n, h, c // h).transpose(1, 2)
        k = self.to_k(k_in).reshape(b, kv.shape[1], h, c // h).transpose(1, 2)
        v = self.to_v(kv).reshape(b, kv.shape[1], h, c // h).transpose(1, 2)
        out = self.kernel(q, k, v, bias)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))

    def _folded(self, fold_qk: nn.Linear, fold_vo: nn.Linear, q_in: torch.Tensor, k_in: torch.Tensor,
                kv: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The same map through the folded projections (one head, so d = C)."""
        b, n, c = q_in.shape
        q = fold_qk(q_in).reshape(b, 1, n, c)
        k = k_in.reshape(b, 1, k_in.shape[1], c)
        v = fold_vo(kv).reshape(b, 1, kv.shape[1], c)
        return self.kernel(q, k, v, bias).reshape(b, n, c)


class SinusoidalPosition2D(nn.Module):
    """2D sinusoidal position code with learnable frequencies, added to the q/k inputs.

    For C channels and F = C/4 frequencies ``f`` (initialised to ``10000^(-i/F)``), position
    (y, x) gets ``[sin(y f), cos(y f), sin(x f), cos(x f)]`` (Vaswani et al. 2017, extended to 2D);
    computed in float32. Returns [H*W, C].
    """

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        n = channels // 4
        self.freqs = nn.Parameter(torch.exp(-math.log(10000.0) * torch.arange(n, dtype=torch.float32) / n))
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.register_buffer("ys", ys.reshape(-1).float(), persistent=False)
        self.register_buffer("xs", xs.reshape(-1).float(), persistent=False)

    def forward(self) -> torch.Tensor:
        f = self.freqs.float()
        ay, ax = self.ys[:, None] * f, self.xs[:, None] * f
        return torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=-1)


class RelativePositionBias(nn.Module):
    """Learned per-head bias on the attention logits indexed by (dy, dx) (Shaw et al. 2018; Swin).

    A [heads, (2S-1)^2] table; ``forward() -> [heads, S*S, S*S]``.
    """

    def __init__(self, heads: int, size: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(heads, (2 * size - 1) ** 2))
        nn.init.trunc_normal_(self.table, std=0.02)
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        dy = ys[:, None] - ys[None, :] + size - 1
        dx = xs[:, None] - xs[None, :] + size - 1
        self.register_buffer("index", dy * (2 * size - 1) + dx, persistent=False)

    def forward(self) -> torch.Tensor:
        return self.table[:, self.index]


class AttentionBlock(nn.Module):
    """Spatial self-attention (+ cross-attention to a context), each a residual branch.

    ``forward(x [B, C, H, W], context [B, L, D] | None) -> [B, C, H, W]``:
    ``x = x + to_out(attn(norm(x)))``; with a context, then ``x = x + to_out(attn(norm2(x), ctx))``.
    """

    def __init__(self, cfg: UNetConfig, channels: int, size: int, context_dim: int | None,
                 *, norm: bool = True) -> None:
        super().__init__()
        heads = cfg.heads_for(channels)
        self.norm = make_norm(cfg, channels) if norm else nn.Identity()
        self.attn = Attention(channels, heads)
        self.position = (SinusoidalPosition2D(channels, size) if cfg.positional_encoding == "sinusoidal_2d" else None)
        self.rel_bias = (RelativePositionBias(heads, size) if cfg.positional_encoding == "relative_bias" else None)
        if context_dim is not None:
            self.norm_cross = make_norm(cfg, channels)
            self.cross = Attention(channels, heads, context_dim)
        else:
            self.norm_cross = None
            self.cross = None
        if cfg.zero_init:
            for attn in (self.attn, self.cross):
                if attn is not None:
                    zero_module(attn.to_out)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        tokens = self.norm(x).reshape(b, c, hgt * wid).transpose(1, 2)
        pos = self.position().to(x.dtype) if self.position is not None else None
        bias = self.rel_bias() if self.rel_bias is not None else None
        out = self.attn(tokens, bias=bias, qk_extra=pos)
        x = x + out.transpose(1, 2).reshape(b, c, hgt, wid)
        if self.cross is not None:
            if context is None:
                raise BadInputError("this attention block cross-attends and needs a context")
            tokens = self.norm_cross(x).reshape(b, c, hgt * wid).transpose(1, 2)
            out = self.cross(tokens, context=context.to(x.dtype))
            x = x + out.transpose(1, 2).reshape(b, c, hgt, wid)
        return x


