"""`ddpm-export bundle`: a deployable folder with a hashed manifest."""

from __future__ import annotations

import click


@click.command("bundle")
@click.option("--onnx", "onnx_paths", multiple=True, required=True, type=click.Path(dir_okay=False, exists=True),
              help="An ONNX file from `ddpm-export onnx`; repeat for several (same model, e.g. fp32 and fp16).")
@click.option("--engine", "engines", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A TensorRT engine with its sidecar <engine>.json beside it; repeatable, one per ONNX file.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="The bundle folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
def command(onnx_paths: tuple[str, ...], engines: tuple[str, ...], output: str, force: bool) -> None:
    """Copy ONNX file(s) and engine(s) into a bundle folder with a manifest.json.

    \b
    The manifest lists every file with its sha256, the schedule and the sampler defaults;
    `Pipeline.from_bundle` and `ddpm-export sample --bundle` check every hash before loading.
    Each engine's sidecar must name the sha256 of one of the bundled ONNX files. The folder
    is built under a temporary name and renamed into place.
    \b
    Example:
      ddpm-export bundle --onnx tiny.onnx -o tiny-bundle
    """
    from ddpm_export.runtime import make_bundle
    from ddpm_export.runtime.bundle import MANIFEST

    out = make_bundle(onnx_paths, output, engines=engines, force=force)
    click.echo(f"wrote {out}/ ({len(onnx_paths)} ONNX file(s), {len(engines)} engine(s), {MANIFEST})")
