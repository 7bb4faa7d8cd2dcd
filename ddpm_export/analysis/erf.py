"""Effective receptive field (ERF; Luo et al. 2016, "Understanding the Effective Receptive Field
in Deep Convolutional Neural Networks").

The ERF map is ``E[|d y_c / d x|]``: the gradient of the centre output pixel ``y_c`` (summed over
output channels) with respect to the input ``x [B, C, H, W]``, absolute, summed over input
channels and averaged over random inputs (and, for a U-Net, several timesteps): ``[H, W]``.
Its size is the half-width ``r95`` of the smallest square window around the centre that holds
95% of the map's mass (``r50``, the half-mass radius, describes its core); the ERF diameter
``2 r95 + 1`` is compared with the theoretical RF
(:mod:`ddpm_export.analysis.receptive_field`), whose diameter it is along one axis.

A centre pixel cannot see further than the image border, so next to ``ratio = diameter / RF``
we report ``ratio_visible = diameter / min(RF, 2 r_max + 1)`` with ``r_max`` the largest window
half-width that still touches the image.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm_export.analysis.inputs import example_inputs
from ddpm_export.config import UNetConfig
from ddpm_export.configbase import ConfigError
from ddpm_export.errors import BadInputError, NonFiniteOutputError
from ddpm_export.nn.unet import UNet

__all__ = ["ErfResult", "check_erf_size", "default_timesteps", "erf_radius", "gradient_map", "measure_erf", "unet_gradient_map"]

MASS = 0.95


@dataclasses.dataclass(frozen=True)
class ErfResult:
    map: np.ndarray           # [H, W] mean |gradient|
    centre: tuple[int, int]
    radius: int               # r95: half-width of the square window holding MASS of the map
    theoretical_rf: float

    @property
    def half_mass_radius(self) -> int:
        """r50: half-width of the square window holding half the map's mass (the ERF's core)."""
        return erf_radius(self.map, self.centre, 0.5)

    @property
    def diameter(self) -> int:
        return 2 * self.radius + 1

    @property
    def ratio(self) -> float:
        return self.diameter / self.theoretical_rf

    @property
    def visible_rf(self) -> float:
        h, w = self.map.shape
        r_max = max(self.centre[0], h - 1 - self.centre[0], self.centre[1], w - 1 - self.centre[1])
        return min(self.theoretical_rf, 2 * r_max + 1)

    @property
    def ratio_visible(self) -> float:
        return self.diameter / self.visible_rf


def gradient_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    """``|d sum_c fn(x)[b, c, H'/2, W'/2] / d x|`` summed over input channels, averaged over the batch: [H, W].

    The images of a batch do not interact (eval mode), so one backward pass gives each image's gradient.
    """
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    cy, cx = out.shape[-2] // 2, out.shape[-1] // 2
    (grad,) = torch.autograd.grad(out[:, :, cy, cx].sum(), x)
    return grad.abs().sum(dim=1).mean(dim=0).double().numpy()


def erf_radius(grad_map: np.ndarray, centre: tuple[int, int], mass: float = MASS) -> int:
    """Smallest r such that the window ``|dy| <= r, |dx| <= r`` around ``centre`` holds ``mass`` of the map."""
    total = grad_map.sum()
    if not np.isfinite(total):
        raise NonFiniteOutputError("the gradient map holds NaN or infinity: the model's output is not finite on "
                                   "random inputs (check its weights)")
    if not total > 0:
        raise BadInputError("the gradient map is zero everywhere: the output does not depend on the input")
    h, w = grad_map.shape
    cy, cx = centre
    for r in range(max(h, w)):
        window = grad_map[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1].sum()
        if window >= mass * total * (1 - 1e-12):
            return r
    return max(h, w) - 1


def default_timesteps(num_train_timesteps: int, count: int = 4) -> list[int]:
    """``count`` timesteps spread over [0, T): 0, T/(count-1), ..., T-1."""
    return sorted({round(i * (num_train_timesteps - 1) / max(count - 1, 1)) for i in range(count)})


def unet_gradient_map(unet: UNet, timesteps: Sequence[int], samples: int, seed: int = 0,
                      size: int | None = None, progress: bool = False) -> np.ndarray:
    """The ERF map of ``unet``: ``samples`` standard-normal inputs [size x size] (and random
    conditioning) per timestep, one input per backward pass (the memory of one, whatever
    ``samples``; a bar over the passes with ``progress``)."""
    cfg = unet.config
    generator = torch.Generator().manual_seed(seed)
    maps = []
    with tqdm(total=len(timesteps) * samples, disable=not progress, unit="input", leave=False,
              desc="effective receptive field") as bar:
        for t in timesteps:
            x, t_batch, cond = example_inputs(cfg, samples, generator=generator, size=size,
                                              timesteps=torch.full((samples,), int(t), dtype=torch.long))
            for i in range(samples):
                one = None if cond is None else cond[i:i + 1]
                maps.append(gradient_map(lambda inp: unet(inp, t_batch[i:i + 1], one), x[i:i + 1]))
                bar.update()
    return np.mean(maps, axis=0)


#: the largest ERF input, in sample sizes: 4x keeps a 32x32 model's borders well away, and its
#: attention maps ((4 * 16)^2)^2 floats each, 64 MiB, within a laptop's memory
MAX_ERF_SCALE = 4


def check_erf_size(cfg: UNetConfig, size: int | None) -> int:
    """The ERF input size (``size`` or the sample size); BadInputError when the model cannot run at it."""
    s = size or cfg.sample_size
    if s > MAX_ERF_SCALE * cfg.sample_size:  # attention's memory grows with the 4th power of the size
        raise BadInputError(f"--erf-size {s}: at most {MAX_ERF_SCALE}x the sample size, "
                            f"{MAX_ERF_SCALE * cfg.sample_size} for this model")
    factor = 2 ** (len(cfg.channel_mult) - 1)
    if s % factor:
        raise BadInputError(f"--erf-size {s}: the ERF input size must be divisible by 2**(levels-1) = {factor}")
    if s != cfg.sample_size and cfg.positional_encoding != "none":
        raise BadInputError(f"--erf-size {s}: this model's {cfg.positional_encoding!r} position codes "
                            f"are fixed to its sample size {cfg.sample_size}")
    try:  # the config's checks at that size: a 1x1 last level whose norm groups hold one value crashed the pass
        dataclasses.replace(cfg, sample_size=s,
                            attention_resolutions=tuple(r * s // cfg.sample_size for r in cfg.attention_resolutions))
    except ConfigError as e:
        raise BadInputError(f"--erf-size {s}: the model cannot run at this size ({e})") from e
    return s


def measure_erf(unet: UNet, theoretical_rf: float, *, timesteps: Sequence[int] | None = None,
                samples: int = 2, seed: int = 0, size: int | None = None, progress: bool = False) -> ErfResult:
    """The ERF of ``unet`` (in eval mode) against its theoretical RF, on inputs of ``size`` x
    ``size`` (default: the model's sample size; a larger one moves the image borders away, so the
    ERF is limited by the network, not the image; models with position codes need their own size)."""
    cfg = unet.config
    s = check_erf_size(cfg, size)
    unet.eval()
    steps = list(timesteps) if timesteps is not None else default_timesteps(cfg.num_train_timesteps)
    grad_map = unet_gradient_map(unet, steps, samples, seed, size=s, progress=progress)
    centre = (s // 2, s // 2)
    return ErfResult(grad_map, centre, erf_radius(grad_map, centre), theoretical_rf)
