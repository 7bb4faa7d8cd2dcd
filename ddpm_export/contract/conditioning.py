"""What a model is conditioned on, as one descriptor per kind (torch-free).

Three kinds exist: ``none`` (unconditional), ``class`` (class ids ``[B] int64``, with an optional
null id ``num_classes`` for classifier-free guidance) and ``context`` (a cross-attention context
``[B, L, D] float32``). Everything that differs between them -- the graph input's name, dtype and
shape, how sample inputs are drawn, which values are valid, the default and null inputs of a
sampling call, and the message for a missing or unexpected input -- lives in the descriptor, so
the rest of the package asks ``spec.conditioning`` instead of branching on the kind's name.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_export.checks import Registry, is_int
from ddpm_export.errors import BadInputError, WrongTypeError

if TYPE_CHECKING:  # pragma: no cover
    from ddpm_export.config import UNetConfig
    from ddpm_export.contract.info import ModelInfo
    from ddpm_export.contract.spec import ExportSpec

__all__ = ["CLASS", "CLASS_NAME", "CONDITIONINGS", "CONTEXT", "CONTEXT_NAME", "NONE", "ClassLabels", "Conditioning",
           "Context"]

CLASS_NAME, CONTEXT_NAME = "class_labels", "context"


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """The unconditional kind; :class:`ClassLabels` and :class:`Context` override what differs.

    Attributes:
        kind: the name stored in configs and metadata (``ExportSpec.cond_kind``).
        input_name: the graph input (None: no input).
        dtype: its numpy dtype name.
        adjective: how messages describe such a model.
        argument: the keyword of ``Pipeline.sample`` that takes the input.
        size_field: the ExportSpec field that is > 0 exactly for this kind.
    """

    kind: str = "none"
    input_name: str | None = None
    dtype: str | None = None
    adjective: str = "unconditional"
    argument: str | None = None
    noun: str = ""
    size_field: str | None = None
    has_default_input: bool = True

    # --- the graph interface ----------------------------------------------------------------
    def input_names(self) -> list[str]:
        return [] if self.input_name is None else [self.input_name]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {}

    def shape(self, spec: ExportSpec, batch: int, length: int | None) -> dict[str, tuple[int, ...]]:
        """``{input_name: shape}`` for ``batch`` (and a context ``length``); empty when no input."""
        return {}

    def length(self, feeds: dict[str, np.ndarray]) -> int | None:
        """The context length of ``feeds`` (None for kinds without one)."""
        return None

    def sample(self, rng: np.random.Generator, spec: ExportSpec, batch: int,
               length: int | None) -> dict[str, np.ndarray]:
        """Random valid inputs of this kind (drawn after ``x_t`` and ``t``)."""
        return {}

    def check_values(self, spec: ExportSpec, feeds: dict[str, np.ndarray]) -> None:
        """Raise BadInputError when a value is outside what the graph accepts."""

    def spec_fields(self, cfg: UNetConfig) -> dict[str, int]:
        """The ExportSpec fields sizing this kind's input, from a UNet config."""
        return {}

    def cross_attention_dim(self, cfg: UNetConfig) -> int | None:
        """Width of the tokens the U-Net's attention blocks cross-attend to (None: none)."""
        return None

    def summary(self, cfg: UNetConfig) -> str:
        return self.adjective

    # --- what callers pass ---------------------------------------------------------------
    def what(self, context_dim: int | None = None) -> str:
        """The input a caller must pass, e.g. ``class ids [B] int64``."""
        return "cond=None"

    def check_given(self, cond: Any, context_dim: int | None = None) -> None:
        """Refuse ``cond`` when it is missing (conditional kinds) or given (``none``)."""
        if self.input_name is None and cond is not None:
            raise BadInputError(f"cond: this model is {self.adjective}; pass cond=None")
        if self.input_name is not None and cond is None:
            raise BadInputError(f"cond: this model is conditioned on {self.kind}; pass {self.what(context_dim)}")

    def require_default_input(self, source: str, tool: str, error: type[Exception] = BadInputError, *,
                              exported: bool = True) -> None:
        """Refuse, before any sampling, a model whose input has no default (a context) in ``tool``
        (e.g. ``the demo``), which has no way to supply one: ``error`` naming Pipeline.sample's
        argument (and ``ddpm-export onnx`` first where ``source`` is not an exported file)."""
        if not self.has_default_input:
            export = "" if exported else "export it with `ddpm-export onnx` and "
            raise error(f"{source}: a {self.adjective} model needs a {self.noun} for every image, which {tool} has no "
                        f"way to supply; {export}sample it from Python with Pipeline.sample(n, {self.argument}=...)")

    def call_input(self, value: Any, n: int, info: ModelInfo) -> np.ndarray | None:
        """The checked ``[n, ...]`` input of a sampling call from the user's ``value`` (default if None)."""
        return None

    def check_inputs(self, rng: np.random.Generator, info: ModelInfo, batch: int) -> list[tuple[str, Any]]:
        """``(label, input)`` pairs that single-step verification runs at ``batch``."""
        return [("none", None)]


