"""Checkpoints: our folder is ``config.json`` + ``model.safetensors``; no pickle anywhere.

``load_model`` also accepts a preset name (``models/<name>``; presets without weights are
initialised from a fixed seed) and a diffusers ``UNet2DModel`` folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from safetensors.torch import save_file

from ddpm_export.config import UNetConfig
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.diffusion.from_diffusers import diffusion_from_scheduler, find_scheduler_config
from ddpm_export.errors import CheckpointError, DdpmExportWarning
from ddpm_export.files import OutputFolder, atomic_dir, new_file_mode
from ddpm_export.jsonio import parse_json
from ddpm_export.nn.diffusers_import import load_diffusers_unet
from ddpm_export.nn.unet import UNet
from ddpm_export.nn.weights import (build_model, check_state, load_state_strict, meta_model, read_safetensors,
                                    shapes)
from ddpm_export.presets import (CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME, DIFFUSION_NAME, WEIGHTS_NAME, check_model_name,
                                 preset_dir)

__all__ = ["CHECKPOINT_FOLDER", "CONFIG_NAME", "DIFFUSERS_WEIGHTS_NAME", "DIFFUSION_NAME", "WEIGHTS_NAME",
           "CheckpointError", "build_model", "diffusion_config_for", "is_diffusers_folder", "load_checkpoint",
           "load_model", "load_state_strict", "model_folder", "read_safetensors", "save_checkpoint", "schedule_file",
           "seed_initialised", "weights_path", "write_checkpoint"]

#: what a checkpoint folder holds (``training.json``: tools/train.py's record of the run), so that
#: ``force`` replaces only such a folder
CHECKPOINT_FOLDER = OutputFolder(CONFIG_NAME, frozenset({WEIGHTS_NAME, DIFFUSION_NAME, "training.json"}))


def save_checkpoint(model: UNet, out_dir: str | Path, *, diffusion: DiffusionConfig | None = None,
                    force: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``diffusion.json`` when given) atomically
    (temp folder + rename).

    An existing ``out_dir`` is refused unless ``force``.
    """
    out = Path(out_dir)
    with atomic_dir(out, CHECKPOINT_FOLDER, force=force) as tmp:
        write_checkpoint(model, tmp, diffusion=diffusion)
    return out


def write_checkpoint(model: UNet, folder: Path, *, diffusion: DiffusionConfig | None = None) -> None:
    """``config.json`` + ``model.safetensors`` (+ ``diffusion.json``) into the existing ``folder``
    (a temporary one: :func:`save_checkpoint`, tools/train.py)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # One metadata entry: safetensors writes its metadata map in a per-process random order,
    # so two entries would make the same weights give different file bytes (and sha256).
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    os.chmod(folder / WEIGHTS_NAME, new_file_mode())  # safetensors writes 0600; every other file follows the umask
    (folder / CONFIG_NAME).write_text(model.config.to_json() + "\n", encoding="utf-8")
    if diffusion is not None:
        (folder / DIFFUSION_NAME).write_text(diffusion.to_json() + "\n", encoding="utf-8")


def load_checkpoint(folder: str | Path) -> UNet:
    """Load our checkpoint folder (config.json + model.safetensors) into a UNet in eval mode."""
    folder = Path(folder)
    cfg = UNetConfig.load(folder / CONFIG_NAME)
    weights = read_safetensors(folder / WEIGHTS_NAME)
    check_state(shapes(meta_model(cfg).state_dict()), shapes(weights), str(folder / WEIGHTS_NAME))
    model = build_model(cfg)
    load_state_strict(model, weights, str(folder / WEIGHTS_NAME))
    return model.eval()


def is_diffusers_folder(folder: Path) -> bool:
    if (folder / DIFFUSERS_WEIGHTS_NAME).is_file():
        return True
    try:
        return parse_json((folder / CONFIG_NAME).read_text(encoding="utf-8-sig")).get("_class_name") is not None
    except (OSError, ValueError, AttributeError):  # UNetConfig.load names what is wrong
        return False


def model_folder(spec: str | Path) -> Path:
    """The folder behind ``spec``: the path itself, or the preset's folder in models/."""
    path = Path(spec)
    return path if path.is_dir() else preset_dir(str(spec))


def schedule_file(spec: str | Path) -> Path | None:
    """The file the model's schedule comes from: its folder's ``diffusion.json``, else for a
    diffusers folder its scheduler's ``scheduler_config.json`` (beside it or in the pipeline's
    ``scheduler/``); None when there is neither (the default DiffusionConfig applies)."""
    folder = model_folder(spec)
    if (folder / DIFFUSION_NAME).exists():  # a folder in its place too: refused where it is read
        return folder / DIFFUSION_NAME
    return find_scheduler_config(folder) if is_diffusers_folder(folder) else None


def diffusion_config_for(spec: str | Path) -> DiffusionConfig | None:
    """The model's schedule from :func:`schedule_file` (a diffusers scheduler config through
    :func:`ddpm_export.diffusion.from_diffusers.diffusion_from_scheduler`), or None."""
    path = schedule_file(spec)
    if path is None:
        return None
    return DiffusionConfig.load(path) if path.name == DIFFUSION_NAME else diffusion_from_scheduler(path)


def weights_path(spec: str | Path) -> Path | None:
    """The weights file ``load_model(spec)`` reads, or None for a preset initialised from a seed."""
    folder = model_folder(spec)
    for name in (WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME):
        if (folder / name).is_file():
            return folder / name
    return None


def seed_initialised(spec: str | Path) -> bool:
    """Whether ``load_model(spec)`` gives seed-initialised weights: a preset or a folder of ours
    without ``model.safetensors`` (a diffusers folder loads its weights, one file or shards, or fails)."""
    folder = model_folder(spec)
    return not (folder / WEIGHTS_NAME).exists() and not is_diffusers_folder(folder)


def load_model(spec: str | Path) -> UNet:
    """A preset name, our checkpoint folder, or a diffusers ``UNet2DModel`` folder -> UNet (eval mode).

    Presets and folders without ``model.safetensors`` (config only) get weights from
    ``build_model(cfg, seed=0)`` (a folder with a DdpmExportWarning: its weights may have gone astray).
    """
    check_model_name(spec)  # a preset, or a folder with a config.json ("" must not load the working folder)
    path = Path(spec)
    if path.is_dir():
        if is_diffusers_folder(path):
            return load_diffusers_unet(path).eval()
        folder = path
    else:
        folder = preset_dir(str(spec))
    if (folder / WEIGHTS_NAME).exists():
        return load_checkpoint(folder)
    model = build_model(UNetConfig.load(folder / CONFIG_NAME)).eval()  # config only, like most presets
    if path.is_dir():  # a folder of the user's, not a preset: its weights may have gone astray
        warnings.warn(f"{folder} holds no {WEIGHTS_NAME}: the model gets seed-initialised (untrained) weights",
                      DdpmExportWarning, stacklevel=2)
    return model
