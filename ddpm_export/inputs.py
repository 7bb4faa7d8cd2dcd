"""The files a command reads besides the paths of its own flags (torch-free), so that no output
is written over one of them (:func:`ddpm_export.files.refuse_same_file`)."""

from __future__ import annotations

from pathlib import Path

from ddpm_export.contract.sidecar import sidecar_path
from ddpm_export.diffusion.from_diffusers import find_scheduler_config
from ddpm_export.presets import DIFFUSION_NAME, MODELS_DIR, preset_names
from ddpm_export.runtime.onnx_wire import scan_external_data

__all__ = ["input_files"]


def input_files(*, model: str | Path | None = None, bundle: str | Path | None = None,
                onnx: str | Path | None = None, engine: str | Path | None = None) -> dict[str, Path]:
    """Every file a command reads besides its flags' own paths, labelled for
    :func:`~ddpm_export.files.refuse_same_file`: the files of ``model``'s folder (a checkpoint
    folder or a preset) and the scheduler config of its diffusers pipeline, the files of a
    ``bundle`` folder, ``onnx``'s external data (``<onnx>.data`` and every location its tensors
    name) and ``engine``'s sidecar (``<engine>.json``)."""
    found: dict[str, Path] = {}
    if model is not None:
        preset = MODELS_DIR / str(model) if str(model) in preset_names() else None
        found.update(_files_of(Path(model) if Path(model).is_dir() else preset, "the model's"))
        found.update(_pipeline_scheduler(Path(model)))
    if bundle is not None:
        found.update(_files_of(Path(bundle), "the bundle's"))
    if onnx is not None:
        found.update(_external_data(Path(onnx)))
    if engine is not None:
        found["--engine's sidecar"] = sidecar_path(engine)
    return found


def _external_data(onnx: Path) -> dict[str, Path]:
    """``onnx``'s external-data files: ``<onnx>.data`` (as ``export_onnx`` names it) and the locations
    its tensors name (a file saved with ``location="weights.bin"``: --force could overwrite its weights)."""
    found = {"--onnx's external data": onnx.with_name(onnx.name + ".data")}
    names = (scan_external_data(onnx) or ()) if onnx.is_file() else ()
    found.update({f"--onnx's external data {name}": onnx.parent / name for name in names})
    return found


def _pipeline_scheduler(folder: Path) -> dict[str, Path]:
    """The scheduler config a diffusers UNet folder without ``diffusion.json`` reads from its pipeline
    (``../scheduler/scheduler_config.json``), outside the folder: verify --report over it with --force
    destroyed the model's schedule."""
    if not folder.is_dir() or (folder / DIFFUSION_NAME).exists():
        return {}
    path = find_scheduler_config(folder)
    return {} if path is None or path.parent == folder else {"the model's scheduler config": path}


def _files_of(folder: Path | None, label: str) -> dict[str, Path]:
    """``{"<label> <name>": path}`` for every file directly in ``folder`` (none for None)."""
    if folder is None or not folder.is_dir():
        return {}
    return {f"{label} {file.name}": file for file in sorted(folder.iterdir()) if file.is_file()}
