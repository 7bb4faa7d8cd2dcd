"""ONNX -> TensorRT engine with Polygraphy's loaders, plus the engine's sidecar.

The network is always **strongly typed**: every layer runs in the type the ONNX graph gives it,
so an fp16 ONNX file (our explicitly typed mixed-precision export) becomes an fp16 engine with
the same fp32 islands, on TensorRT 10 and on TensorRT 11 (which removed the FP16 builder flag).
TF32 is off, so an fp32 file becomes a true fp32 engine. One optimisation profile comes from
the file's ExportSpec (min/opt/max batch). ``tensorrt`` is imported lazily: everything up to
the build (reading the metadata, the profile, the sidecar) works and is tested without it.

Sidecar ``<engine>.json`` (:mod:`ddpm_export.contract.sidecar`, read by the runtime): the sha256
of the ONNX file, the TensorRT version, the GPU, the profile and the precision, and every option
that limits where the engine runs (``version_compatible``, ``hardware_compatibility``; the rules
are in the contract too), so a mismatch is refused with a message that says what to rebuild.

``fp16=True`` on an fp32 file of ours runs the fp16 graph pass (:mod:`ddpm_export.export.fp16_pass`)
first; the graph the engine is built from is then written beside it as ``<engine>.onnx`` (its
sha256 is the sidecar's ``onnx_sha256``; the fp32 file it came from is ``converted_from``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import onnx

from ddpm_export.contract import metadata as md
from ddpm_export.contract.info import ModelInfo
from ddpm_export.contract.sidecar import make_sidecar, sidecar_path, sidecar_text
from ddpm_export.contract.spec import ExportSpec
from ddpm_export.errors import BadInputError, InputNotFoundError, MissingDependencyError, OutputExistsError
from ddpm_export.export import fp16_pass, trt_build
from ddpm_export.export.trt_options import BuildOptions, builder_config
from ddpm_export.files import (atomic_file, atomic_files, made_parents, refuse_existing_file, remove_leftovers,
                               scratch_folder)
from ddpm_export.gpu import gpu_missing, import_cudart, import_tensorrt, require_gpu


class TensorRTUnavailable(MissingDependencyError, RuntimeError):
    """The tensorrt or cuda-python package, or a CUDA GPU, is missing on this machine (exit 2)."""


@dataclasses.dataclass(frozen=True)
class EnginePlan:
    """Everything decided before TensorRT is touched (testable on a CPU)."""

    onnx_path: Path
    onnx_sha256: str
    spec: ExportSpec
    precision: str
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def sidecar(self, tensorrt_version: str, gpu: dict[str, Any], seconds: float,
                options: BuildOptions = BuildOptions(), converted_from: "EnginePlan | None" = None) -> dict[str, Any]:
        """The engine's sidecar (:func:`ddpm_export.contract.sidecar.make_sidecar`); ``converted_from``:
        the fp32 file this plan's graph was made from by the fp16 pass."""
        source = None if converted_from is None else {"onnx_file": converted_from.onnx_path.name,
                                                      "onnx_sha256": converted_from.onnx_sha256}
        return make_sidecar(onnx_file=self.onnx_path.name, onnx_sha256=self.onnx_sha256,
                            tensorrt_version=tensorrt_version, gpu=gpu, precision=self.precision,
                            profile=self.profile, build_seconds=seconds, **options.compatibility(),
                            builder=options.builder(), converted_from=source)


def plan_engine(onnx_path: str | Path, *, fp16: bool | None = None) -> EnginePlan:
    """Read the ONNX file's metadata and decide the build. ``fp16=True`` (``--fp16``) accepts an
    fp32 file too (the build converts it, see :func:`build_engine`); ``fp16=False`` (``--fp32``)
    refuses an fp16 file (fp16 weights cannot become fp32 ones) and an int8 one (it would build an
    int8 engine): precision lives in the graph."""
    path = Path(onnx_path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found", path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise BadInputError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e}); is it a complete ONNX "
                            f"file written by `ddpm-export onnx`?") from e
    info = ModelInfo.from_metadata({p.key: p.value for p in model.metadata_props}, source=str(path))
    spec, precision = info.spec, info.precision
    if fp16 is True and precision == "int8":
        raise BadInputError(f"{path} is an int8 (QDQ) graph; --fp16 applies to fp32 files only: build it without "
                            f"--fp16 (its float parts keep the precision the graph gives them)")
    if fp16 is False and precision in ("fp16", "int8"):
        raise BadInputError(f"{path} is an {precision} graph but fp32 was asked for; the precision lives in the ONNX "
                            f"graph: export an fp32 file with `ddpm-export onnx --precision fp32`"
                            + (", or build this one without --fp32" if precision == "int8" else ""))
    if precision == "int8" and _asymmetric_activations(model):
        raise BadInputError(f"{path} is an int8 file exported for --target {info.target}: its activations are "
                            f"quantized as asymmetric uint8 (ONNX Runtime's and OpenVINO's layout), and TensorRT "
                            f"takes only symmetric int8 with zero point 0: export it with `ddpm-export onnx "
                            f"--precision int8 --target tensorrt`")
    if precision == "int8" and _int32_dequantized(model):
        raise BadInputError(f"{path} stores its biases as int32 behind DequantizeLinear (an int8 export of an "
                            f"earlier ddpm-export), which TensorRT's parser refuses: export it again with "
                            f"`ddpm-export onnx --precision int8 --target tensorrt`")
    return EnginePlan(path, md.sha256_file(path), spec, precision, spec.profiles())


