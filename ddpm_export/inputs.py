"""The files a command reads besides the paths of its own flags (torch-free), so that no output
is written over one of them (:func:`ddpm_export.files.refuse_same_file`)."""

from __future__ import annotations

from pathlib import Path

from ddpm_export.contract.sidecar import sidecar_path
from ddpm_export.presets import MODELS_DIR, preset_names

__all__ = ["input_files"]


def input_files(*, model: str | Path | None = None, onnx: str | Path | None = None,
                engine: str | Path | None = None) -> dict[str, Path]:
    """Every file a command reads besides its flags' own paths, labelled for
    :func:`~ddpm_export.files.refuse_same_file`: the files of ``model``'s folder (a checkpoint folder or a preset),
    ``onnx``'s external data (``<onnx>.data``) and ``engine``'s sidecar (``<engine>.json``)."""
    found: dict[str, Path] = {}
    if model is not None:
        preset = MODELS_DIR / str(model) if str(model) in preset_names() else None
        folder = Path(model) if Path(model).is_dir() else preset
        for file in sorted(folder.iterdir()) if folder is not None else ():
            if file.is_file():
                found[f"the model's {file.name}"] = file
    if onnx is not None:
        found["--onnx's external data"] = Path(onnx).with_name(Path(onnx).name + ".data")
    if engine is not None:
        found["--engine's sidecar"] = sidecar_path(engine)
    return found
