"""Reading an exported file's metadata in a deployment (torch-free).

The runtime reads ``metadata_props`` straight from the protobuf wire format
(:mod:`ddpm_export.runtime.onnx_wire`: a few hundred bytes, the graph and its weights skipped),
so an edge app needs no ``onnx`` package and loads each file once. A file that is not a
well-formed message, or has no metadata, goes to a full parser for its error message: ONNX
Runtime's ``get_modelmeta()``, or ``onnx`` when ONNX Runtime is not installed (a TensorRT-only
deployment). The keys and their parsing are the contract's (:mod:`ddpm_export.contract`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ddpm_export.contract.info import ModelInfo
from ddpm_export.contract.metadata import MetadataError
from ddpm_export.errors import (BadInputError, InputNotFoundError, MissingDependencyError, WrongTypeError,
                                check_onnxruntime)
from ddpm_export.runtime.onnx_wire import scan_metadata_props

__all__ = ["MetadataError", "ModelInfo", "read_info", "read_metadata"]


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of the ONNX file at ``path``: from the wire format, else (a malformed file,
    no metadata) through ONNX Runtime if installed, else ``onnx``."""
    if not isinstance(path, (str, os.PathLike)):
        raise WrongTypeError(f"path must be a str or os.PathLike naming an ONNX file, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise InputNotFoundError(f"{path}: a folder, not an ONNX file (a bundle folder is read with "
                                 f"Pipeline.from_bundle, `sample --bundle`)")
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: reading would hang or find nothing
        raise InputNotFoundError(f"{path}: not a regular file (a device, pipe or socket); give an ONNX file")
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such ONNX file", path)
    props = scan_metadata_props(path)
    if props is not None:
        return props
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        check_onnxruntime(ort)  # an emptied onnxruntime folder: named, not an AttributeError traceback
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        from ddpm_export.errors import load_error
        from ddpm_export.runtime.onnxruntime_backend import create_session

        try:
            session = create_session(path, providers=["CPUExecutionProvider"], session_options=opts)
        except BadInputError as e:  # whichever backend comes next: the file itself is unreadable
            why = load_error(e.__cause__ or e)
            raise BadInputError(f"{path}: not a readable ONNX file (ONNX Runtime's parser: {why}); is it a complete "
                                f"ONNX file written by `ddpm-export onnx`, with its external data beside it?") from e
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
