"""The sidecar of a TensorRT engine: ``<engine>.json`` beside the engine file (torch-free).

Written by the build (:mod:`ddpm_export.export.tensorrt`), read by the runtime
(:mod:`ddpm_export.runtime.tensorrt`) and by bundles. An engine is valid only for the ONNX file
it was built from and for the TensorRT version that built it; both are recorded here and checked
before the engine is deserialised. Fields (docs/metadata.md)::

    {"onnx_file": "tiny.onnx", "onnx_sha256": "<sha256 of the ONNX file>", "tensorrt_version": "10.x.y",
     "gpu": {"name": ..., "compute_capability": "9.0"}, "precision": "fp16", "strongly_typed": true,
     "tf32": false, "profile": {"x_t": {"min": [...], "opt": [...], "max": [...]}, ...},
     "build_seconds": 12.3, "ddpm_export_version": "0.1.0",
     "version_compatible": false, "hardware_compatibility": "none",
     "builder": {"workspace_mib": null, "timing_cache": false, "builder_optimization_level": 3},
     "converted_from": {"onnx_file": "tiny.onnx", "onnx_sha256": "..."}}   # only after the fp16 pass

Every option that makes an engine incompatible with another setup is recorded, and
:func:`check_sidecar` applies TensorRT's rules before the engine is deserialised, so a mismatch
is refused with a message that says what to rebuild rather than by a deserialisation error:

- a plain engine runs only on the TensorRT version that built it; a version-compatible one
  (``BuilderFlag.VERSION_COMPATIBLE``) also on later releases of the same major version and, of
  the next major versions, on those TensorRT's support matrix names (:data:`CROSS_MAJOR`: a
  TensorRT 10 engine on TensorRT 11);
- ``hardware_compatibility`` ``none``: only on GPUs like the builder's (same compute capability
  is what can be checked); ``same-compute-capability``: any GPU of that capability; ``ampere+``:
  any GPU of compute capability >= 8.0.

Sidecars written before these keys existed read as ``version_compatible=False``,
``hardware_compatibility="none"``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from ddpm_export._version import __version__
from ddpm_export.contract.choices import HARDWARE_COMPATIBILITY
from ddpm_export.errors import BadInputError, IntegrityError
from ddpm_export.files import atomic_file
from ddpm_export.jsonio import parse_json

__all__ = ["EngineMismatchError", "check_sidecar", "make_sidecar", "needs_host_code", "read_sidecar", "sidecar_path",
           "sidecar_text", "write_sidecar"]

Profile = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
AMPERE = (8, 0)
#: (built by, runs on) major versions a version-compatible engine crosses: TensorRT's support
#: matrix (11.x, "Engine Portability") names these two and no other
CROSS_MAJOR = frozenset({(8, 10), (10, 11)})


class EngineMismatchError(IntegrityError):
    """The engine was built from another ONNX file, or for another TensorRT version or GPU."""


def sidecar_path(engine: str | Path) -> Path:
    """``<engine>.json`` beside the engine file."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def make_sidecar(*, onnx_file: str, onnx_sha256: str, tensorrt_version: str, gpu: Mapping[str, Any],
                 precision: str, profile: Profile, build_seconds: float, version_compatible: bool = False,
                 hardware_compatibility: str = "none", builder: Mapping[str, Any] | None = None,
                 converted_from: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The sidecar of a strongly typed, TF32-free engine (the only kind the build makes).

    ``builder``: the build options that do not limit where the engine runs (workspace, timing
    cache, optimisation level); ``converted_from``: the fp32 file the built graph was made from
    by the fp16 pass (``onnx_file``, ``onnx_sha256``).
    """
    if hardware_compatibility not in HARDWARE_COMPATIBILITY:
        raise BadInputError(f"hardware_compatibility={hardware_compatibility!r}; choose one of: "
                         f"{', '.join(HARDWARE_COMPATIBILITY)}")
    sidecar = {
        "onnx_file": onnx_file,
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": tensorrt_version,
        "gpu": dict(gpu),
        "precision": precision,
        "strongly_typed": True,
        "tf32": False,
        "version_compatible": version_compatible,
        "hardware_compatibility": hardware_compatibility,
        "profile": {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in profile.items()},
        "build_seconds": round(build_seconds, 1),
        "ddpm_export_version": __version__,
    }
    if builder is not None:
        sidecar["builder"] = dict(builder)
    if converted_from is not None:
        sidecar["converted_from"] = dict(converted_from)
    return sidecar


def sidecar_text(sidecar: Mapping[str, Any]) -> str:
    """A sidecar's file contents: JSON, sorted keys, indented."""
    return json.dumps(dict(sidecar), indent=2, sort_keys=True) + "\n"


def write_sidecar(engine: str | Path, sidecar: Mapping[str, Any], *, force: bool = False) -> Path:
    """Write the sidecar of ``engine`` atomically (:func:`sidecar_text`)."""
    path = sidecar_path(engine)
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(sidecar_text(sidecar), encoding="utf-8")
    return path