def _asymmetric_activations(model: onnx.ModelProto) -> bool:
    """Whether a QuantizeLinear of ``model`` (activations: weights are stored quantized) has a zero
    point that is not an int8 0: what ``--target`` other than tensorrt writes (uint8)."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        point = inits.get(node.input[2]) if node.op_type == "QuantizeLinear" and len(node.input) > 2 else None
        if point is None:
            continue
        inline = point.data_location != onnx.TensorProto.EXTERNAL
        if point.data_type != onnx.TensorProto.INT8 or (inline and onnx.numpy_helper.to_array(point).any()):
            return True
    return False


def _int32_dequantized(model: onnx.ModelProto) -> bool:
    """Whether a DequantizeLinear of ``model`` reads an int32 initializer (a quantized bias)."""
    int32 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    return any(node.op_type == "DequantizeLinear" and node.input[0] in int32 for node in model.graph.node)


def engine_onnx_path(engine: str | Path) -> Path:
    """``<engine>.onnx``: the graph an engine was built from, when the build made it."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".onnx")


def tensorrt_missing() -> str | None:
    """Why an engine cannot be built here (tensorrt, cuda-python or a GPU missing), or None."""
    return gpu_missing()


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, fp16: bool | None = None,
                 options: BuildOptions = BuildOptions(), keep_onnx: bool = False, force: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build ``engine_path`` (+ its sidecar) from ``onnx_path``; returns the sidecar dict.

    ``fp16=True`` on an fp32 file builds from its fp16 graph (the fp16 pass). That graph -- or,
    with ``keep_onnx``, the file itself (e.g. a temporary export) -- is written to
    :func:`engine_onnx_path`. Files are written atomically (engine, graph and sidecar all or none,
    then the timing cache); existing ones are refused unless ``force``; nothing is written when TensorRT, CUDA or a
    GPU is missing (TensorRTUnavailable) or the build fails (``trt_failures.BuildFailed``).
    """
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    source = plan_engine(onnx_path, fp16=fp16)
    convert = fp16 is True and source.precision == "fp32"
    graph_out = engine_onnx_path(engine_path) if convert or keep_onnx else None
    remove_leftovers(engine_path)  # the scratch folder of a build that was killed
    refuse_outputs(engine_path, graph_out, options, force)
    stale = stale_graph(engine_path, graph_out, source.onnx_path, force)
    require_gpu(f"cannot build {engine_path}", TensorRTUnavailable)
    check_tensorrt_version(options)
    gpu = _gpu_info()  # before the build: an engine whose GPU is unknown could not be checked where it runs
    with made_parents(engine_path), scratch_folder(engine_path) as tmp:  # the fp16 graph goes there
        plan = source
        if convert:
            log(f"converting {source.onnx_path.name} to the fp16 policy's graph (fp16 pass)")
            plan = plan_engine(fp16_pass.convert_file(source.onnx_path, Path(tmp) / graph_out.name,
                                                        source_sha256=source.onnx_sha256), fp16=True)
        engine_bytes, cache, seconds = _build(plan, options, log)
        info = plan.sidecar(_trt_version(), gpu, seconds, options, converted_from=source if convert else None)
        info["onnx_file"] = graph_out.name if graph_out is not None else info["onnx_file"]
        _write(engine_path, engine_bytes, plan.onnx_path, graph_out, cache, options, info, force)
    if stale is not None:  # only now: a failed build keeps the earlier engine with its graph
        stale.unlink(missing_ok=True)
    log(f"wrote {engine_path} ({engine_path.stat().st_size / 2**20:.1f} MiB) and {side.name} in {seconds:.1f} s"
        + (f"; the graph it was built from: {graph_out.name}" if graph_out is not None else "")
        + (f"; removed {stale.name}, an earlier build's graph" if stale is not None else ""))
    return info


def refuse_outputs(engine_path: str | Path, graph_out: Path | None, options: BuildOptions, force: bool) -> None:
    """Refuse, before any work, an existing engine, sidecar or ``graph_out`` (unless ``force``) and a
    timing cache that cannot be written back (a folder, a folder that is not writable): written
    after the engine, it would fail with the engine already in place."""
    for path in (engine_path, sidecar_path(engine_path), graph_out):
        if path is not None:
            refuse_existing_file(path, force)
    if options.timing_cache is not None:
        try:
            refuse_existing_file(options.timing_cache, force=True)  # read, then replaced: it may exist
        except BadInputError as e:
            raise BadInputError(f"--timing-cache: {e}") from None


def stale_graph(engine_path: Path, graph_out: Path | None, onnx_path: Path, force: bool) -> Path | None:
    """``<engine>.onnx`` of an earlier build (an fp16 conversion) when this build writes none: the new
    engine's sidecar does not match it, so verifying or bundling the engine with it fails on its sha256.
    Refused unless ``force``, then returned (removed once the new engine is in place); None when there is
    none, this build writes it, or it is the file this build reads."""
    old = engine_onnx_path(engine_path)
    if graph_out is not None or not os.path.lexists(old) or os.path.isdir(old):
        return None
    if os.path.exists(onnx_path) and os.path.exists(old) and os.path.samefile(old, onnx_path):
        return None  # `trt --onnx e.plan.onnx -o e.plan`: the engine is built from it
    if not force:
        raise OutputExistsError(f"{old} exists, the graph an earlier build of {engine_path.name} was made from; this "
                                f"build writes none, and the new engine would not match it: pass --force to remove it")
    return old


def _trt_version() -> str:
    return str(import_tensorrt("the engine build").__version__)


def check_tensorrt_version(options: BuildOptions) -> None:
    """TensorRTUnavailable when this TensorRT is older than ``options`` need (before any work)."""
    version = _trt_version()
    have, need = tuple(int(p) for p in re.findall(r"\d+", version)[:2]), options.needs_tensorrt()
    if have < need:
        raise TensorRTUnavailable(f"--hardware-compatibility {options.hardware_compatibility} needs TensorRT >= "
                                  f"{need[0]}.{need[1]}; this is TensorRT {version}: upgrade it (pip install "
                                  f"-U tensorrt) or choose another level")


def _build(plan: EnginePlan, options: BuildOptions, log: Callable[[str], None]) -> tuple[bytes, bytes | None, float]:
    description = builder_config(plan, options)
    log(f"building a strongly typed {plan.precision} engine with TensorRT {_trt_version()} "
        f"(batch {plan.spec.min_batch}..{plan.spec.max_batch}, opt {plan.spec.opt_batch}; "
        f"{json.dumps(description['create_config'], sort_keys=True)})")
    start = time.perf_counter()
    engine_bytes, cache = trt_build.build_serialized(plan.onnx_path, description, max_batch=plan.spec.max_batch,
                                                     log=log)
    return engine_bytes, cache, time.perf_counter() - start


def _write(engine_path: Path, engine_bytes: bytes, graph: Path, graph_out: Path | None,
           cache: bytes | None, options: BuildOptions, info: dict[str, Any], force: bool) -> None:
    """Engine, a copy of the ``graph`` it was built from at ``graph_out`` (None: not kept) and
    sidecar all or none (a failed --force rebuild keeps the old three), then the timing cache (read
    at the start, merged, written back)."""
    with atomic_files(engine_path, graph_out, sidecar_path(engine_path), force=force) as (engine, graph_tmp, side):
        engine.write_bytes(engine_bytes)
        if graph_tmp is not None:
            shutil.copyfile(graph, graph_tmp)
        side.write_text(sidecar_text(info), encoding="utf-8")
    if cache is not None and options.timing_cache is not None:
        with atomic_file(options.timing_cache, force=True) as tmp:
            tmp.write_bytes(cache)


def _gpu_info() -> dict[str, Any]:
    """Name and compute capability of GPU 0 through cuda-python, recorded in the sidecar so that
    :func:`~ddpm_export.contract.sidecar.check_sidecar` can refuse the engine on another GPU;
    TensorRTUnavailable when CUDA cannot tell them."""
    cudart = import_cudart("the engine build")
    err, props = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        raise TensorRTUnavailable(f"CUDA could not describe GPU 0 (cudaGetDeviceProperties: {err}); the engine's "
                                  f"sidecar must record its compute capability")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