@dataclasses.dataclass(frozen=True)
class ClassLabels(Conditioning):
    """Class ids ``[B] int64`` in ``[0, num_class_rows)``; the last row is the null class when present."""

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {CLASS_NAME: {0: "batch"}}

    def shape(self, spec: ExportSpec, batch: int, length: int | None) -> dict[str, tuple[int, ...]]:
        return {CLASS_NAME: (batch,)}

    def sample(self, rng: np.random.Generator, spec: ExportSpec, batch: int,
               length: int | None) -> dict[str, np.ndarray]:
        return {CLASS_NAME: rng.integers(0, spec.num_class_rows, size=batch, dtype=np.int64)}

    def check_values(self, spec: ExportSpec, feeds: dict[str, np.ndarray]) -> None:
        c = feeds[CLASS_NAME]
        if c.size and (c.min() < 0 or c.max() >= spec.num_class_rows):
            raise BadInputError(f"{CLASS_NAME}: ids must be in [0, {spec.num_class_rows}), got [{c.min()}, {c.max()}]")

    def spec_fields(self, cfg: UNetConfig) -> dict[str, int]:
        return {"num_class_rows": cfg.num_class_rows}

    def cross_attention_dim(self, cfg: UNetConfig) -> int | None:
        return 4 * cfg.time_embed_dim if cfg.class_conditioning == "cross_attention" else None

    def summary(self, cfg: UNetConfig) -> str:
        return f"{cfg.num_classes} classes"

    def what(self, context_dim: int | None = None) -> str:
        return "class ids [B] int64"

    def call_input(self, value: Any, n: int, info: ModelInfo) -> np.ndarray | None:
        """``value``: None (image i gets class ``i % num_classes``), one id, or ``n`` ids."""
        num_classes = int(info.num_classes)  # type: ignore[arg-type]
        has_null = info.null_class_id is not None
        if value is None:
            return np.arange(n, dtype=np.int64) % num_classes
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
            value = value.item()  # np.array(3): one id, like np.int64(3)
        if is_int(value):
            # object: any int, checked before the cast
            return self._check_ids(np.full(n, int(value), dtype=object), num_classes, has_null)
        listed = isinstance(value, (list, tuple))
        if listed and any(isinstance(v, (bool, np.bool_)) for v in value):
            raise WrongTypeError(f"classes must be ints, not bools: got {value!r}")
        if listed and all(is_int(v) for v in value):
            arr = np.array([int(v) for v in value], dtype=object)  # ints of any size: numpy makes 2**63 a float
        else:
            arr = np.asarray(value)
            if arr.dtype.kind not in "iu" or arr.ndim != 1:  # a str or float is the wrong type, a 2-D array not
                error = WrongTypeError if arr.dtype.kind not in "iu" else BadInputError
                raise error(f"classes must be an int or a 1-D sequence of ints, got {arr.dtype} with shape {arr.shape}")
        if arr.shape[0] != n:
            raise BadInputError(f"classes must hold n={n} ids, got {arr.shape[0]}")
        return self._check_ids(arr, num_classes, has_null)

    def check_inputs(self, rng: np.random.Generator, info: ModelInfo, batch: int) -> list[tuple[str, Any]]:
        """Classes 0, 1, ... in turn, and the null class when the model has one. At the largest batch
        every class: a batch smaller than ``num_classes`` is called again from id B, 2B, ... (with
        max_batch 4 a file with classes 8 and 9 swapped passed verify)."""
        null = [("null", info.null_input(batch))] if info.null_class_id is not None else []
        n = int(info.num_classes)  # type: ignore[arg-type]
        starts = range(0, n, batch) if batch == info.spec.max_batch else range(1)
        rotations = [(f"classes {k}.." if k else "classes", (np.arange(batch, dtype=np.int64) + k) % n) for k in starts]
        return [*rotations, *null]

    @staticmethod
    def _check_ids(ids: np.ndarray, num_classes: int, has_null: bool) -> np.ndarray:
        """``ids`` (any integer dtype, or Python ints as objects) as int64, each checked in range first."""
        bad = [int(i) for i in ids.tolist() if not 0 <= int(i) < num_classes]
        if bad:
            null = f" (the null id {num_classes} is used only for guidance)" if has_null else ""
            raise BadInputError(f"classes: id {bad[0]} is outside [0, {num_classes}){null}")
        return ids.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Context(Conditioning):
    """A context ``[B, L, D] float32`` with L in ``[min_context, max_context]`` and D = ``context_dim``."""

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {CONTEXT_NAME: {0: "batch", 1: "context_length"}}

    def shape(self, spec: ExportSpec, batch: int, length: int | None) -> dict[str, tuple[int, ...]]:
        return {CONTEXT_NAME: (batch, length or spec.opt_context, spec.context_dim)}

    def length(self, feeds: dict[str, np.ndarray]) -> int | None:
        return feeds[CONTEXT_NAME].shape[1] if feeds[CONTEXT_NAME].ndim == 3 else None

    def sample(self, rng: np.random.Generator, spec: ExportSpec, batch: int,
               length: int | None) -> dict[str, np.ndarray]:
        return {CONTEXT_NAME: rng.standard_normal(self.shape(spec, batch, length)[CONTEXT_NAME], dtype=np.float32)}

    def check_values(self, spec: ExportSpec, feeds: dict[str, np.ndarray]) -> None:
        length = self.length(feeds)
        if length is not None and not spec.min_context <= length <= spec.max_context:
            raise BadInputError(f"{CONTEXT_NAME}: length {length} is outside [{spec.min_context}, {spec.max_context}]")

    def spec_fields(self, cfg: UNetConfig) -> dict[str, int]:
        return {"context_dim": int(cfg.context_dim)}  # type: ignore[arg-type]

    def cross_attention_dim(self, cfg: UNetConfig) -> int | None:
        return cfg.context_dim

    def summary(self, cfg: UNetConfig) -> str:
        return f"context dim {cfg.context_dim}"

    def what(self, context_dim: int | None = None) -> str:
        return f"a context [B, L, {context_dim or 'D'}] float32"

    def call_input(self, value: Any, n: int, info: ModelInfo) -> np.ndarray | None:
        """``value``: ``[n, L, D]`` float32 with L in the exported range."""
        spec = info.spec
        if value is None:
            raise BadInputError(f"context: this model is context-conditioned; pass context [n, L, {spec.context_dim}] "
                                f"float32")
        if not isinstance(value, np.ndarray):  # a list: the wrong type, as x_T's
            raise WrongTypeError(f"context must be a float32 array [n, L, {spec.context_dim}], "
                                 f"got {type(value).__name__}")
        if value.dtype != np.float32 or value.ndim != 3:
            raise BadInputError(f"context must be a float32 array [n, L, {spec.context_dim}], got {value.dtype} "
                                f"{value.shape}")
        n_ctx, length, dim = value.shape
        if n_ctx != n or dim != spec.context_dim or not spec.min_context <= length <= spec.max_context:
            raise BadInputError(f"context must have shape [n={n}, L in [{spec.min_context}, {spec.max_context}], "
                                f"{spec.context_dim}], got {list(value.shape)}")
        if not np.isfinite(value).all():  # it would reach the model and read as non-finite weights
            raise BadInputError(f"context holds {int(value.size - np.isfinite(value).sum())} NaN or infinite values")
        return value

    def check_inputs(self, rng: np.random.Generator, info: ModelInfo, batch: int) -> list[tuple[str, Any]]:
        """One random context of the optimal length."""
        spec = info.spec
        return [("context", rng.standard_normal((batch, spec.opt_context, spec.context_dim), dtype=np.float32))]


NONE = Conditioning()
CLASS = ClassLabels(kind="class", input_name=CLASS_NAME, dtype="int64", adjective="class-conditional",
                    argument="classes", noun="class ids", size_field="num_class_rows")
CONTEXT = Context(kind="context", input_name=CONTEXT_NAME, dtype="float32", adjective="context-conditioned",
                  argument="context", noun="context", size_field="context_dim", has_default_input=False)
#: kind name -> descriptor; the only place the names are mapped to behaviour.
CONDITIONINGS: Registry[Conditioning] = Registry("cond_kind", {c.kind: c for c in (NONE, CLASS, CONTEXT)})