#: the types of the sidecar fields the checks read (each optional: older sidecars lack some)
_FIELD_TYPES = {"onnx_file": str, "tensorrt_version": str, "gpu": dict, "version_compatible": bool,
                "hardware_compatibility": str, "profile": dict, "converted_from": dict}


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """The engine's sidecar as a dict; IntegrityError when it is missing, lacks ``onnx_sha256`` or has
    a field of the wrong type (a check reading it then crashed)."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise IntegrityError(f"{engine}: its sidecar {path.name} is missing; an engine is usable only with the "
                             f"sidecar written when it was built (rebuild it)")
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("onnx_sha256"), str):
        raise IntegrityError(f"{path}: needs an 'onnx_sha256' string (the hash of the ONNX file the engine was "
                             f"built from)")
    wrong = [key for key, kind in _FIELD_TYPES.items() if key in data and not isinstance(data[key], kind)]
    if isinstance(data.get("profile"), dict) and not all(_is_shapes(s) for s in data["profile"].values()):
        wrong.append("profile")
    if wrong:
        raise IntegrityError(f"{path}: {', '.join(repr(k) for k in wrong)} not as `ddpm-export trt` writes "
                             f"{'it' if len(wrong) == 1 else 'them'} (see docs/metadata.md); rebuild the engine")
    return data


def _is_shapes(shapes: Any) -> bool:
    """One input's ``{"min": [...], "opt": [...], "max": [...]}``, each a non-empty list of integers."""
    return isinstance(shapes, dict) and all(isinstance(shapes.get(k), list) and shapes[k] and all(
        isinstance(d, int) for d in shapes[k]) for k in ("min", "opt", "max"))


def check_sidecar(engine: str | Path, sidecar: Mapping[str, Any], *, onnx_sha256: str | None,
                  tensorrt_version: str | None, compute_capability: str | None = None) -> None:
    """Refuse an engine built from another ONNX file (when ``onnx_sha256`` is given), for another
    TensorRT version (when ``tensorrt_version`` is given and the sidecar records one) or for
    another GPU (when ``compute_capability`` of the GPU that would run it, e.g. ``"8.9"``, is
    given), by the rules in the module docstring."""
    if onnx_sha256 is not None and sidecar["onnx_sha256"] != onnx_sha256:
        _refuse_the_converted_file(engine, sidecar, onnx_sha256)
        raise EngineMismatchError(f"{engine}: built from an ONNX file with sha256 {sidecar['onnx_sha256']}, "
                                  f"not from this one ({onnx_sha256}); rebuild the engine from this ONNX file")
    if tensorrt_version is not None:
        _check_version(engine, sidecar, tensorrt_version)
    if compute_capability is not None:
        _check_gpu(engine, sidecar, _capability(compute_capability))


def _refuse_the_converted_file(engine: str | Path, sidecar: Mapping[str, Any], onnx_sha256: str) -> None:
    """The fp32 file ``trt --fp16`` converted into the engine's graph, given in place of that graph:
    the mistake is the file given, not the engine, so the error names the graph to give instead."""
    source = sidecar.get("converted_from")
    if isinstance(source, Mapping) and source.get("onnx_sha256") == onnx_sha256:
        graph = Path(engine).with_name(Path(engine).name + ".onnx")  # where `trt` wrote it
        raise EngineMismatchError(f"{engine}: built from {graph.name}, the fp16 graph `trt --fp16` converted from "
                                  f"this ONNX file ({source.get('onnx_file')}): use that graph with the engine "
                                  f"(--onnx {graph}), not the file it was converted from")


def needs_host_code(sidecar: Mapping[str, Any]) -> bool:
    """A version-compatible engine embeds its lean runtime (host code): the runtime must allow
    it (``trt.Runtime.engine_host_code_allowed = True``) to deserialise it."""
    return bool(sidecar.get("version_compatible", False))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:3])


def _capability(text: Any) -> tuple[int, int] | None:
    parts = re.findall(r"\d+", str(text)) if text is not None else []
    return (int(parts[0]), int(parts[1])) if len(parts) >= 2 else None


def _check_version(engine: str | Path, sidecar: Mapping[str, Any], tensorrt_version: str) -> None:
    built = sidecar.get("tensorrt_version")
    if built is None or built == tensorrt_version:
        return
    if not sidecar.get("version_compatible", False):
        raise EngineMismatchError(f"{engine}: built by TensorRT {built}, this is TensorRT {tensorrt_version}; "
                                  f"engines are not portable across versions: rebuild it (or build it with "
                                  f"--version-compatible)")
    have, want = _version(tensorrt_version), _version(built)
    if not have or not want or have < want or (have[0] != want[0] and (want[0], have[0]) not in CROSS_MAJOR):
        later = [f"{want[0]}.x" if want else "?"] + [f"{b}.x" for a, b in sorted(CROSS_MAJOR) if want and a == want[0]]
        raise EngineMismatchError(f"{engine}: a version-compatible engine of TensorRT {built} runs on later "
                                  f"{' and '.join(later)} releases only, this is TensorRT {tensorrt_version}: "
                                  f"rebuild it")


def _check_gpu(engine: str | Path, sidecar: Mapping[str, Any], have: tuple[int, int] | None) -> None:
    level = sidecar.get("hardware_compatibility", "none")
    gpu = sidecar.get("gpu") or {}
    built = _capability(gpu.get("compute_capability"))
    if have is None:
        return
    if level not in HARDWARE_COMPATIBILITY:
        raise EngineMismatchError(f"{engine}: unknown hardware_compatibility {level!r} in its sidecar; rebuild it")
    if level == "ampere+":
        if have < AMPERE:
            raise EngineMismatchError(f"{engine}: built for Ampere and later GPUs (compute capability >= 8.0); "
                                      f"this GPU has {have[0]}.{have[1]}")
        return
    if built is not None and built != have:
        raise EngineMismatchError(f"{engine}: built on a GPU of compute capability {built[0]}.{built[1]} "
                                  f"({gpu.get('name', 'unknown')}), this GPU has {have[0]}.{have[1]}: rebuild it "
                                  f"here, or build it with --hardware-compatibility ampere+")
