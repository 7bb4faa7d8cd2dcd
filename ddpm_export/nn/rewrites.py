"""Exact rewrites: the same function with fewer multiply-adds, swapped in while exporting.

Each rewrite is an algebraic identity, not an approximation; only float rounding differs (the
new weights are computed in float64 and rounded once to the model's dtype). Measured on
ddpm-cifar10 (README, "Speed"; ``ddpm_export.export.rewrites`` says where each is used):

- ``upsample-deconv``: nearest x2 then a 3 x 3 conv == one stride-2 4 x 4 transposed conv
  (:func:`upsample_deconv`): 16 instead of 36 multiply-adds per output pixel and channel pair,
  and no 4x-sized upsampled tensor.
- ``upsample-subpixel``: the same map as four 2 x 2 convs, one per output phase, and a
  depth-to-space (:class:`ddpm_export.nn.subpixel.SubpixelUpsample`): the same 16 multiply-adds,
  as ordinary convolutions (what an int8 runtime quantizes). One upsampling form at a time.
- ``attention-fold``: single-head self-attention's q/k and v/out projection pairs each folded
  into one matrix (:func:`fold_attention`): 2 N C^2 instead of 4 N C^2 multiply-adds.

Like the attention kernel, a rewrite is set per module (never a global switch) by
:func:`use_rewrites`, as submodules (so that the export writes their weights as initializers
like every other weight), and removed when the block exits.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ddpm_export.contract.choices import REWRITES
from ddpm_export.errors import BadInputError
from ddpm_export.nn.attention import Attention
from ddpm_export.nn.blocks import Upsample
from ddpm_export.nn.subpixel import SubpixelUpsample

__all__ = ["REWRITES", "UPSAMPLE_REWRITES", "applicable", "can_fold", "check_rewrites", "fold_attention",
           "upsample_deconv", "use_rewrites"]

#: the 4 taps of the transposed conv from the 3 taps w[-1], w[0], w[1] of the conv, per axis
_DECONV_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)


def check_rewrites(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` if each is one of :data:`REWRITES` and at most one rewrites the upsampling, else a
    BadInputError listing the choices."""
    unknown = [n for n in names if n not in REWRITES]
    if unknown:
        raise BadInputError(f"rewrites {', '.join(map(repr, unknown))} are not valid; choose from: "
                            f"{', '.join(REWRITES)} (or auto, none)")
    upsampling = [n for n in names if n in UPSAMPLE_REWRITES]
    if len(upsampling) > 1:
        raise BadInputError(f"rewrites {' and '.join(upsampling)} both rewrite the upsampling conv; choose one")
    return names


def _like(reference: torch.Tensor) -> dict[str, Any]:
    """Constructor arguments for a new layer in ``reference``'s dtype and device."""
    return {"dtype": reference.dtype, "device": reference.device}


def upsample_deconv(conv: nn.Conv2d) -> nn.ConvTranspose2d:
    """``deconv(x) == conv(interpolate(x, scale_factor=2, mode="nearest"))``, stride 2, padding 1.

    Per axis, output ``2i + a`` of the upsampled conv is ``w[-1] u[2i+a-1] + w[0] u[2i+a] +
    w[1] u[2i+a+1]`` with ``u[p] = x[p // 2]``. A stride-2 transposed conv with padding 1 sends
    input ``i`` to outputs ``2i - 1 + k``, k = 0..3, so its taps are ``[w1, w0 + w1, w-1 + w0,
    w-1]`` = ``A w`` (``A`` = :data:`_DECONV_TAPS`); in 2D, ``A W A^T`` per channel pair.
    """
    w = conv.weight.detach().to(torch.float64)  # [Cout, Cin, 3, 3]
    a = _DECONV_TAPS.to(w.device)
    deconv = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, 4, stride=2, padding=1,
                                bias=conv.bias is not None, **_like(conv.weight))
    with torch.no_grad():
        deconv.weight.copy_(torch.einsum("ay,oiyx,bx->ioab", a, w, a))  # [Cin, Cout, 4, 4]
        if conv.bias is not None:
            deconv.bias.copy_(conv.bias.detach())
    return deconv.requires_grad_(False)


