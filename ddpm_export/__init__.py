"""ddpm-export: a DDPM U-Net from PyTorch to ONNX and TensorRT, and a torch-free sampler.

Importing this package imports no torch: the runtime (``ddpm_export.runtime``) and the
diffusion math (``ddpm_export.diffusion``) must work in apps that install no PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ddpm_export._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from ddpm_export.nn.unet import UNet

__all__ = ["__version__", "load_model"]


def load_model(spec: "str | Path") -> "UNet":
    """A preset name (``models/<name>``), our checkpoint folder or a diffusers UNet2DModel folder
    -> the reference ``torch.nn.Module`` in eval mode (needs the ``export`` extra: torch)."""
    from ddpm_export.errors import export_extra_needed

    with export_extra_needed("loading a model"):
        from ddpm_export.nn.checkpoint import load_model as _load_model
    return _load_model(spec)
