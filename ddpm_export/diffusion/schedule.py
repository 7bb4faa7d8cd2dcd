"""Beta schedules and the quantities derived from them (Ho et al. 2020, section 2).

Forward process: ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)`` (Ho eq. 2), so with
``alpha_t = 1 - beta_t`` and ``abar_t = prod_{s<=t} alpha_s``,
``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` (Ho eq. 4). Index ``t`` runs 0 .. T-1.

Precision: betas are computed in float64 and rounded once to float32. That float32 array is the
schedule a checkpoint was trained with, so ``alphas`` and ``alphas_cumprod`` are derived from it
in float64 and rounded once. diffusers derives them in float32 (``torch.cumprod``); the two agree
to < 1e-6 relative for every schedule here. (Deriving from the float64 betas instead would differ
from diffusers by 1.3e-5 at the tail of ``cosine``, where ``1 - 0.999`` loses digits in float32.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from ddpm_export.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover -- annotations only: DiffusionConfig's validation uses this module
    from ddpm_export.diffusion.config import DiffusionConfig

__all__ = [
    "BETA_SCHEDULES",
    "Schedule",
    "cosine_abar",
    "cosine_betas",
    "linear_betas",
    "make_betas",
    "scaled_linear_betas",
]


def linear_betas(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    """``beta_t = beta_start + (beta_end - beta_start) t / (T - 1)``: ``[T]`` float64 (Ho et al.)."""
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def scaled_linear_betas(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Linear in ``sqrt(beta)``: ``beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)_t ** 2``."""
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2


def cosine_abar(s: np.ndarray) -> np.ndarray:
    """``abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)`` for ``s = t / T`` in [0, 1] (Nichol & Dhariwal eq. 17).

    Unnormalised: the paper divides by ``abar(0)``, which cancels in the betas below.
    """
    return np.cos((s + 0.008) / 1.008 * (math.pi / 2)) ** 2


def cosine_betas(T: int, max_beta: float = 0.999) -> np.ndarray:
    """``beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta)``: ``[T]`` float64.

    diffusers' ``squaredcos_cap_v2``; the cap keeps ``beta`` below 1 near ``t = T``.
    """
    s = np.arange(T + 1, dtype=np.float64) / T
    abar = cosine_abar(s)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


#: Schedule name -> ``betas(config)`` in float64.
BETA_SCHEDULES = {
    "linear": lambda c: linear_betas(c.num_train_timesteps, c.beta_start, c.beta_end),
    "scaled_linear": lambda c: scaled_linear_betas(c.num_train_timesteps, c.beta_start, c.beta_end),
    "cosine": lambda c: cosine_betas(c.num_train_timesteps),
}


def make_betas(config: DiffusionConfig) -> np.ndarray:
    """The config's betas in float64, ``[T]``."""
    return BETA_SCHEDULES[config.beta_schedule](config)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A discretised forward process, every array ``[T]`` float32 and read-only.

    ``betas``: beta_t; ``alphas``: ``1 - beta_t``; ``alphas_cumprod``: ``abar_t = prod_{s<=t} alpha_s``.
    """

    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray

    @classmethod
    def from_betas(cls, betas: np.ndarray) -> "Schedule":
        """Round ``betas`` to float32, then derive ``alphas`` and ``abar`` from that in float64."""
        betas32 = np.asarray(betas, dtype=np.float64).astype(np.float32)
        if betas32.ndim != 1 or not np.all((betas32 > 0) & (betas32 < 1)):
            raise BadInputError("betas must be a 1-D array with every value in (0, 1)")
        alphas = 1.0 - betas32.astype(np.float64)
        return cls(
            betas=_frozen(betas32),
            alphas=_frozen(alphas.astype(np.float32)),
            alphas_cumprod=_frozen(np.cumprod(alphas).astype(np.float32)),
        )

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> "Schedule":
        return cls.from_betas(make_betas(config))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.shape[0])
