"""Checks that a loaded graph is what its metadata says, and that a model's output is finite
(torch-free). Used by :class:`~ddpm_export.runtime.OnnxRuntimeBackend` and
:class:`~ddpm_export.runtime.OpenVinoBackend` at load and by
:class:`~ddpm_export.runtime.Pipeline` at every sampling step."""

from __future__ import annotations

from typing import Any

import numpy as np

from ddpm_export.contract.spec import OUT_NAME, ExportSpec
from ddpm_export.errors import IntegrityError, NonFiniteOutputError

__all__ = ["ORT_TYPES", "check_finite", "check_graph"]

#: ONNX Runtime's type names of the numpy dtypes an export spec uses.
ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "float16": "tensor(float16)"}


def check_graph(inputs: list[Any], outputs: list[Any], spec: ExportSpec, source: str) -> None:
    """Refuse a graph whose inputs or output disagree with ``spec`` (names, element types, and
    every fixed dimension: an input's fixed batch only where the spec's batch range is that one size);
    ``inputs`` / ``outputs`` are ONNX Runtime ``NodeArg`` lists (or anything with its ``name``,
    ``type`` and ``shape``)."""
    names = [i.name for i in inputs]
    if names != spec.input_names:
        raise IntegrityError(f"{source}: the graph's inputs {names} differ from its metadata's export spec "
                             f"{spec.input_names}; re-export it with `ddpm-export onnx`")
    out = {o.name: o for o in outputs}
    if OUT_NAME not in out:
        raise IntegrityError(f"{source}: the graph has no output {OUT_NAME!r} (outputs: {list(out)}); "
                             f"re-export it with `ddpm-export onnx`")
    want_shapes = {**spec.input_shapes(spec.min_batch, spec.min_context), OUT_NAME: spec.output_shape(spec.min_batch)}
    want_types = {**spec.input_dtypes(), OUT_NAME: "float32"}
    for arg in [*inputs, out[OUT_NAME]]:
        want_type = ORT_TYPES.get(want_types[arg.name], want_types[arg.name])
        if arg.type != want_type:
            raise IntegrityError(f"{source}: graph {'output' if arg.name == OUT_NAME else 'input'} {arg.name!r} is "
                                 f"{arg.type}, its metadata says {want_type}; re-export it with `ddpm-export onnx`")
        dims = list(arg.shape)
        want = want_shapes[arg.name]
        fixed_ok = len(dims) == len(want) and all(not isinstance(d, int) or k == 0 or d == w
                                                  for k, (d, w) in enumerate(zip(dims, want)))
        if not fixed_ok:
            raise IntegrityError(f"{source}: graph {arg.name!r} has shape {dims}, its metadata's export spec says "
                                 f"(batch, {', '.join(str(w) for w in want[1:])}); re-export it with `ddpm-export onnx`")
        fixed_batch = arg.name != OUT_NAME and dims and isinstance(dims[0], int)  # ONNX Runtime refuses other feeds
        if fixed_batch and not spec.min_batch == dims[0] == spec.max_batch:
            raise IntegrityError(f"{source}: graph {arg.name!r} has a fixed batch of {dims[0]}, its metadata's export "
                                 f"spec says batch {spec.min_batch}..{spec.max_batch}; re-export it with "
                                 f"`ddpm-export onnx` (--min-batch, --max-batch)")


def check_finite(model_output: np.ndarray, *, step: int, steps: int, t: int, source: str, precision: str) -> None:
    """Stop sampling when the model output of step ``step`` (1-based, of ``steps``) at timestep
    ``t`` holds NaN or infinity. ``precision`` names what the backend computes
    (:func:`~ddpm_export.runtime.backends.describe_precision`): below fp32 the hint says so."""
    if not np.isfinite(model_output).all():
        bad = int(np.size(model_output) - np.isfinite(model_output).sum())
        hint = "check the weights (e.g. `ddpm-export verify`)"
        if precision != "fp32":  # overflow is then a suspect too
            hint += f" or compute in fp32 (this run: {precision})"
        raise NonFiniteOutputError(f"{source}: the model output is not finite at step {step}/{steps} (t={t}): "
                                   f"{bad} of {model_output.size} values are NaN or infinite; sampling "
                                   f"stopped, no image returned -- {hint}")
