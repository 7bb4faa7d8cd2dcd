"""ExportSpec: one description of a model's graph interface (torch-free).

The single source for input/output names, dtypes, dynamic axes, min/opt/max shapes and sample
inputs: it feeds the ONNX export (names, dynamic axes), validation (batches to run), TensorRT
optimisation profiles, and the runtime's input checks. It is stored in the ONNX metadata
(``ddpm_export.export_spec``, see docs/metadata.md). What depends on the conditioning kind is
asked of :attr:`ExportSpec.conditioning` (:mod:`ddpm_export.contract.conditioning`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from ddpm_export.config import UNetConfig
from ddpm_export.configbase import ConfigError, FrozenConfig, check
from ddpm_export.contract.conditioning import CLASS_NAME, CONDITIONINGS, CONTEXT_NAME, Conditioning
from ddpm_export.errors import BadInputError, WrongTypeError

__all__ = ["CLASS_NAME", "CONTEXT_NAME", "DEFAULT_OPT_BATCH", "MAX_BATCH", "OUT_NAME", "T_NAME", "X_NAME", "ExportSpec",
           "batch_range", "feeds_for"]

X_NAME, T_NAME, OUT_NAME = "x_t", "t", "model_output"
#: The largest batch a graph may be exported for (it is traced, validated and profiled at it).
MAX_BATCH = 4096
#: the batch TensorRT optimises for when none is given, brought into the exported batch range
DEFAULT_OPT_BATCH = 4
_DTYPES = {X_NAME: "float32", T_NAME: "int64"}


@dataclasses.dataclass(frozen=True)
class ExportSpec(FrozenConfig):
    """Inputs ``x_t [B, C, H, W] float32``, ``t [B] int64`` and, for conditional models,
    ``class_labels [B] int64`` or ``context [B, L, D] float32``; output ``model_output
    [B, C_out, H, W] float32``. B is dynamic in [min_batch, max_batch]; L in [min_context, max_context]."""

    version: int = 1
    in_channels: int = 3
    out_channels: int = 3
    sample_size: int = 32
    cond_kind: Literal["none", "class", "context"] = "none"
    num_class_rows: int = 0          # valid class ids are [0, num_class_rows)
    num_train_timesteps: int = 1000  # valid t is [0, T)
    context_dim: int = 0
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 16
    min_context: int = 1
    opt_context: int = 8
    max_context: int = 77

    @classmethod
    def from_config(cls, cfg: UNetConfig, *, min_batch: int = 1, opt_batch: int = 4,
                    max_batch: int = 16) -> "ExportSpec":
        return cls(in_channels=cfg.in_channels, out_channels=cfg.out_channels, sample_size=cfg.sample_size,
                   cond_kind=cfg.cond_kind, **CONDITIONINGS[cfg.cond_kind].spec_fields(cfg),
                   num_train_timesteps=cfg.num_train_timesteps,
                   min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch)

    def validate(self) -> None:
        check(1 <= self.min_batch <= self.opt_batch <= self.max_batch, "min_batch/opt_batch/max_batch",
              f"need 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/{self.max_batch}")
        check(self.max_batch <= MAX_BATCH, "max_batch",
              f"{self.max_batch} is more than {MAX_BATCH} (a graph is exported, validated and profiled at it)")
        check(1 <= self.min_context <= self.opt_context <= self.max_context, "min_context/opt_context/max_context",
              f"need 1 <= min <= opt <= max, got {self.min_context}/{self.opt_context}/{self.max_context}")
        for kind in CONDITIONINGS.values():
            if kind.size_field is not None:
                check((kind is self.conditioning) == (getattr(self, kind.size_field) > 0), kind.size_field,
                      f"must be > 0 exactly when cond_kind is {kind.kind!r}")

    @property
    def conditioning(self) -> Conditioning:
        """The descriptor of ``cond_kind``."""
        return CONDITIONINGS[self.cond_kind]

    # --- names and axes ----------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [X_NAME, T_NAME, *self.conditioning.input_names()]

    @property
    def output_names(self) -> list[str]:
        return [OUT_NAME]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {name: {0: "batch"} for name in self.input_names + self.output_names}
        return {**axes, **self.conditioning.dynamic_axes()}

    def input_shapes(self, batch: int, context_length: int | None = None) -> dict[str, tuple[int, ...]]:
        s = self.sample_size
        shapes: dict[str, tuple[int, ...]] = {X_NAME: (batch, self.in_channels, s, s), T_NAME: (batch,)}
        return {**shapes, **self.conditioning.shape(self, batch, context_length)}

    def input_dtypes(self) -> dict[str, str]:
        """Input name -> numpy dtype name."""
        cond = self.conditioning
        return {**_DTYPES, **({cond.input_name: cond.dtype} if cond.input_name else {})}

    def output_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.out_channels, self.sample_size, self.sample_size)

    def profiles(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: input name -> (min, opt, max) shapes."""
        lo = self.input_shapes(self.min_batch, self.min_context)
        mid = self.input_shapes(self.opt_batch, self.opt_context)
        hi = self.input_shapes(self.max_batch, self.max_context)
        return {name: (lo[name], mid[name], hi[name]) for name in self.input_names}

    def validation_batches(self) -> list[int]:
        """min, opt, max and one interior batch (sorted, distinct)."""
        interior = (self.min_batch + self.max_batch) // 2
        if interior in (self.min_batch, self.opt_batch, self.max_batch) and self.max_batch - self.min_batch > 2:
            interior += 1
        return sorted({self.min_batch, self.opt_batch, self.max_batch, interior})

    def sample_inputs(self, batch: int, seed: int = 0, context_length: int | None = None) -> dict[str, np.ndarray]:
        """Random valid inputs: x_t ~ N(0, 1), t spread over [0, T), class ids over every row."""
        rng = np.random.Generator(np.random.PCG64(seed))
        shapes = self.input_shapes(batch, context_length)
        feeds = {X_NAME: rng.standard_normal(shapes[X_NAME], dtype=np.float32),
                 T_NAME: rng.integers(0, self.num_train_timesteps, size=batch, dtype=np.int64)}
        return {**feeds, **self.conditioning.sample(rng, self, batch, context_length)}

    # --- runtime checks ----------------------------------------------------------------
    def check_samplable(self, source: str, error: type[BadInputError] = BadInputError) -> None:
        """Refuse (``error``, naming ``source``) a model whose output is not one prediction per
        input channel: the samplers cannot run it (Pipeline, verify, a Triton repository)."""
        if self.out_channels != self.in_channels:
            raise error(f"{source}: the model outputs {self.out_channels} channels for {self.in_channels} input "
                        f"channels; the samplers read one prediction per input channel (learned-variance outputs "
                        f"are not supported)")

    def check_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Raise BadInputError naming the input when a name, dtype, shape, batch or value is off."""
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise BadInputError(f"inputs must be exactly {self.input_names}; missing {missing}, unexpected {extra}")
        x = feeds[X_NAME]
        if x.ndim != 4:
            raise BadInputError(f"{X_NAME}: shape {tuple(x.shape)}, expected (batch, {self.in_channels}, "
                                f"{self.sample_size}, {self.sample_size})")
        batch = x.shape[0]
        if not self.min_batch <= batch <= self.max_batch:
            raise BadInputError(f"{X_NAME}: batch {batch} is outside the exported range "
                                f"[{self.min_batch}, {self.max_batch}]; re-export with --min-batch/--max-batch")
        want = self.input_shapes(batch, self.conditioning.length(feeds))
        for name, dtype in self.input_dtypes().items():
            arr = feeds[name]
            if arr.dtype != dtype:
                raise BadInputError(f"{name}: dtype {arr.dtype}, expected {dtype}")
            if tuple(arr.shape) != want[name]:
                raise BadInputError(f"{name}: shape {tuple(arr.shape)}, expected {want[name]}")
        t = feeds[T_NAME]
        if t.size and (t.min() < 0 or t.max() >= self.num_train_timesteps):
            raise BadInputError(f"{T_NAME}: values must be in [0, {self.num_train_timesteps}), "
                                f"got [{t.min()}, {t.max()}]")
        self.conditioning.check_values(self, feeds)


def batch_range(min_batch: int = 1, opt_batch: int | None = None, max_batch: int = 16) -> tuple[int, int, int]:
    """An export's (min, opt, max) batch, ``opt_batch`` None being :data:`DEFAULT_OPT_BATCH` brought
    into ``[min_batch, max_batch]``; ConfigError (ExportSpec's) when they are out of order or too large,
    or no int (named before a default opt batch is derived from them)."""
    for name, value in (("min_batch", min_batch), ("max_batch", max_batch)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} has the wrong type; expected int")
    opt = min(max(DEFAULT_OPT_BATCH, min_batch), max_batch) if opt_batch is None else opt_batch
    ExportSpec(min_batch=min_batch, opt_batch=opt, max_batch=max_batch)  # validates the range
    return min_batch, opt, max_batch


def feeds_for(spec: ExportSpec, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> dict[str, np.ndarray]:
    """Name the Backend arguments as the graph does, refusing a ``cond`` the model cannot take."""
    spec.conditioning.check_given(cond, spec.context_dim or None)
    feeds = {X_NAME: x_t, T_NAME: t, **dict(zip(spec.conditioning.input_names(), [cond]))}
    for name, value in feeds.items():
        if not isinstance(value, np.ndarray):
            raise WrongTypeError(f"{name}: expected a numpy array, got {type(value).__name__}")
    return feeds
