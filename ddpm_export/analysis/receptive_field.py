"""Theoretical receptive field (RF), tracked through a real forward pass.

Along one axis, each tensor carries ``(rf, jump)``: ``rf`` is the number of input pixels one of
its positions can depend on through convolutions and pooling, ``jump`` the distance in input
pixels between two neighbouring positions. The network input has ``(1, 1)``; then

- convolution / pooling with kernel k, dilation d, stride s:
  ``rf' = rf + (k - 1) d jump``, ``jump' = jump s``;
- nearest-neighbour upsampling by f: ``rf' = rf``, ``jump' = jump / f`` (an output position copies
  one input position, so its own RF is unchanged; only the spacing of positions shrinks);
- every other op (activations, additions, concatenation of skips, reshapes): ``rf'`` is the
  largest ``rf`` among its inputs, with that input's ``jump``.

Unrolled, this is RF = 1 + sum_j (k_j - 1) d_j prod_{m<j} s_m (Araujo et al. 2019), with an
upsampling by f counting as a stride of 1/f. A k x k conv after a nearest 2x upsample then adds
(k - 1)/2 low-resolution positions, which is exact for odd k: k consecutive upsampled positions
always cover (k - 1)/2 + 1 source positions. ``jump`` stays an integer in a U-Net, whose way up
mirrors its way down; it is kept as a Fraction so other nets stay exact.

**What it does not count:** normalization statistics, attention, squeeze-excitation and global
pooling mix all positions, so strictly they make the dependency global. They are treated as
position-wise here (the convolutional RF of the design's formula); the effective RF
(:mod:`ddpm_export.analysis.erf`) measures what the whole network really uses.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["RF", "RFTracker", "receptive_field"]


@dataclasses.dataclass(frozen=True)
class RF:
    """Receptive field ``size`` (input pixels, along one axis) and ``jump`` of one tensor."""

    size: Fraction
    jump: Fraction

    def through(self, kernel: int, stride: int | Fraction = 1, dilation: int = 1) -> "RF":
        """After a kernel-``kernel`` window with ``stride`` and ``dilation``."""
        return RF(self.size + (kernel - 1) * dilation * self.jump, self.jump * stride)


INPUT_RF = RF(Fraction(1), Fraction(1))


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class RFTracker(TorchDispatchMode):
    """Propagates :class:`RF` through every aten op of a forward pass (see the module docstring).

    ``mark(x)`` gives a tensor the input RF; ``rf(t)`` reads any tensor's RF afterwards (None for
    tensors that do not depend on a marked one, e.g. the time embedding). Only the height axis is
    tracked: the blocks of this project are square.
    """

    def __init__(self) -> None:
        super().__init__()
        self._rf: dict[int, RF] = {}
        self._alive: list[torch.Tensor] = []  # keeps ids unique while the tracker lives

    def mark(self, x: torch.Tensor) -> torch.Tensor:
        self._set(x, INPUT_RF)
        return x

    def rf(self, t: torch.Tensor) -> RF | None:
        return self._rf.get(id(t))

    def _set(self, t: torch.Tensor, rf: RF) -> None:
        self._rf[id(t)] = rf
        self._alive.append(t)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        known = [r for r in (self.rf(t) for t in _tensors(args)) if r is not None]
        if not known:
            return out
        rf = self._rule(func, args, out, max(known, key=lambda r: r.size))
        for t in _tensors(out):
            self._set(t, rf)
        return out

    @staticmethod
    def _rule(func: Any, args: tuple, out: Any, rf: RF) -> RF:
        name = func.overloadpacket.__name__
        if name == "convolution":
            weight, stride, dilation, transposed = args[1], args[3], args[5], args[6]
            if transposed:
                raise NotImplementedError("transposed convolutions are not tracked")
            return rf.through(int(weight.shape[2]), int(stride[0]), int(dilation[0]))
        if name in ("avg_pool2d", "max_pool2d", "max_pool2d_with_indices"):
            kernel = args[1][0]
            stride = args[2][0] if len(args) > 2 and len(args[2]) else kernel
            return rf.through(int(kernel), int(stride))
        if name.startswith("upsample_nearest"):
            return RF(rf.size, rf.jump * Fraction(int(args[0].shape[-2]), int(out.shape[-2])))
        return rf


def receptive_field(module: torch.nn.Module, x: torch.Tensor,
                    call: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None) -> RF:
    """The RF of ``module``'s output for input ``x`` (``call(module, x)`` runs it; default ``module(x)``)."""
    with RFTracker() as tracker, torch.no_grad():
        out = (call or (lambda m, t: m(t)))(module, tracker.mark(x))
    rf = tracker.rf(out)
    if rf is None:
        raise ValueError("the output does not depend on the input through any tracked op")
    return rf
