"""The sampling loop over any backend, with the project's noise convention and guidance.

Noise (docs/conventions.md): one ``numpy.random.Generator(numpy.random.PCG64(seed))`` per call,
``standard_normal(shape, dtype=float32)`` drawn in a fixed order:

1. ``x_T`` -- drawn even when an explicit ``x_T`` is passed (and then discarded), so the step
   noise of a run never depends on whether its start was given;
2. one array per step, in step order, whether or not the step uses it (DDIM with eta = 0,
   DDPM's last step and the ODE solvers do not), so DDPM, DDIM at every eta and the SDE solver
   (``sde-dpm-solver++``) see the same noise stream.

PyTorch, ONNX Runtime and TensorRT backends all run through :func:`sample` and therefore
consume identical noise; their trajectories can be compared step by step (record them with
``callback``).
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
# Imported here, not lazily at the first ``np.random`` (numpy 2 loads it on first use): that first
# import runs numpy.random's Cython module set-up, which drops a KeyboardInterrupt raised inside it,
# and it ran at the first sampling step -- a Ctrl-C just after the progress bar appeared was lost.
from numpy.random import PCG64, Generator

from ddpm_export.checks import check_guidance_scale, check_seed, check_x_T
from ddpm_export.diffusion.scheduler import Scheduler
from ddpm_export.errors import BadInputError, WrongTypeError

__all__ = ["Backend", "StepCallback", "guided_output", "noise_generator", "sample"]


class Backend(Protocol):
    """A denoising network behind any inference engine.

    ``backend(x_t, t, cond)`` with ``x_t`` ``[B, C, H, W]`` float32, ``t`` ``[B]`` int64 and
    ``cond`` ``None``, class ids ``[B]`` int64 or a context ``[B, L, D]`` float32, returns the
    model output ``[B, C, H, W]`` float32 (read by the scheduler per its ``prediction_type``).
    The returned array must be the caller's to keep: a backend with a reused output buffer
    (IOBinding, TensorRT host buffers) returns a copy, so recorded trajectories stay intact.
    """

    def __call__(self, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray: ...


#: ``callback(i, t, x_t, model_output)`` before step ``i`` (0-based) at timestep ``t``:
#: ``x_t`` is the step's input and ``model_output`` the (guided) output, both ``[B, C, H, W]``
#: float32. The loop never writes into arrays it has handed out, so they can be kept as is.
StepCallback = Callable[[int, int, np.ndarray, np.ndarray], None]


def noise_generator(seed: int) -> Generator:
    """``numpy.random.Generator(numpy.random.PCG64(seed))``, the only noise source of sampling."""
    return Generator(PCG64(check_seed(seed)))


def guided_output(cond_out: np.ndarray, uncond_out: np.ndarray, guidance_scale: float) -> np.ndarray:
    """Classifier-free guidance (Ho & Salimans 2022): ``uncond + s * (cond - uncond)``, float32."""
    return (uncond_out + np.float32(guidance_scale) * (cond_out - uncond_out)).astype(np.float32)


def sample(
    backend: Backend,
    scheduler: Scheduler,
    shape: tuple[int, int, int, int],
    *,
    seed: int,
    cond: np.ndarray | None = None,
    null_cond: np.ndarray | None = None,
    guidance_scale: float = 1.0,
    x_T: np.ndarray | None = None,
    callback: StepCallback | None = None,
) -> np.ndarray:
    """Run the reverse process from ``x_T`` over ``scheduler.timesteps``; returns ``x_0``.

    Args:
        backend: the network, see :class:`Backend`.
        scheduler: any :class:`Scheduler`, already ``set_timesteps``; ``reset()`` here (a solver's
            history), so it serves one run at a time (Pipeline builds one per call).
        shape: ``(B, C, H, W)`` of the samples.
        seed: seeds the PCG64 generator of all noise (see the module doc for the draw order).
        cond: conditioning for the backend, batch size B (class ids ``[B]`` or context ``[B, L, D]``).
        null_cond: the "no condition" input (e.g. the null class id), same shape and dtype as
            ``cond``. With ``guidance_scale != 1`` each step runs the backend once on the doubled
            batch ``[cond; null_cond]`` and combines ``uncond + s * (cond - uncond)``. At
            ``guidance_scale == 1`` that combination is the conditional output, so the
            unconditional half is not computed.
        guidance_scale: ``s``; 1 means no guidance.
        x_T: an explicit start ``[B, C, H, W]`` float32. The generator still draws (and discards)
            its own ``x_T`` first, so the step noise is the same as without it.
        callback: called before every step, see :data:`StepCallback`.

    Returns:
        ``[B, C, H, W]`` float32, clipped to ``[-1, 1]``.
    """
    shape = _check_shape(shape)
    guided = _check_guidance(shape[0], cond, null_cond, guidance_scale)
    rng = noise_generator(seed)
    scheduler.reset()
    drawn_x_T = rng.standard_normal(shape, dtype=np.float32)
    x = drawn_x_T if x_T is None else check_x_T(x_T, shape)

    for i, t in enumerate(scheduler.timesteps):
        t = int(t)
        if guided:
            assert cond is not None and null_cond is not None  # checked by _check_guidance
            both = _call(
                backend,
                np.concatenate([x, x]),
                np.full(2 * shape[0], t, dtype=np.int64),
                np.concatenate([cond, null_cond]),
                (2 * shape[0],) + shape[1:],
            )
            model_output = guided_output(both[: shape[0]], both[shape[0]:], guidance_scale)
        else:
            model_output = _call(backend, x, np.full(shape[0], t, dtype=np.int64), cond, shape)
        noise = rng.standard_normal(shape, dtype=np.float32)
        if callback is not None:
            callback(i, t, x, model_output)
        x = scheduler.step(model_output, t, x, noise)
    return np.clip(x, -1.0, 1.0)


def _call(
    backend: Backend, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None, expected: tuple[int, ...]
) -> np.ndarray:
    out = backend(x, t, cond)
    if not isinstance(out, np.ndarray):
        raise WrongTypeError(f"backend must return a numpy array, got {type(out).__name__}")
    if out.dtype != np.float32 or out.shape != expected:
        raise BadInputError(
            f"backend must return float32 of shape {expected}; got {out.dtype} {out.shape}"
        )
    return out


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
        raise BadInputError(f"shape must be (B, C, H, W) with every size >= 1, got {shape}")
    return tuple(int(d) for d in shape)  # type: ignore[return-value]


def _check_guidance(
    batch: int, cond: np.ndarray | None, null_cond: np.ndarray | None, guidance_scale: float
) -> bool:
    """Validate the conditioning arguments; True when steps run the doubled (guided) batch."""
    check_guidance_scale(guidance_scale)
    for name, value in (("cond", cond), ("null_cond", null_cond)):
        if value is not None and not isinstance(value, np.ndarray):  # a list: the wrong type, as x_T's
            raise WrongTypeError(f"{name} must be a numpy array or None, got {type(value).__name__}")
    if cond is not None and (cond.ndim == 0 or cond.shape[0] != batch):
        raise BadInputError(f"cond must have batch size {batch} (shape[0]), got shape {cond.shape}")
    if null_cond is not None:
        if cond is None:
            raise BadInputError("null_cond needs cond: guidance contrasts cond with null_cond")
        if null_cond.shape != cond.shape or null_cond.dtype != cond.dtype:
            raise BadInputError(
                f"null_cond must match cond: got {null_cond.dtype} {null_cond.shape}, "
                f"cond is {cond.dtype} {cond.shape}"
            )
    if guidance_scale != 1.0 and null_cond is None:
        raise BadInputError(
            f"guidance_scale={guidance_scale} needs cond and null_cond (the unconditional input, "
            "e.g. the null class id); pass guidance_scale=1.0 to sample without guidance"
        )
    return guidance_scale != 1.0
