"""What an exported ONNX file says about itself, parsed into the project's configs (torch-free).

``ddpm-export onnx`` writes the UNet config, the DiffusionConfig (schedule and sampler
defaults), the ExportSpec (names, dtypes, batch range), the precision policy and the source hash
into the file's ``metadata_props`` (keys in :mod:`ddpm_export.export.metadata`). The runtime
reads them with ONNX Runtime's ``get_modelmeta()``, so an edge app needs no ``onnx`` package;
``onnx`` is used only when ONNX Runtime is not installed (a TensorRT-only deployment).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from ddpm_export.config import UNetConfig
from ddpm_export.configbase import ConfigError
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.errors import InputNotFoundError, MissingDependencyError
from ddpm_export.export import metadata as md
from ddpm_export.export.metadata import MetadataError
from ddpm_export.export.spec import ExportSpec

__all__ = ["MetadataError", "ModelInfo", "read_info", "read_metadata"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The parsed metadata of one exported file.

    Attributes:
        unet: the architecture the file was exported from.
        diffusion: the schedule it was trained with and the sampler defaults.
        spec: graph interface: names, ``[min_batch, max_batch]``, valid ``t`` and class ids.
        precision: ``"fp32"`` or ``"fp16"`` (the precision policy's name).
        attention: the attention form in the graph.
        source_sha256: hash of the weights it was exported from.
        metadata: every ``metadata_props`` entry as written, for reports and bundles.
    """

    unet: UNetConfig
    diffusion: DiffusionConfig
    spec: ExportSpec
    precision: str
    attention: str
    source_sha256: str
    metadata: Mapping[str, str] = dataclasses.field(compare=False, repr=False)

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "model") -> "ModelInfo":
        """Parse ``metadata_props``; raise MetadataError naming ``source`` and the bad key."""
        md.check_required(props, source)

        def parse(key: str, cls_: Any) -> Any:
            try:
                return cls_.from_json(props[key], source=f"{source}: metadata {key}")
            except ConfigError as e:
                raise MetadataError(str(e)) from e

        try:
            policy = json.loads(props[md.PRECISION_POLICY])
            precision = policy["precision"]
        except (ValueError, KeyError, TypeError) as e:
            raise MetadataError(f"{source}: metadata {md.PRECISION_POLICY} is not a precision policy "
                                f"({props[md.PRECISION_POLICY]!r})") from e
        return cls(unet=parse(md.UNET_CONFIG, UNetConfig), diffusion=parse(md.DIFFUSION_CONFIG, DiffusionConfig),
                   spec=parse(md.EXPORT_SPEC, ExportSpec), precision=str(precision),
                   attention=props[md.ATTENTION], source_sha256=props[md.SOURCE_SHA256], metadata=dict(props))

    # --- conditioning ------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        """Real classes (ids ``0 .. num_classes - 1``); None for a model without class labels."""
        return self.unet.num_classes

    @property
    def null_class_id(self) -> int | None:
        """The id that means "no class" (``num_classes``), for classifier-free guidance; None if absent."""
        if self.unet.num_classes is None or not self.unet.null_class:
            return None
        return self.unet.num_classes


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of the ONNX file at ``path``: ONNX Runtime if installed, else ``onnx``."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such ONNX file")
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(f"reading {path} needs onnxruntime (or onnx); pip install onnxruntime") from None
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def read_info(path: str | Path) -> ModelInfo:
    """The parsed metadata of the ONNX file at ``path``."""
    return ModelInfo.from_metadata(read_metadata(path), source=str(path))
