"""What an exported ONNX file says about itself, parsed into the project's configs (torch-free,
onnx-free).

``ddpm-export onnx`` writes the UNet config, the DiffusionConfig (schedule and sampler
defaults), the ExportSpec (names, dtypes, batch range), the precision policy and the source hash
into the file's ``metadata_props`` (keys in :mod:`ddpm_export.contract.metadata`, described in
docs/metadata.md); :class:`ModelInfo` parses them, for the runtime, the TensorRT build and
verification alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from ddpm_export.config import UNetConfig
from ddpm_export.configbase import ConfigError
from ddpm_export.contract import metadata as md
from ddpm_export.contract.choices import ATTENTION_FORMS, REWRITES, TARGETS
from ddpm_export.contract.metadata import MetadataError
from ddpm_export.contract.spec import ExportSpec
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.errors import BadInputError, IntegrityError

__all__ = ["MetadataError", "ModelInfo"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The parsed metadata of one exported file.

    Attributes:
        unet: the architecture the file was exported from.
        diffusion: the schedule it was trained with and the sampler defaults.
        spec: graph interface: names, ``[min_batch, max_batch]``, valid ``t`` and class ids.
        precision: ``"fp32"`` or ``"fp16"`` (the precision policy's name).
        attention: the attention form in the graph.
        source_sha256: hash of the weights file it was exported from.
        source_tensors_sha256: hash of those weights' tensors (``tensors_sha256`` in
            :mod:`ddpm_export.nn.weights`), the same for a re-saved copy; None for files written
            before it was recorded.
        metadata: every ``metadata_props`` entry as written, for reports and bundles.
        rewrites: the exact rewrites applied (:data:`ddpm_export.contract.choices.REWRITES`);
            empty for files written before they existed.
        target: the runtime it was exported for (:data:`ddpm_export.contract.choices.TARGETS`);
            ``"any"`` for files written before it was recorded.
    """

    unet: UNetConfig
    diffusion: DiffusionConfig
    spec: ExportSpec
    precision: str
    attention: str
    source_sha256: str
    metadata: Mapping[str, str] = dataclasses.field(compare=False, repr=False)
    rewrites: tuple[str, ...] = ()
    target: str = "any"
    source_tensors_sha256: str | None = None

    def same_source(self, file_sha256: str, tensors_sha256: str | None) -> bool:
        """Whether weights whose file hashes to ``file_sha256`` and whose tensors to
        ``tensors_sha256`` are the ones this file was exported from: either digest matching (a
        re-saved copy has other file bytes, the same tensors); the file's alone for older files."""
        return file_sha256 == self.source_sha256 or (
            self.source_tensors_sha256 is not None and tensors_sha256 == self.source_tensors_sha256)

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "model") -> "ModelInfo":
        """Parse ``metadata_props``; raise MetadataError naming ``source`` and the bad key."""
        md.check_required(props, source)

        def parse(key: str, cls_: Any) -> Any:
            try:
                return cls_.from_json(props[key], source=f"{source}: metadata {key}")
            except ConfigError as e:
                raise MetadataError(str(e)) from e

        def one_of(key: str, values: tuple[str, ...], choices: tuple[str, ...]) -> None:
            bad = [v for v in values if v not in choices]
            if bad:
                raise MetadataError(f"{source}: metadata {key}={props[key]!r}: {', '.join(map(repr, bad))} is not "
                                    f"one of {', '.join(choices)}; the file was edited, or written by a newer "
                                    f"ddpm-export")

        precision = md.precision_of(props, source)
        rewrites = tuple(name for name in props.get(md.REWRITES, "").split(",") if name)
        target = props.get(md.TARGET) or "any"
        one_of(md.ATTENTION, (props[md.ATTENTION],), ATTENTION_FORMS)
        one_of(md.REWRITES, rewrites, REWRITES)
        one_of(md.TARGET, (target,), TARGETS)
        info = cls(unet=parse(md.UNET_CONFIG, UNetConfig), diffusion=parse(md.DIFFUSION_CONFIG, DiffusionConfig),
                   spec=parse(md.EXPORT_SPEC, ExportSpec), precision=str(precision),
                   attention=props[md.ATTENTION], source_sha256=props[md.SOURCE_SHA256], metadata=dict(props),
                   rewrites=rewrites, target=target, source_tensors_sha256=props.get(md.SOURCE_TENSORS_SHA256))
        info.check_consistent(source)
        return info

    def check_consistent(self, source: str = "model") -> None:
        """Refuse metadata that disagrees with itself: the export spec against the UNet config
        it was derived from, and the schedule's T against the model's T."""
        T = self.unet.num_train_timesteps
        if self.diffusion.num_train_timesteps != T:
            raise IntegrityError(f"{source}: metadata {md.DIFFUSION_CONFIG} has num_train_timesteps="
                                 f"{self.diffusion.num_train_timesteps} but the model ({md.UNET_CONFIG}) was built "
                                 f"for {T}; the file was edited or mixed up -- re-export it with `ddpm-export onnx`")
        s = self.spec
        want = ExportSpec.from_config(self.unet, min_batch=s.min_batch, opt_batch=s.opt_batch, max_batch=s.max_batch)
        for field in ("in_channels", "out_channels", "sample_size", "cond_kind", "num_class_rows",
                      "num_train_timesteps", "context_dim"):
            if getattr(s, field) != getattr(want, field):
                raise IntegrityError(f"{source}: metadata {md.EXPORT_SPEC} has {field}={getattr(s, field)!r} but "
                                     f"{md.UNET_CONFIG} gives {getattr(want, field)!r}; the file was edited or mixed "
                                     f"up -- re-export it with `ddpm-export onnx`")

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

    def null_input(self, batch: int) -> np.ndarray:
        """The null-class ids ``[batch] int64`` contrasted with the condition under guidance."""
        if self.null_class_id is None:
            raise BadInputError("guidance needs a class-conditional model with a null class")
        return np.full(batch, self.null_class_id, dtype=np.int64)
