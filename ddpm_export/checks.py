"""Argument checks shared by the sampling loop, the runtime and verification, each written once
(numpy only, torch-free). Every check raises :class:`~ddpm_export.errors.BadInputError` naming
the argument, and returns the value in its canonical type."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, TypeVar

import numpy as np

from ddpm_export.errors import BadInputError, WrongTypeError

if TYPE_CHECKING:  # pragma: no cover
    from ddpm_export.config import UNetConfig

__all__ = ["Registry", "check_exported_from", "check_fits_in_memory", "check_guidance_scale", "check_int",
           "check_seed", "check_steps", "check_x_T", "chunk_size", "is_int", "physical_memory"]

V = TypeVar("V")


def is_int(value: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: Any, low: int, high: int | None, what: str) -> int:
    """``value`` as an int in ``[low, high]`` (``high`` None: unbounded): WrongTypeError (also a
    TypeError) when it is no int (a bool, a float, a str), BadInputError when it is out of range;
    both say ``name`` must be ``what``."""
    if not is_int(value):
        raise WrongTypeError(f"{name} must be {what}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise BadInputError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_seed(seed: Any) -> int:
    """A noise seed: an int >= 0."""
    return check_int("seed", seed, 0, None, "a non-negative int")


def check_steps(steps: Any, num_train_timesteps: int, name: str = "steps") -> int:
    """A number of inference steps: an int in ``[1, T]``."""
    T = num_train_timesteps
    return check_int(name, steps, 1, T, f"an int in [1, {T}] (the model's num_train_timesteps)")


#: the largest |guidance scale| accepted: classifier-free guidance is used at 1-20; at 1e38 the
#: guided prediction ``uncond + s * (cond - uncond)`` overflowed float32 into NaN
MAX_GUIDANCE_SCALE = 1000.0
#: the largest |value| of an explicit start ``x_T``: it is standard normal noise (|x| < 7 in 10**11
#: draws); 3e38 overflowed the first step
MAX_X_T = 1000.0


def check_guidance_scale(scale: Any) -> float:
    """A classifier-free guidance scale: a finite float with ``|scale| <= MAX_GUIDANCE_SCALE``, so
    the guided output stays finite in float32 (1.0 means no guidance)."""
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise WrongTypeError(f"guidance_scale must be a finite float, got {scale!r}")
    if not is_int(scale) and not math.isfinite(scale):
        raise BadInputError(f"guidance_scale must be a finite float, got {scale!r}")
    if abs(scale) > MAX_GUIDANCE_SCALE:  # compared before float(): 10**400 is an int float() cannot hold
        raise BadInputError(f"guidance_scale={scale!r} is out of range: |scale| <= {MAX_GUIDANCE_SCALE:g} (classifier-"
                            f"free guidance is used at 1-20; far larger scales overflow float32)")
    return float(scale)


def check_x_T(x_T: Any, shape: tuple[int, ...]) -> np.ndarray:
    """An explicit start of sampling: a finite float32 numpy array of ``shape``."""
    if not isinstance(x_T, np.ndarray):
        raise WrongTypeError(f"x_T must be a numpy array, got {type(x_T).__name__}")
    if x_T.dtype != np.float32 or x_T.shape != tuple(shape):
        raise BadInputError(f"x_T must be float32 of shape {tuple(shape)}, got {x_T.dtype} {x_T.shape}")
    if not np.all(np.isfinite(x_T)):
        raise BadInputError("x_T must be finite")
    if x_T.size and float(np.abs(x_T).max()) > MAX_X_T:
        raise BadInputError(f"x_T holds {float(np.abs(x_T).max()):.3g}; its values must be within +-{MAX_X_T:g} "
                            f"(it is the start noise, standard normal)")
    return x_T


def physical_memory() -> int:
    """This machine's physical memory in bytes (``os.sysconf``; 1 TiB when it cannot tell)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def check_fits_in_memory(name: str, count: int, bytes_each: int, what: str) -> None:
    """Refuse ``count`` items of ``bytes_each`` bytes (``what`` says which) when together they
    exceed this machine's physical memory: before any allocation, naming the argument ``name``."""
    need, have = count * bytes_each, physical_memory()
    if need > have:
        raise BadInputError(f"{name}={count}: {what} would need {need / 2**30:,.1f} GiB, more than this machine's "
                            f"{have / 2**30:,.1f} GiB of memory; ask for fewer")


def chunk_size(max_batch: int, guided: bool) -> int:
    """Images per model call: ``max_batch``, or ``max_batch // 2`` with guidance (the conditional
    and unconditional halves run as one doubled batch)."""
    return max_batch // (2 if guided else 1)


class Registry(Mapping[str, V]):
    """Named choices of one switch: ``registry[name]`` raises BadInputError listing the choices.

    ``Registry("sampler", {"ddim": DDIMScheduler, ...})``; ``registry.names`` gives the choices
    (for click's ``Choice``) in their declared order.
    """

    def __init__(self, field: str, entries: Mapping[str, V] | Iterable[tuple[str, V]]) -> None:
        self.field = field
        self._entries = dict(entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> V:
        """The entry of ``name``: WrongTypeError (also a TypeError) for no str, BadInputError for
        another name; both list the choices."""
        if not isinstance(name, str) or name not in self._entries:
            error = BadInputError if isinstance(name, str) else WrongTypeError
            raise error(f"{self.field}={name!r} is not valid; choose one of: "
                        f"{', '.join(repr(n) for n in self._entries)}")
        return self._entries[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def check_exported_from(file_config: UNetConfig, model_config: UNetConfig, onnx: str | Path, model: str | Path,
                        error: type[BadInputError] = BadInputError) -> None:
    """Refuse an ONNX file whose recorded UNet config (``file_config``) is not ``model``'s
    (``model_config``), naming every field that differs."""
    if file_config == model_config:
        return
    a, b = file_config.to_dict(), model_config.to_dict()
    fields = file_config.differences(model_config)
    raise error(f"{onnx} was not exported from {model}: their UNet configs differ in "
                f"{', '.join(f'{k} ({a[k]!r} in the file, {b.get(k)!r} in the model)' for k in fields)}; "
                f"pass the model it was exported from, or re-export it")
