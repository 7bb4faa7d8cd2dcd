"""The torch-free, onnx-free contract between export and runtime.

What an exported file promises and what a runtime may rely on, in one place that both sides
import (``export/`` never imports ``runtime/`` and ``runtime/`` never imports ``export/`` or
``nn/``; ``tests/contract/test_import_rules.py`` keeps it so):

- :mod:`~ddpm_export.contract.spec`: :class:`ExportSpec`, the graph interface (names, dtypes,
  shapes, batch range) and the input checks;
- :mod:`~ddpm_export.contract.conditioning`: one :class:`Conditioning` descriptor per kind
  (``none``, ``class``, ``context``);
- :mod:`~ddpm_export.contract.metadata`: the ``metadata_props`` keys, their writer and readers;
- :mod:`~ddpm_export.contract.info`: :class:`ModelInfo`, the parsed metadata;
- :mod:`~ddpm_export.contract.sidecar`: the TensorRT engine's sidecar;
- :mod:`~ddpm_export.contract.choices`: the names of the export switches.

docs/metadata.md describes every key and field.
"""

from ddpm_export.contract.conditioning import CONDITIONINGS, Conditioning
from ddpm_export.contract.info import ModelInfo
from ddpm_export.contract.metadata import MetadataError
from ddpm_export.contract.spec import ExportSpec, feeds_for

__all__ = ["CONDITIONINGS", "Conditioning", "ExportSpec", "MetadataError", "ModelInfo", "feeds_for"]
