"""Named models shipped in ``models/`` (torch-free): each is a folder with ``config.json``
and, for trained ones, ``model.safetensors``."""

from __future__ import annotations

from pathlib import Path

from ddpm_export.errors import BadInputError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def preset_names() -> list[str]:
    """Every folder of ``models/`` that holds a config.json, sorted."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in MODELS_DIR.glob("*/config.json"))


def preset_dir(name: str) -> Path:
    """The folder of preset ``name``; raises ValueError listing the presets when unknown."""
    if name not in preset_names():
        raise BadInputError(f"unknown model {name!r}: not a folder on disk and not a preset; "
                            f"presets: {', '.join(preset_names()) or '(none found in ' + str(MODELS_DIR) + ')'}")
    return MODELS_DIR / name


def default_model() -> str:
    """``digits`` (the trained, class-conditional model) when it is in models/, else ``tiny``:
    the model of ``ddpm-export demo`` and ``ddpm-export sample`` when none is named."""
    return "digits" if "digits" in preset_names() else "tiny"
