"""Checkpoints: our folder is ``config.json`` + ``model.safetensors``; no pickle anywhere.

``load_model`` also accepts a preset name (``models/<name>``; presets without weights are
initialised from a fixed seed) and a diffusers ``UNet2DModel`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddpm_export.config import UNetConfig
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.errors import BadInputError
from ddpm_export.files import atomic_dir
from ddpm_export.nn.unet import UNet
from ddpm_export.presets import preset_dir

CONFIG_NAME = "config.json"
DIFFUSION_NAME = "diffusion.json"  # optional: the DiffusionConfig the weights were trained with
WEIGHTS_NAME = "model.safetensors"
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class CheckpointError(BadInputError):
    """A checkpoint folder or file is missing, malformed or does not match its config."""


def build_model(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A freshly initialised UNet; the same ``seed`` gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(cfg)


def save_checkpoint(model: UNet, out_dir: str | Path, *, diffusion: DiffusionConfig | None = None,
                    force: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``diffusion.json`` when given) atomically
    (temp folder + rename).

    An existing ``out_dir`` is refused unless ``force``.
    """
    out = Path(out_dir)
    with atomic_dir(out, force=force) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        # One metadata entry: safetensors writes its metadata map in a per-process random order,
        # so two entries would make the same weights give different file bytes (and sha256).
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(model.config.to_json() + "\n", encoding="utf-8")
        if diffusion is not None:
            (tmp / DIFFUSION_NAME).write_text(diffusion.to_json() + "\n", encoding="utf-8")
    return out


def load_state_strict(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``weights`` into ``model``; refuse missing/unexpected keys and shape mismatches by name."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {_few(missing)} expected by the config")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key(s) {_few(unexpected)} not in the model built from the config")
    for key, value in weights.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(value.shape)}, "
                                  f"the config expects {tuple(expected[key].shape)}")
    model.load_state_dict(weights, strict=True)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def load_checkpoint(folder: str | Path) -> UNet:
    """Load our checkpoint folder (config.json + model.safetensors) into a UNet in eval mode."""
    folder = Path(folder)
    cfg = UNetConfig.load(folder / CONFIG_NAME)
    model = build_model(cfg)
    load_state_strict(model, read_safetensors(folder / WEIGHTS_NAME), str(folder / WEIGHTS_NAME))
    return model.eval()


def is_diffusers_folder(folder: Path) -> bool:
    if (folder / DIFFUSERS_WEIGHTS_NAME).is_file():
        return True
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("_class_name") is not None
    except (OSError, ValueError, AttributeError):
        return False


def model_folder(spec: str | Path) -> Path:
    """The folder behind ``spec``: the path itself, or the preset's folder in models/."""
    path = Path(spec)
    return path if path.is_dir() else preset_dir(str(spec))


def diffusion_config_for(spec: str | Path) -> DiffusionConfig | None:
    """The model folder's ``diffusion.json``, or None when it has none."""
    path = model_folder(spec) / DIFFUSION_NAME
    return DiffusionConfig.load(path) if path.is_file() else None


def weights_path(spec: str | Path) -> Path | None:
    """The weights file ``load_model(spec)`` reads, or None for a preset initialised from a seed."""
    folder = model_folder(spec)
    for name in (WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME):
        if (folder / name).is_file():
            return folder / name
    return None


def load_model(spec: str | Path) -> UNet:
    """A preset name, our checkpoint folder, or a diffusers ``UNet2DModel`` folder -> UNet (eval mode).

    Presets without ``model.safetensors`` get weights from ``build_model(cfg, seed=0)``.
    """
    path = Path(spec)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path} has no {CONFIG_NAME}")
        if is_diffusers_folder(path):
            from ddpm_export.nn.diffusers_import import load_diffusers_unet

            return load_diffusers_unet(path).eval()
        return load_checkpoint(path)
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    folder = preset_dir(str(spec))
    if (folder / WEIGHTS_NAME).is_file():
        return load_checkpoint(folder)
    return build_model(UNetConfig.load(folder / CONFIG_NAME)).eval()


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")
