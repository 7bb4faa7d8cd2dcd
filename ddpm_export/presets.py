"""Named models shipped inside the package, in ``ddpm_export/models/`` (torch-free): each is a
folder with ``config.json`` and, for trained ones, ``model.safetensors`` (and, for the default
model, ``model.onnx``, so that sampling needs neither torch nor onnx).

The folder is package data found through :mod:`importlib.resources`, never a shared top-level
``models/`` folder that any other package could write into.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ddpm_export.errors import BadInputError, CheckpointError

__all__ = ["CONFIG_NAME", "DIFFUSERS_WEIGHTS_NAME", "DIFFUSION_NAME", "MODELS_DIR", "ONNX_NAME", "WEIGHTS_NAME",
           "check_model_name", "default_model", "preset_dir", "preset_names", "shipped_onnx"]

#: The files of a model folder (a preset, our checkpoint, or a diffusers UNet2DModel folder).
CONFIG_NAME = "config.json"
DIFFUSION_NAME = "diffusion.json"  # optional: the DiffusionConfig the weights were trained with
WEIGHTS_NAME = "model.safetensors"
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

#: The presets' folder, ``ddpm_export/models`` wherever the package is installed.
MODELS_DIR = Path(str(resources.files("ddpm_export") / "models"))
#: A preset's pre-exported ONNX file (fp32, the export's defaults), when it ships one.
ONNX_NAME = "model.onnx"


def preset_names() -> list[str]:
    """Every folder of the presets' folder that holds a config.json, sorted."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in MODELS_DIR.glob(f"*/{CONFIG_NAME}"))


def check_model_name(name: str | Path) -> None:
    """Refuse an empty (or blank) model name (``Path("")`` is the working folder, and a command
    would otherwise fall back to its default model), a file, a folder without a config.json, and a
    name that is neither a path on disk nor a preset -- before any work, so that a wrong path is
    named as one even where loading the model would need torch or the export extra first."""
    if not str(name).strip():
        raise BadInputError(f"an empty model name: give a preset ({', '.join(preset_names())}) or a checkpoint folder")
    path = Path(name)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            if (path / "model_index.json").is_file() and (path / "unet" / CONFIG_NAME).is_file():
                raise CheckpointError(f"{path} is a diffusers pipeline folder; pass its UNet folder, {path / 'unet'} "
                                      f"(its scheduler/ is read from there)")
            if (path / "manifest.json").is_file():
                raise CheckpointError(f"{path} is a bundle folder (ONNX files, no PyTorch weights); --model takes a "
                                      f"preset or a checkpoint folder (sample a bundle with `sample --bundle`)")
            if (path / CONFIG_NAME).exists():  # a folder in its place
                raise CheckpointError(f"{path / CONFIG_NAME}: not a regular file")
            raise CheckpointError(f"{path} has no {CONFIG_NAME}")
    elif path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME} (ours) or {DIFFUSERS_WEIGHTS_NAME} (a diffusers UNet2DModel)")
    else:
        preset_dir(str(name))  # raises, listing the presets, unless it is one


def preset_dir(name: str) -> Path:
    """The folder of preset ``name``; raises BadInputError listing the presets when unknown."""
    names = preset_names()
    if name not in names:
        raise BadInputError(f"unknown model {name!r}: not a folder on disk and not a preset; "
                            f"presets: {', '.join(names) or '(none found in ' + str(MODELS_DIR) + ')'}")
    return MODELS_DIR / name


def shipped_onnx(name: str) -> Path | None:
    """The pre-exported ONNX file shipped with preset ``name``, or None when it has none."""
    if name not in preset_names():
        return None
    path = MODELS_DIR / name / ONNX_NAME
    return path if path.is_file() else None


def default_model() -> str:
    """``digits`` (the trained, class-conditional model) when it is shipped, else ``tiny``:
    the model of ``ddpm-export demo`` and ``ddpm-export sample`` when none is named."""
    return "digits" if "digits" in preset_names() else "tiny"
