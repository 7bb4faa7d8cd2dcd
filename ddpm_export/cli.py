"""The ``ddpm-export`` command line (click). Subcommands import torch only when they need it."""

from __future__ import annotations

import click

from ddpm_export import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="ddpm-export")
def main() -> None:
    """Take a DDPM U-Net from PyTorch to ONNX / TensorRT and sample it without PyTorch.

    \b
    Typical flow:
      ddpm-export models                      # the shipped presets and their sizes
      ddpm-export onnx --model tiny -o tiny.onnx
      ddpm-export sample --onnx tiny.onnx -n 16 -o grid.png
      ddpm-export verify --model tiny --onnx tiny.onnx
    """


@main.command("models")
def models_cmd() -> None:
    """List the presets in models/ with their parameter counts (needs torch)."""
    from ddpm_export import load_model
    from ddpm_export.presets import preset_names

    rows = []
    for name in preset_names():
        model = load_model(name)
        cfg = model.config
        n = sum(p.numel() for p in model.parameters())
        cond = {"none": "unconditional", "class": f"{cfg.num_classes} classes",
                "context": f"context dim {cfg.context_dim}"}[cfg.cond_kind]
        rows.append((name, f"{n:,}", f"{cfg.in_channels}x{cfg.sample_size}x{cfg.sample_size}", cond))
    widths = [max(len(r[i]) for r in rows + [("preset", "parameters", "input", "conditioning")]) for i in range(4)]
    header = ("preset", "parameters", "input", "conditioning")
    for row in [header, *rows]:
        click.echo("  ".join(c.ljust(w) if i != 1 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())


if __name__ == "__main__":  # pragma: no cover
    main()