#: the rewrites of the upsampling conv, each building its module from the 3 x 3 conv; an
#: ``Upsample`` takes at most one
UPSAMPLE_REWRITES: dict[str, Callable[[nn.Conv2d], nn.Module]] = {
    "upsample-deconv": upsample_deconv, "upsample-subpixel": SubpixelUpsample}


def can_fold(attn: Attention) -> bool:
    """Whether :func:`fold_attention` applies: one head, and keys/values from the same C channels as
    the queries (self-attention). Several heads would grow each head's inner product from d to C."""
    return attn.heads == 1 and attn.to_k.in_features == attn.to_q.in_features == attn.to_q.out_features


def fold_attention(attn: Attention) -> tuple[nn.Linear, nn.Linear]:
    """``(fold_qk, fold_vo)``: single-head self-attention through two projections instead of four.

    With ``q = x_q Wq^T + bq``, ``k = x_k Wk^T + bk``: ``q_i . k_j = (x_q,i Wq^T Wk + bq Wk) . x_k,j``
    plus terms constant in j, which the softmax over j cancels; so ``fold_qk`` has weight
    ``Wk^T Wq`` and bias ``Wk^T bq`` and the keys are ``x_k`` itself. The rows of a softmax sum to
    1, so ``softmax(.) (x Wv^T + bv) Wo^T + bo = softmax(.) (x (Wo Wv)^T + Wo bv + bo)``: ``fold_vo``
    has weight ``Wo Wv`` and bias ``Wo bv + bo``, and ``to_out`` is gone.
    """
    if not can_fold(attn):
        raise ValueError("attention-fold needs single-head self-attention")
    wq, bq, wk, wv, bv, wo, bo = (p.detach().to(torch.float64) for p in (
        attn.to_q.weight, attn.to_q.bias, attn.to_k.weight, attn.to_v.weight, attn.to_v.bias,
        attn.to_out.weight, attn.to_out.bias))
    c = attn.to_q.in_features
    qk, vo = nn.Linear(c, c, **_like(attn.to_q.weight)), nn.Linear(c, c, **_like(attn.to_q.weight))
    with torch.no_grad():
        for linear, weight, bias in ((qk, wk.t() @ wq, wk.t() @ bq), (vo, wo @ wv, wo @ bv + bo)):
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
    return qk.requires_grad_(False), vo.requires_grad_(False)


def applicable(model: nn.Module, rewrites: tuple[str, ...]) -> tuple[str, ...]:
    """``rewrites`` less those that find nothing to rewrite in ``model``: ``attention-fold`` without
    a single-head self-attention (:func:`can_fold`), an upsampling rewrite without an Upsample."""
    modules = list(model.modules())
    folds = any(isinstance(m, Attention) and can_fold(m) for m in modules)
    upsamples = any(isinstance(m, Upsample) for m in modules)
    return tuple(r for r in rewrites if (upsamples if r in UPSAMPLE_REWRITES else folds if r == "attention-fold"
                                         else True))


@contextlib.contextmanager
def use_rewrites(model: nn.Module, rewrites: tuple[str, ...]) -> Iterator[int]:
    """Run ``model`` with ``rewrites`` (names from :data:`REWRITES`) inside the block; yields how
    many modules were rewritten. Attention modules that cannot be folded keep their projections."""
    check_rewrites(rewrites)
    modules = list(model.modules())
    upsampling = [UPSAMPLE_REWRITES[name] for name in rewrites if name in UPSAMPLE_REWRITES]
    ups = [m for m in modules if isinstance(m, Upsample)] if upsampling else []
    attns = [m for m in modules if isinstance(m, Attention) and can_fold(m)] if "attention-fold" in rewrites else []
    for up in ups:
        up.rewrite = upsampling[0](up.conv)
    for attn in attns:
        attn.fold_qk, attn.fold_vo = fold_attention(attn)
    try:
        yield len(ups) + len(attns)
    finally:
        for up in ups:
            up.rewrite = None
        for attn in attns:
            attn.fold_qk = attn.fold_vo = None
