"""ONNX -> TensorRT engine with Polygraphy's loaders, plus the engine's sidecar.

The network is always **strongly typed**: every layer runs in the type the ONNX graph gives it,
so an fp16 ONNX file (our explicitly typed mixed-precision export) becomes an fp16 engine with
the same fp32 islands, on TensorRT 10 and on TensorRT 11 (which removed the FP16 builder flag).
TF32 is off, so an fp32 file becomes a true fp32 engine. One optimisation profile comes from
the file's ExportSpec (min/opt/max batch). ``tensorrt`` is imported lazily: everything up to
the build (reading the metadata, the profile, the sidecar) works and is tested without it.

Sidecar ``<engine>.json`` (:mod:`ddpm_export.contract.sidecar`, read by the runtime): the sha256
of the ONNX file, the TensorRT version, the GPU, the profile and the precision, so a mismatch is
refused with a message that says what to rebuild.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import Any, Callable

import onnx

from ddpm_export.contract import metadata as md
from ddpm_export.contract.info import ModelInfo
from ddpm_export.contract.sidecar import make_sidecar, sidecar_path, write_sidecar
from ddpm_export.contract.spec import ExportSpec
from ddpm_export.errors import BadInputError, InputNotFoundError, MissingDependencyError
from ddpm_export.files import atomic_file, refuse_existing
from ddpm_export.gpu import import_cudart


class TensorRTUnavailable(MissingDependencyError, RuntimeError):
    """The tensorrt package (or a GPU) is missing on this machine."""


@dataclasses.dataclass(frozen=True)
class EnginePlan:
    """Everything decided before TensorRT is touched (testable on a CPU)."""

    onnx_path: Path
    onnx_sha256: str
    spec: ExportSpec
    precision: str
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    def sidecar(self, tensorrt_version: str, gpu: dict[str, Any], seconds: float) -> dict[str, Any]:
        return make_sidecar(onnx_file=self.onnx_path.name, onnx_sha256=self.onnx_sha256,
                            tensorrt_version=tensorrt_version, gpu=gpu, precision=self.precision,
                            profile=self.profile, build_seconds=seconds)


def plan_engine(onnx_path: str | Path, *, fp16: bool | None = None) -> EnginePlan:
    """Read the ONNX file's metadata and decide the build. ``fp16`` (the ``--fp16`` flag) must
    agree with the file's precision: the precision lives in the graph, not in a builder flag."""
    path = Path(onnx_path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found")
    model = onnx.load(str(path), load_external_data=False)
    info = ModelInfo.from_metadata({p.key: p.value for p in model.metadata_props}, source=str(path))
    spec, precision = info.spec, info.precision
    if fp16 is not None and fp16 != (precision == "fp16"):
        want = "fp16" if fp16 else "fp32"
        raise BadInputError(f"{path} is a {precision} graph but {want} was asked for; the precision lives in the ONNX "
                            f"graph (TensorRT 11 has no FP16 builder flag): re-export it with "
                            f"`ddpm-export onnx --precision {want} --target tensorrt`")
    return EnginePlan(path, md.sha256_file(path), spec, precision, spec.profiles())


def tensorrt_missing() -> str | None:
    """Why an engine cannot be built here, or None."""
    if importlib.util.find_spec("tensorrt") is None:
        return ("the 'tensorrt' package is not installed; on a machine with an NVIDIA GPU: "
                "pip install 'ddpm-export[gpu]'")
    return None


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, fp16: bool | None = None,
                 optimization_level: int = 3, force: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build ``engine_path`` (+ its sidecar) from ``onnx_path``; returns the sidecar dict.

    Both files are written atomically; existing ones are refused unless ``force``.
    """
    engine_path = Path(engine_path)
    side = sidecar_path(engine_path)
    for path in (engine_path, side):
        refuse_existing(path, force)
    plan = plan_engine(onnx_path, fp16=fp16)
    why = tensorrt_missing()
    if why:
        raise TensorRTUnavailable(f"cannot build {engine_path}: {why}")

    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    profile = Profile()
    for name, (lo, opt, hi) in plan.profile.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    log(f"building a strongly typed {plan.precision} engine with TensorRT {trt.__version__} "
        f"(batch {plan.spec.min_batch}..{plan.spec.max_batch}, opt {plan.spec.opt_batch})")
    start = time.perf_counter()
    network = NetworkFromOnnxPath(str(plan.onnx_path), strongly_typed=True)
    config = CreateConfig(tf32=False, profiles=[profile], builder_optimization_level=optimization_level)
    engine_bytes = EngineBytesFromNetwork(network, config=config)()
    seconds = time.perf_counter() - start
    info = plan.sidecar(trt.__version__, _gpu_info(), seconds)

    side.unlink(missing_ok=True)  # never pair the new engine with the old engine's sidecar
    with atomic_file(engine_path, force=force) as tmp:
        tmp.write_bytes(bytes(engine_bytes))
    write_sidecar(engine_path, info, force=force)  # the sidecar last: an engine without one is refused
    log(f"wrote {engine_path} ({engine_path.stat().st_size / 2**20:.1f} MiB) and {side.name} in {seconds:.1f} s")
    return info


def _gpu_info() -> dict[str, Any]:
    """Name and compute capability of GPU 0 through cuda-python; what is unknown says so."""
    try:
        err, props = import_cudart("the engine build").cudaGetDeviceProperties(0)
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception as e:  # noqa: BLE001 - informational only; the engine itself is what matters
        return {"name": "unknown", "error": f"{type(e).__name__}: {e}"}
