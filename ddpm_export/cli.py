"""The ``ddpm-export`` command line (click). Subcommands import torch only when they need it."""

from __future__ import annotations

import importlib
import pkgutil

import click

from ddpm_export import __version__, commands


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


def _register_commands() -> None:
    """Every module of ``ddpm_export.commands`` defines one click command named ``command``."""
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        main.add_command(module.command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
