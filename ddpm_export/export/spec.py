"""ExportSpec: one description of a model's graph interface (torch-free).

The single source for input/output names, dtypes, dynamic axes, min/opt/max shapes and sample
inputs: it feeds the ONNX export (names, dynamic axes), validation (batches to run), TensorRT
optimisation profiles, and the runtime's input checks. It is stored in the ONNX metadata.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from ddpm_export.config import UNetConfig
from ddpm_export.configbase import FrozenConfig, check
from ddpm_export.errors import BadInputError

X_NAME, T_NAME, CLASS_NAME, CONTEXT_NAME, OUT_NAME = "x_t", "t", "class_labels", "context", "model_output"


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
                   cond_kind=cfg.cond_kind,
                   num_class_rows=cfg.num_class_rows if cfg.num_classes is not None else 0,
                   num_train_timesteps=cfg.num_train_timesteps, context_dim=cfg.context_dim or 0,
                   min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch)

    def validate(self) -> None:
        check(1 <= self.min_batch <= self.opt_batch <= self.max_batch, "min_batch/opt_batch/max_batch",
              f"need 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/{self.max_batch}")
        check(1 <= self.min_context <= self.opt_context <= self.max_context, "min_context/opt_context/max_context",
              f"need 1 <= min <= opt <= max, got {self.min_context}/{self.opt_context}/{self.max_context}")
        check((self.cond_kind == "class") == (self.num_class_rows > 0), "num_class_rows",
              "must be > 0 exactly when cond_kind is 'class'")
        check((self.cond_kind == "context") == (self.context_dim > 0), "context_dim",
              "must be > 0 exactly when cond_kind is 'context'")

    # --- names and axes ----------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        cond = {"none": [], "class": [CLASS_NAME], "context": [CONTEXT_NAME]}[self.cond_kind]
        return [X_NAME, T_NAME, *cond]

    @property
    def output_names(self) -> list[str]:
        return [OUT_NAME]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {name: {0: "batch"} for name in self.input_names + self.output_names}
        if self.cond_kind == "context":
            axes[CONTEXT_NAME] = {0: "batch", 1: "context_length"}
        return axes

    def input_shapes(self, batch: int, context_length: int | None = None) -> dict[str, tuple[int, ...]]:
        s = self.sample_size
        shapes: dict[str, tuple[int, ...]] = {X_NAME: (batch, self.in_channels, s, s), T_NAME: (batch,)}
        if self.cond_kind == "class":
            shapes[CLASS_NAME] = (batch,)
        elif self.cond_kind == "context":
            shapes[CONTEXT_NAME] = (batch, context_length or self.opt_context, self.context_dim)
        return shapes

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
        if self.cond_kind == "class":
            feeds[CLASS_NAME] = rng.integers(0, self.num_class_rows, size=batch, dtype=np.int64)
        elif self.cond_kind == "context":
            feeds[CONTEXT_NAME] = rng.standard_normal(shapes[CONTEXT_NAME], dtype=np.float32)
        return feeds

    # --- runtime checks ----------------------------------------------------------------
    def check_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Raise ValueError naming the input when a name, dtype, shape, batch or value is off."""
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
        length = feeds[CONTEXT_NAME].shape[1] if self.cond_kind == "context" and feeds[CONTEXT_NAME].ndim == 3 else None
        want = self.input_shapes(batch, length)
        dtypes = {X_NAME: np.float32, T_NAME: np.int64, CLASS_NAME: np.int64, CONTEXT_NAME: np.float32}
        for name in self.input_names:
            arr = feeds[name]
            if arr.dtype != dtypes[name]:
                raise BadInputError(f"{name}: dtype {arr.dtype}, expected {np.dtype(dtypes[name]).name}")
            if tuple(arr.shape) != want[name]:
                raise BadInputError(f"{name}: shape {tuple(arr.shape)}, expected {want[name]}")
        if length is not None and not self.min_context <= length <= self.max_context:
            raise BadInputError(f"{CONTEXT_NAME}: length {length} is outside [{self.min_context}, {self.max_context}]")
        t = feeds[T_NAME]
        if t.size and (t.min() < 0 or t.max() >= self.num_train_timesteps):
            raise BadInputError(f"{T_NAME}: values must be in [0, {self.num_train_timesteps}), got [{t.min()}, {t.max()}]")
        if self.cond_kind == "class":
            c = feeds[CLASS_NAME]
            if c.size and (c.min() < 0 or c.max() >= self.num_class_rows):
                raise BadInputError(f"{CLASS_NAME}: ids must be in [0, {self.num_class_rows}), got [{c.min()}, {c.max()}]")


def feeds_for(spec: ExportSpec, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> dict[str, np.ndarray]:
    """Name the Backend arguments as the graph does, refusing a ``cond`` the model cannot take."""
    feeds = {X_NAME: x_t, T_NAME: t}
    if spec.cond_kind == "none":
        if cond is not None:
            raise BadInputError("cond: this model is unconditional; pass cond=None")
    elif cond is None:
        what = "class ids [B] int64" if spec.cond_kind == "class" else "a context [B, L, D] float32"
        raise BadInputError(f"cond: this model is conditioned on {spec.cond_kind}; pass {what}")
    else:
        feeds[CLASS_NAME if spec.cond_kind == "class" else CONTEXT_NAME] = cond
    for name, value in feeds.items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array, got {type(value).__name__}")
    return feeds
