"""Where the time goes in a TensorRT engine: its per-layer profile over a few model calls.

The engine runs on :class:`ddpm_export.runtime.tensorrt.TensorRTBackend` (its sidecar is checked
first: an engine for another TensorRT version or GPU is refused, and :func:`check_built_from`
refuses one built from an export of another model: the ONNX file its sidecar names, found beside
it with the recorded sha256, must carry the model's config; without it, the input shape must match)
with a ``tensorrt.IProfiler`` attached to the execution context after one warm-up call; TensorRT
then calls ``report_layer_time(layer_name, ms)`` once per layer for every ``execute_async_v3``.
The layers are placed in blocks and op categories by :mod:`ddpm_export.analysis.trt_layers`.

Layer names are the ONNX node names only when the engine was built with a profiling verbosity
other than NONE (``ddpm-export trt`` leaves Polygraphy's default, ``DETAILED``, which keeps them);
an engine built with NONE reports layer indices, which place no time (all of it shows as ``(glue)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpm_export import gpu
from ddpm_export.analysis.trt_layers import LayerProfile, layer_map, summarise_layers
from ddpm_export.config import UNetConfig
from ddpm_export.contract.metadata import sha256_file
from ddpm_export.contract.sidecar import read_sidecar
from ddpm_export.contract.spec import T_NAME, X_NAME, ExportSpec
from ddpm_export.errors import BadInputError
from ddpm_export.nn.unet import UNet

__all__ = ["check_built_from", "check_engine", "profile_tensorrt", "require_gpu"]


def require_gpu(what: str = "inspect --engine") -> None:
    """MissingDependencyError (exit 2) when TensorRT, cuda-python or a GPU is missing."""
    gpu.require_gpu(f"{what} profiles a TensorRT engine on a GPU")


def check_engine(engine: str | Path, batch: int) -> None:
    """Refuse, before any work, an engine that is missing, has no sidecar, or whose optimisation
    profile does not take ``batch``."""
    if not Path(engine).is_file():
        raise BadInputError(f"--engine {engine}: no such file")
    profile = read_sidecar(engine).get("profile", {}).get(X_NAME)
    if profile is not None and not profile["min"][0] <= batch <= profile["max"][0]:
        raise BadInputError(f"--batch {batch}: the engine {engine} takes batches {profile['min'][0]}.."
                            f"{profile['max'][0]} (its optimisation profile)")


def check_built_from(engine: str | Path, config: UNetConfig) -> str | None:
    """BadInputError when ``engine`` was not built from an export of the model ``config``
    describes; returns the sha256 of its ONNX file when that file lies beside it (the backend then
    checks the engine against it), else None (the input shape is all that can be compared)."""
    from ddpm_export.runtime.info import read_info

    engine = Path(engine)
    sidecar = read_sidecar(engine)
    graph = engine.parent / str(sidecar.get("onnx_file", ""))
    want = sidecar.get("onnx_sha256")
    if graph.is_file() and graph != engine and want is not None and sha256_file(graph) == want:
        built = read_info(graph).unet
        if built != config:
            diff = config.differences(built)
            raise BadInputError(f"--engine {engine} was built from {graph.name}, an export of another model "
                                f"(its {', '.join(diff)} differ{'s' if len(diff) == 1 else ''}): profile it with "
                                f"that model, or build an engine from this one")
        return str(want)
    shape = (sidecar.get("profile", {}).get(X_NAME) or {}).get("min")
    model = [config.in_channels, config.sample_size, config.sample_size]
    if shape is not None and list(shape[1:]) != model:
        raise BadInputError(f"--engine {engine} takes x_t of {list(shape[1:])} per image, the model {model}: "
                            f"it was built from an export of another model")
    return None


def _profiler(trt: Any) -> Any:
    """An ``IProfiler`` collecting ``(layer name, ms)`` in ``.reports``."""

    class LayerTimes(trt.IProfiler):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.reports: list[tuple[str, float]] = []

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.reports.append((layer_name, ms))

    return LayerTimes()


def profile_tensorrt(unet: UNet, engine: str | Path, *, batch: int = 1, runs: int = 5, seed: int = 0,
                     device: int = 0) -> LayerProfile:
    """Run ``engine`` (built from an export of ``unet``: :func:`check_built_from`) ``runs + 1``
    times at ``batch`` and sum the per-layer times of the last ``runs`` calls per op category and
    block."""
    from ddpm_export.runtime.tensorrt import TensorRTBackend

    onnx_sha256 = check_built_from(engine, unet.config)
    require_gpu()
    trt = gpu.import_tensorrt("inspect --engine")
    spec = ExportSpec.from_config(unet.config, min_batch=1, opt_batch=max(batch, 1), max_batch=max(batch, 2))
    lmap = layer_map(unet)
    profiler = _profiler(trt)
    with TensorRTBackend(engine, spec, onnx_sha256=onnx_sha256, device=device) as backend:
        for i in range(runs + 1):
            if i == 1:  # after the warm-up call
                backend.context.profiler = profiler
            feeds = spec.sample_inputs(batch, seed=seed + i)
            cond = next((feeds[n] for n in spec.conditioning.input_names()), None)
            backend(feeds[X_NAME], feeds[T_NAME], cond)
    if not profiler.reports:
        raise RuntimeError(f"{engine}: TensorRT reported no layer times")
    return summarise_layers(profiler.reports, lmap, runs=runs, batch=batch)
