"""FLOPs of a forward pass, counted two independent ways.

:class:`FlopHooks` counts from the layer shapes, one formula per layer kind, with forward hooks
(2 FLOPs per multiply-accumulate, biases and elementwise work not counted):

- ``Conv2d``: ``2 * numel(out) * (C_in / groups) * k_h * k_w``;
- ``Linear``: ``2 * numel(in) / C_in * C_in * C_out``; the time embedding's two linears, which
  it applies functionally (in float32), the same per image;
- ``Attention`` kernel: ``2 * B N M C`` for ``q k^T`` and the same for ``softmax(.) v``
  (N queries, M keys, C = heads * head_dim), on top of its four ``Linear`` projections.

:func:`flop_counter_total` asks ``torch.utils.flop_counter.FlopCounterMode``, which counts the
same convention from the aten ops (convolution, mm, addmm, bmm); the two totals must agree.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddpm_export.nn.attention import Attention
from ddpm_export.nn.embeddings import TimeEmbedding

__all__ = ["AttentionCall", "FlopHooks", "flop_counter_total"]


class AttentionCall:
    """One attention kernel call: ``batch``, ``heads``, ``queries`` N, ``keys`` M, ``channels`` C."""

    def __init__(self, batch: int, heads: int, queries: int, keys: int, channels: int) -> None:
        self.batch, self.heads, self.queries, self.keys, self.channels = batch, heads, queries, keys, channels

    @property
    def flops(self) -> int:
        return 2 * 2 * self.batch * self.queries * self.keys * self.channels

    def score_bytes(self, batch: int) -> int:
        """Bytes of the float32 score matrix [batch, heads, N, M] (the softmax runs in float32)."""
        return 4 * batch * self.heads * self.queries * self.keys


class FlopHooks:
    """Context manager: while active, every Conv2d / Linear / Attention of ``model`` adds its FLOPs
    to ``flops[name]`` (the module's qualified name) and attention calls to ``attention[name]``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flops: dict[str, int] = collections.defaultdict(int)
        self.attention: dict[str, list[AttentionCall]] = collections.defaultdict(list)
        self._handles: list[Any] = []

    def __enter__(self) -> "FlopHooks":
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Conv2d):
                self._handles.append(module.register_forward_hook(self._conv(name)))
            elif isinstance(module, nn.Linear):
                self._handles.append(module.register_forward_hook(self._linear(name)))
            elif isinstance(module, TimeEmbedding):
                self._handles.append(module.register_forward_hook(self._time_mlp(name)))
            elif isinstance(module, Attention):
                self._handles.append(module.register_forward_hook(self._attention(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _conv(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
            kh, kw = module.kernel_size
            self.flops[name] += 2 * out.numel() * (module.in_channels // module.groups) * kh * kw
        return hook

    def _linear(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Linear, args: tuple, out: torch.Tensor) -> None:
            rows = args[0].numel() // module.in_features
            self.flops[name] += 2 * rows * module.in_features * module.out_features
        return hook

    def _time_mlp(self, name: str) -> Callable[..., None]:
        def hook(module: TimeEmbedding, args: tuple, out: torch.Tensor) -> None:
            per_image = sum(lin.in_features * lin.out_features for lin in (module.linear_1, module.linear_2))
            self.flops[name] += 2 * args[0].shape[0] * per_image
        return hook

    def _attention(self, name: str) -> Callable[..., None]:
        def hook(module: Attention, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
            x = args[0]
            context = kwargs.get("context", args[1] if len(args) > 1 else None)
            keys = x.shape[1] if context is None else context.shape[1]
            call = AttentionCall(x.shape[0], module.heads, x.shape[1], keys, x.shape[2])
            self.attention[name].append(call)
            self.flops[name] += call.flops
        return hook


def flop_counter_total(run: Callable[[], Any]) -> int:
    """Total FLOPs torch's FlopCounterMode counts while ``run()`` executes."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run()
    return int(counter.get_total_flops())
