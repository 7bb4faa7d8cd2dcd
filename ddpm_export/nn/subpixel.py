"""Nearest x2 upsampling then a 3 x 3 conv, as four 2 x 2 convs and a depth-to-space (sub-pixel
convolution; Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an
Efficient Sub-Pixel Convolutional Neural Network").

Per axis, output ``2i + a`` of the upsampled conv is ``w[-1] u[2i+a-1] + w[0] u[2i+a] + w[1]
u[2i+a+1]`` with ``u[p] = x[p // 2]``, so each output phase ``a`` reads two input rows:

- ``a = 0``: rows ``i - 1, i`` with taps ``(w[-1], w[0] + w[1])``;
- ``a = 1``: rows ``i, i + 1`` with taps ``(w[-1] + w[0], w[1])``.

In 2-D, phase ``(a, b)`` is a 2 x 2 conv with kernel ``P_a W P_b^T`` (``P`` = :data:`PHASE_TAPS`)
over ``x`` zero-padded by one row above (``a = 0``) or below (``a = 1``) and one column left or
right: 16 instead of 36 multiply-adds per output pixel and channel pair, like the transposed
conv of ``upsample-deconv``, but as ordinary convolutions, which int8 runtimes run as int8
kernels (OpenVINO's CPU plugin has no int8 transposed conv).

In ONNX each phase is one ``Conv`` with asymmetric ``pads`` (no ``Pad`` node), and the four
outputs are interleaved by ``Concat`` + ``DepthToSpace(blocksize=2, mode="DCR")``:
``y[c, 2h + a, 2w + b] = cat[(2a + b) C + c, h, w]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx import symbolic_helper

__all__ = ["PHASE_TAPS", "SubpixelUpsample"]

#: ``PHASE_TAPS[a, tap, k]``: weight of 3 x 3 tap ``k`` (w[-1], w[0], w[1]) in 2 x 2 tap ``tap`` of phase ``a``
PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                           [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)


class _PaddedConv(torch.autograd.Function):
    """``conv2d(pad(x, (left, right, top, bottom)), weight, bias)``, exported as one ``Conv`` whose
    ``pads`` are ``[top, left, bottom, right]`` (ONNX allows asymmetric pads; torch's conv does not)."""

    @staticmethod
    def forward(ctx, x, weight, bias, top, left, bottom, right):  # type: ignore[no-untyped-def]
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias)

    @staticmethod
    def symbolic(g, x, weight, bias, top, left, bottom, right):  # type: ignore[no-untyped-def]
        inputs = (x, weight) if symbolic_helper._is_none(bias) else (x, weight, bias)
        return g.op("Conv", *inputs, kernel_shape_i=[2, 2], pads_i=[top, left, bottom, right],
                    strides_i=[1, 1], dilations_i=[1, 1], group_i=1)


class _DepthToSpaceDCR(torch.autograd.Function):
    """``[B, 4C, H, W] -> [B, C, 2H, 2W]`` with ``y[c, 2h + a, 2w + b] = x[(2a + b) C + c, h, w]``;
    exported as ``DepthToSpace(blocksize=2, mode="DCR")`` (torch's ``pixel_shuffle`` is CRD)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        n, c4, h, w = x.shape
        return x.view(n, 2, 2, c4 // 4, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c4 // 4, 2 * h, 2 * w)

    @staticmethod
    def symbolic(g, x):  # type: ignore[no-untyped-def]
        return g.op("DepthToSpace", x, blocksize_i=2, mode_s="DCR")


class SubpixelUpsample(nn.Module):
    """``forward(x [B, Cin, H, W]) -> [B, Cout, 2H, 2W]`` == ``conv(interpolate(x, scale_factor=2,
    mode="nearest"))`` for the 3 x 3, padding-1 ``conv`` it is built from.

    ``phases[2a + b]`` is the 2 x 2 conv of output phase ``(a, b)`` (module docstring); kernels are
    computed in float64 and rounded once to ``conv``'s dtype.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise ValueError("upsample-subpixel needs a 3 x 3 conv with padding 1, stride 1 and one group")
        w = conv.weight.detach().to(torch.float64)  # [Cout, Cin, 3, 3]
        taps = PHASE_TAPS.to(w.device)
        kernels = torch.einsum("ayk,oikl,bxl->aboiyx", taps, w, taps)  # [2, 2, Cout, Cin, 2, 2]
        self.phases = nn.ModuleList()
        for a in (0, 1):
            for b in (0, 1):
                phase = nn.Conv2d(conv.in_channels, conv.out_channels, 2, bias=conv.bias is not None,
                                  dtype=conv.weight.dtype, device=conv.weight.device)
                with torch.no_grad():
                    phase.weight.copy_(kernels[a, b])
                    if conv.bias is not None:
                        phase.bias.copy_(conv.bias.detach())
                self.phases.append(phase.requires_grad_(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for index, phase in enumerate(self.phases):
            a, b = divmod(index, 2)  # pad one row above for a = 0, below for a = 1; columns likewise
            outs.append(_PaddedConv.apply(x, phase.weight, phase.bias, 1 - a, 1 - b, a, b))
        return _DepthToSpaceDCR.apply(torch.cat(outs, dim=1))
