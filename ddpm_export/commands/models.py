"""`ddpm-export models`: the presets and their sizes (torch-free for presets with weights)."""

from __future__ import annotations

import importlib.util

import click


@click.command("models")
def command() -> None:
    """List the presets shipped in the package with their parameter counts.

    Counts come from the weights file's header; a config-only preset (initialised from a seed)
    is counted with torch when the export extra is installed, else shown as "-".

    \b
    Examples:
      ddpm-export models
      ddpm-export onnx --model digits -o digits.onnx     # a preset name from the list
    """
    from ddpm_export.config import UNetConfig
    from ddpm_export.contract.conditioning import CONDITIONINGS
    from ddpm_export.presets import ONNX_NAME, preset_dir, preset_names
    from ddpm_export.weights_header import parameter_count

    header = ("preset", "parameters", "input", "conditioning", "ships")
    rows = []
    for name in preset_names():
        folder = preset_dir(name)
        cfg = UNetConfig.load(folder / "config.json")
        weights = folder / "model.safetensors"
        if weights.is_file():
            n = f"{parameter_count(weights):,}"
        elif importlib.util.find_spec("torch") is not None:  # the preset's own config, never a same-named folder here
            import torch

            from ddpm_export.nn.unet import UNet

            with torch.device("meta"):  # shapes only: no weights drawn
                n = f"{sum(p.numel() for p in UNet(cfg).parameters()):,}"
        else:
            n = "-"
        ships = ", ".join(f for f in ("weights" if weights.is_file() else "", "onnx" if (folder / ONNX_NAME).is_file()
                                      else "") if f) or "config"
        rows.append((name, n, f"{cfg.in_channels}x{cfg.sample_size}x{cfg.sample_size}",
                     CONDITIONINGS[cfg.cond_kind].summary(cfg), ships))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(c.ljust(w) if i != 1 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
