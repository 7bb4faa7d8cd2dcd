"""What an exported ONNX file says about itself: the ``metadata_props`` keys, their writer
(:func:`metadata_props`, used by the export) and their readers (:func:`read_metadata`,
:func:`check_required`; :class:`~ddpm_export.contract.info.ModelInfo` parses the values).
Torch-free and onnx-free. Every key is described in docs/metadata.md."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from ddpm_export.contract.choices import PRECISIONS
from ddpm_export.errors import BadInputError
from ddpm_export.jsonio import parse_json

PREFIX = "ddpm_export."
UNET_CONFIG = PREFIX + "unet_config"
DIFFUSION_CONFIG = PREFIX + "diffusion_config"
EXPORT_SPEC = PREFIX + "export_spec"
PRECISION_POLICY = PREFIX + "precision_policy"
ATTENTION = PREFIX + "attention"
REWRITES = PREFIX + "rewrites"  # optional: files written before it existed have no exact rewrites
TARGET = PREFIX + "target"  # optional: files written before it existed were exported for any runtime
EXPORTER_VERSION = PREFIX + "exporter_version"
SOURCE = PREFIX + "source"
SOURCE_SHA256 = PREFIX + "source_sha256"
#: optional: files written before it existed are matched by SOURCE_SHA256 alone
SOURCE_TENSORS_SHA256 = PREFIX + "source_tensors_sha256"

REQUIRED = (UNET_CONFIG, DIFFUSION_CONFIG, EXPORT_SPEC, PRECISION_POLICY, ATTENTION, EXPORTER_VERSION,
            SOURCE_SHA256)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) so that two exports are byte-identical."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class MetadataError(BadInputError):
    """An ONNX file lacks ddpm-export metadata, or a metadata value does not parse."""


def check_required(props: Mapping[str, str], source: str = "model") -> None:
    """Raise MetadataError naming ``source`` and every required key missing from ``props``."""
    missing = [k for k in REQUIRED if k not in props]
    if missing:
        raise MetadataError(f"{source}: not a ddpm-export ONNX file: metadata key(s) {', '.join(missing)} "
                            f"missing; re-export it with `ddpm-export onnx`")


def precision_of(props: Mapping[str, str], source: str = "model") -> str:
    """The precision (``"fp32"``, ``"fp16"``, ``"int8"``) recorded in ``props``' precision policy."""
    try:
        precision = str(parse_json(props[PRECISION_POLICY])["precision"])
    except (ValueError, KeyError, TypeError) as e:
        raise MetadataError(f"{source}: metadata {PRECISION_POLICY} is not a precision policy "
                            f"({props.get(PRECISION_POLICY)!r})") from e
    if precision not in PRECISIONS:  # a bundle or sample would otherwise carry it on, unchecked
        raise MetadataError(f"{source}: metadata {PRECISION_POLICY} names precision {precision!r}, which this "
                            f"version does not know (known: {', '.join(PRECISIONS)}); re-export the file")
    return precision


def quantized_outputs_of(props: Mapping[str, str], source: str = "model") -> bool:
    """Whether an int8 file's quantized ops also quantize their outputs (the precision policy's
    ``quantized_outputs``, set from ``--target``); True for int8 files written before it was
    recorded (they all did) and for every other precision (nothing is quantized)."""
    if precision_of(props, source) != "int8":
        return True
    return bool(parse_json(props[PRECISION_POLICY]).get("quantized_outputs", True))


def metadata_props(*, unet: Any, diffusion: Any, spec: Any, policy: Mapping[str, Any], attention: str,
                   rewrites: tuple[str, ...], target: str, exporter_version: str, source: str,
                   source_sha256: str, source_tensors_sha256: str) -> dict[str, str]:
    """Every ``metadata_props`` entry of an export, keyed as :data:`REQUIRED` (+ :data:`SOURCE`,
    :data:`REWRITES`, :data:`TARGET`, :data:`SOURCE_TENSORS_SHA256`); configs (``UNetConfig``,
    ``DiffusionConfig``, ``ExportSpec``) as canonical JSON."""
    return {
        UNET_CONFIG: dumps(unet.to_dict()),
        DIFFUSION_CONFIG: dumps(diffusion.to_dict()),
        EXPORT_SPEC: dumps(spec.to_dict()),
        PRECISION_POLICY: dumps(dict(policy)),
        ATTENTION: attention,
        REWRITES: ",".join(rewrites),
        TARGET: target,
        EXPORTER_VERSION: exporter_version,
        SOURCE: source,
        SOURCE_SHA256: source_sha256,
        SOURCE_TENSORS_SHA256: source_tensors_sha256,
    }


def read_metadata(model_proto: Any, source: str = "model") -> dict[str, str]:
    """``metadata_props`` of an ``onnx.ModelProto`` as a dict, checked by :func:`check_required`."""
    props = {p.key: p.value for p in model_proto.metadata_props}
    check_required(props, source)
    return props
