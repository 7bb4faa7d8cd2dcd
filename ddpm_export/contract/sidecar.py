"""The sidecar of a TensorRT engine: ``<engine>.json`` beside the engine file (torch-free).

Written by the build (:mod:`ddpm_export.export.tensorrt`), read by the runtime
(:mod:`ddpm_export.runtime.tensorrt`) and by bundles. An engine is valid only for the ONNX file
it was built from and for the TensorRT version that built it; both are recorded here and checked
before the engine is deserialised. Fields (docs/metadata.md)::

    {"onnx_file": "tiny.onnx", "onnx_sha256": "<sha256 of the ONNX file>", "tensorrt_version": "10.x.y",
     "gpu": {"name": ..., "compute_capability": "9.0"}, "precision": "fp16", "strongly_typed": true,
     "tf32": false, "profile": {"x_t": {"min": [...], "opt": [...], "max": [...]}, ...},
     "build_seconds": 12.3, "ddpm_export_version": "0.1.0"}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ddpm_export._version import __version__
from ddpm_export.errors import IntegrityError
from ddpm_export.files import atomic_file

__all__ = ["EngineMismatchError", "check_sidecar", "make_sidecar", "read_sidecar", "sidecar_path", "write_sidecar"]

Profile = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


class EngineMismatchError(IntegrityError):
    """The engine was built from another ONNX file or by another TensorRT version."""


def sidecar_path(engine: str | Path) -> Path:
    """``<engine>.json`` beside the engine file."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def make_sidecar(*, onnx_file: str, onnx_sha256: str, tensorrt_version: str, gpu: Mapping[str, Any],
                 precision: str, profile: Profile, build_seconds: float) -> dict[str, Any]:
    """The sidecar of a strongly typed, TF32-free engine (the only kind the build makes)."""
    return {
        "onnx_file": onnx_file,
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": tensorrt_version,
        "gpu": dict(gpu),
        "precision": precision,
        "strongly_typed": True,
        "tf32": False,
        "profile": {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in profile.items()},
        "build_seconds": round(build_seconds, 1),
        "ddpm_export_version": __version__,
    }


def write_sidecar(engine: str | Path, sidecar: Mapping[str, Any], *, force: bool = False) -> Path:
    """Write the sidecar of ``engine`` atomically (sorted keys, indented)."""
    path = sidecar_path(engine)
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(json.dumps(dict(sidecar), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """The engine's sidecar as a dict; IntegrityError when it is missing or lacks ``onnx_sha256``."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise IntegrityError(f"{engine}: its sidecar {path.name} is missing; an engine is usable only with the "
                             f"sidecar written when it was built (rebuild it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("onnx_sha256"), str):
        raise IntegrityError(f"{path}: needs an 'onnx_sha256' string (the hash of the ONNX file the engine was "
                             f"built from)")
    return data


def check_sidecar(engine: str | Path, sidecar: Mapping[str, Any], *, onnx_sha256: str | None,
                  tensorrt_version: str | None) -> None:
    """Refuse an engine built from another ONNX file (when ``onnx_sha256`` is given) or by another
    TensorRT version (when the sidecar records one and ``tensorrt_version`` is given)."""
    if onnx_sha256 is not None and sidecar["onnx_sha256"] != onnx_sha256:
        raise EngineMismatchError(f"{engine}: built from an ONNX file with sha256 {sidecar['onnx_sha256']}, "
                                  f"not from this one ({onnx_sha256}); rebuild the engine from this ONNX file")
    built_with = sidecar.get("tensorrt_version")
    if tensorrt_version is not None and built_with is not None and built_with != tensorrt_version:
        raise EngineMismatchError(f"{engine}: built by TensorRT {built_with}, this is TensorRT "
                                  f"{tensorrt_version}; engines are not portable across versions, rebuild it")
