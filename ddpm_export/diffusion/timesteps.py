"""Which of the T trained timesteps a sampler with N inference steps visits, and in what order.

Table 2 of Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
names the spacings; all three reproduce diffusers' ``set_timesteps`` exactly.

The multistep solvers (DPM-Solver, UniPC) step to a final noise level *after* the last visited
timestep, so diffusers spaces their ``n`` timesteps over ``n + 1`` intervals and drops the one at
0 (:func:`solver_timesteps`); DDPM and DDIM visit t = 0 themselves (:func:`spaced_timesteps`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ddpm_export.checks import Registry, check_steps
from ddpm_export.errors import BadInputError

TimestepSpacing = Literal["leading", "trailing", "linspace"]

__all__ = ["TimestepSpacing", "previous_timesteps", "solver_timesteps", "spaced_timesteps"]


def _leading(T: int, n: int) -> np.ndarray:
    # t_i = i * (T // n), i = n-1 .. 0: ends at 0, starts below T-1 unless n = T.
    return (np.arange(n, dtype=np.int64) * (T // n))[::-1]


def _trailing(T: int, n: int) -> np.ndarray:
    # t = round(T - i * T / n) - 1, i = 0 .. n-1: starts at T-1. Built with np.arange as diffusers
    # does, because arange's own rounding decides ties (T=1000, n=48: 937.4999.. -> 936, not 937).
    # For some n (61, 103, ... at T = 1000) that arange has an extra (n+1)-th value, which diffusers
    # keeps as a timestep of -1; we keep the first n.
    return np.round(np.arange(T, 0, -T / n)[:n]).astype(np.int64) - 1


def _linspace(T: int, n: int) -> np.ndarray:
    # t = round(linspace(0, T-1, n)), descending: first T-1, last 0.
    return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)


_SPACINGS = Registry("timestep_spacing", {"leading": _leading, "trailing": _trailing, "linspace": _linspace})


def spaced_timesteps(T: int, n: int, spacing: TimestepSpacing, steps_offset: int = 0) -> np.ndarray:
    """The ``n`` timesteps a sampler visits, descending: ``[n]`` int64, values in ``[0, T)``.

    - ``leading``: ``t = i * (T // n) + steps_offset`` for ``i = n-1 .. 0`` (DDIM paper, diffusers'
      default; T=1000, n=50 gives 980, 960, ..., 0).
    - ``trailing``: ``t = round(T - i * T / n) - 1`` for ``i = 0 .. n-1`` (999, 979, ..., 19).
      ``steps_offset`` must be 0.
    - ``linspace``: ``round(linspace(0, T - 1, n))`` descending (999, 979, ..., 0). ``steps_offset``
      must be 0.

    Raises ValueError when ``n`` is outside ``[1, T]``, the spacing is unknown, or the offset
    pushes a timestep past ``T - 1``.
    """
    timesteps = _checked(T, n, spacing, steps_offset)(T, n) + steps_offset
    _check_first(timesteps, T, n, steps_offset)
    return timesteps


def _checked(T: int, n: int, spacing: str, steps_offset: int):  # type: ignore[no-untyped-def]
    """The spacing function, after checking ``n`` and the offset."""
    make = _SPACINGS[spacing]
    check_steps(n, T, "num_inference_steps")
    if steps_offset != 0 and spacing != "leading":
        raise BadInputError(f"steps_offset={steps_offset} only applies to leading spacing")
    return make


def _check_first(timesteps: np.ndarray, T: int, n: int, steps_offset: int) -> None:
    if timesteps[0] >= T:
        raise BadInputError(
            f"steps_offset={steps_offset} puts the first of {n} leading-spaced timesteps at "
            f"{timesteps[0]}, past the last trained timestep {T - 1}"
        )


def solver_timesteps(T: int, n: int, spacing: TimestepSpacing, steps_offset: int = 0) -> np.ndarray:
    """The ``n`` timesteps a multistep solver visits, descending: ``[n]`` int64, values in ``[0, T)``.

    diffusers' ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler.set_timesteps``: the
    solver lands on a final noise level after the last of these, so it does not visit t = 0.

    - ``leading``: ``t = i * (T // (n + 1)) + steps_offset`` for ``i = n .. 1`` (T=1000, n=10:
      900, 810, ..., 90). Needs ``n < T``.
    - ``trailing``: as :func:`spaced_timesteps` (999, 899, ..., 99 for n = 10).
    - ``linspace``: ``round(linspace(0, T - 1, n + 1))`` descending without its last value 0
      (999, 899, ..., 100 for n = 10).
    """
    make = _checked(T, n, spacing, steps_offset)
    if spacing == "trailing":
        timesteps = make(T, n)
    else:  # leading / linspace over n + 1 intervals, without their last value 0
        if spacing == "leading" and n + 1 > T:
            raise BadInputError(f"leading spacing of a multistep solver needs num_inference_steps < "
                                f"num_train_timesteps={T}, got {n}")
        timesteps = make(T, n + 1)[:-1] + steps_offset
    _check_first(timesteps, T, n, steps_offset)
    return np.ascontiguousarray(timesteps)


def previous_timesteps(timesteps: np.ndarray) -> dict[int, int]:
    """Map each visited timestep to the next one visited (its "previous" in the chain), -1 last.

    diffusers' DDPMScheduler does the same. Its DDIMScheduler instead uses ``t - T // n``, which
    agrees with this for leading spacing (but its last step when ``steps_offset >= T // n``) and for
    trailing spacing when ``n`` divides ``T``, but not
    for linspace spacing nor for trailing with ``T % n != 0``: there diffusers steps to a
    timestep it then does not resume from, and its DDIM samples differ from ours
    (docs/conventions.md, "DDIM step")."""
    values = [int(t) for t in timesteps]
    return dict(zip(values, values[1:] + [-1]))
