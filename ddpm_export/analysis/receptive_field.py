"""Theoretical receptive field (RF), tracked through a real forward pass, two ways.

Only the height axis is tracked (the blocks of this project are square), on an unbounded grid
(image borders ignored). Positions of a tensor are q = 0, 1, ...; its ``jump`` J is the distance
in input pixels between neighbouring positions (1 at the input, x s after a stride s, / f after a
nearest-neighbour upsampling by f).

**The design's formula** ``RF = 1 + sum_j (k_j - 1) d_j prod_{m<j} s_m`` (Araujo et al. 2019),
with an upsampling by f counting as a stride 1/f (it divides the jump): ``formula``. Each k x k
window with dilation d adds ``(k - 1) d J``.

**Exact** (``size``): which input pixels can one output position depend on? Position q of a
tensor depends on the interval ``[q J + a_r, q J + b_r]`` of input pixels, where the offsets
depend only on the residue r = q mod P (P = 1 until an upsampling: nearest 2x copies one source
position to two, so even and odd positions see differently aligned windows). Rules:

- conv / pool (kernel k, dilation d, stride s, padding p): position q reads q s - p + i d,
  i = 0..k-1; its interval is the union of theirs. J' = J s, P' = P / gcd(P, s).
- nearest upsample by f: q reads floor(q / f). J' = J / f, P' = P f.
- pad (top t): q reads q - t.
- any other op (activations, sums, concatenation of skips, reshapes): the union of its inputs'
  intervals, position by position.

``size = max_r (b_r - a_r + 1)``: the RF of the worst-aligned position. Down the U-Net it equals
the formula; on the way up it can exceed it, because the formula spreads the alignment of
nearest upsampling evenly (conv3/s2, conv3/s2, up 2x, conv3, up 2x, conv3: formula 13, exact 15).

**Not counted:** normalization statistics, attention, squeeze-excitation and global pooling mix
all positions, so strictly they make the dependency global. They are treated as position-wise
here (the convolutional RF of the design's formula); the effective RF
(:mod:`ddpm_export.analysis.erf`) measures what the whole network really uses.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ddpm_export.errors import BadInputError

__all__ = ["RF", "RFTracker", "receptive_field"]


@dataclasses.dataclass(frozen=True)
class RF:
    """The RF state of one tensor: ``jump`` J, per-residue offsets ``(a_r, b_r)`` (period = their
    count) and the design formula's ``formula`` size. ``size`` is the exact RF (worst position)."""

    jump: Fraction
    offsets: tuple[tuple[Fraction, Fraction], ...]
    formula: Fraction

    @property
    def period(self) -> int:
        return len(self.offsets)

    @property
    def size(self) -> Fraction:
        return max(b - a + 1 for a, b in self.offsets)

    def interval(self, q: int) -> tuple[Fraction, Fraction]:
        """Input pixels position ``q`` depends on."""
        a, b = self.offsets[q % self.period]
        return q * self.jump + a, q * self.jump + b

    def window(self, kernel: int, stride: int = 1, dilation: int = 1, padding: int = 0) -> "RF":
        """After a conv / pool window."""
        period = self.period // math.gcd(self.period, stride)
        jump = self.jump * stride
        offsets = []
        for q in range(period):
            spans = [self.interval(q * stride - padding + i * dilation) for i in range(kernel)]
            offsets.append((min(a for a, _ in spans) - q * jump, max(b for _, b in spans) - q * jump))
        return RF(jump, tuple(offsets), self.formula + (kernel - 1) * dilation * self.jump)

    def upsample(self, factor: int) -> "RF":
        """After nearest-neighbour upsampling by an integer ``factor``."""
        jump = self.jump / factor
        offsets = []
        for q in range(self.period * factor):
            a, b = self.interval(q // factor)
            offsets.append((a - q * jump, b - q * jump))
        return RF(jump, tuple(offsets), self.formula)

    def shift(self, top: int) -> "RF":
        """After padding ``top`` rows: position q is the input's q - top."""
        return self.window(1, padding=top)

    def union(self, other: "RF") -> "RF":
        """Position-wise union with a tensor of the same jump."""
        period = math.lcm(self.period, other.period)
        offsets = []
        for q in range(period):
            (a1, b1), (a2, b2) = self.offsets[q % self.period], other.offsets[q % other.period]
            offsets.append((min(a1, a2), max(b1, b2)))
        return RF(self.jump, tuple(offsets), max(self.formula, other.formula))


INPUT_RF = RF(Fraction(1), ((Fraction(0), Fraction(0)),), Fraction(1))


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _merge(states: list[RF]) -> RF:
    widest = max(states, key=lambda r: r.size)
    same = [r for r in states if r.jump == widest.jump]  # tensors of another resolution never meet here
    merged = same[0]
    for r in same[1:]:
        merged = merged.union(r)
    return merged


class RFTracker(TorchDispatchMode):
    """Propagates :class:`RF` through every aten op of a forward pass (see the module docstring).

    ``mark(x)`` gives a tensor the input RF; ``rf(t)`` reads any tensor's RF afterwards (None for
    tensors that do not depend on a marked one, e.g. the time embedding).
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
        rf = self._rule(func, args, out, _merge(known) if len(known) > 1 else known[0])
        for t in _tensors(out):
            self._set(t, rf)
        return out

    @staticmethod
    def _rule(func: Any, args: tuple, out: Any, rf: RF) -> RF:
        name = func.overloadpacket.__name__
        if name == "convolution":
            weight, stride, padding, dilation, transposed = args[1], args[3], args[4], args[5], args[6]
            if transposed:
                raise NotImplementedError("transposed convolutions are not tracked")
            return rf.window(int(weight.shape[2]), int(stride[0]), int(dilation[0]), int(padding[0]))
        if name in ("avg_pool2d", "max_pool2d", "max_pool2d_with_indices"):
            kernel = int(args[1][0])
            stride = int(args[2][0]) if len(args) > 2 and len(args[2]) else kernel
            padding = int(args[3][0]) if len(args) > 3 else 0
            return rf.window(kernel, stride, 1, padding)
        if name.startswith("upsample_nearest"):
            factor = Fraction(int(out.shape[-2]), int(args[0].shape[-2]))
            if factor.denominator != 1:
                raise NotImplementedError(f"nearest resizing by {factor} is not tracked (integer factors only)")
            return rf.upsample(int(factor))
        if name == "constant_pad_nd" and len(args[1]) >= 4:
            return rf.shift(int(args[1][2]))
        return rf


def receptive_field(module: torch.nn.Module, x: torch.Tensor,
                    call: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None) -> RF:
    """The RF of ``module``'s output for input ``x`` (``call(module, x)`` runs it; default ``module(x)``)."""
    with RFTracker() as tracker, torch.no_grad():
        out = (call or (lambda m, t: m(t)))(module, tracker.mark(x))
    rf = tracker.rf(out)
    if rf is None:
        raise BadInputError("the output does not depend on the input through any tracked op")
    return rf
