"""`ddpm-export trt`: build a TensorRT engine from an exported ONNX file."""

from __future__ import annotations

import click


@click.command("trt")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="An ONNX file written by `ddpm-export onnx` (its metadata gives the shape profile).")
@click.option("--save-engine", "-o", "engine", required=True, type=click.Path(dir_okay=False),
              help="The engine file to write; its sidecar <engine>.json is written beside it.")
@click.option("--fp16/--fp32", "fp16", default=None,
              help="Assert the ONNX file's precision. Precision lives in the graph (TensorRT 11 has no FP16 "
                   "builder flag): for an fp16 engine export with `ddpm-export onnx --precision fp16`.")
@click.option("--builder-optimization-level", type=click.IntRange(0, 5), default=3,
              help="TensorRT builder optimisation level (higher: slower build, maybe faster engine).")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def command(onnx_path: str, engine: str, fp16: bool | None, builder_optimization_level: int, force: bool) -> None:
    """Build a strongly typed TensorRT engine (needs a GPU and the `gpu` extra).

    \b
    One optimisation profile covers the file's batch range (min/opt/max from its ExportSpec);
    TF32 is off, so an fp32 file gives an fp32 engine and an fp16 file an fp16 engine with the
    same fp32 islands. The sidecar records the ONNX sha256, TensorRT version and GPU; runtimes
    refuse an engine whose sidecar does not match.
    \b
    Example:
      ddpm-export onnx --model digits --precision fp16 --target tensorrt -o digits16.onnx
      ddpm-export trt --onnx digits16.onnx --fp16 -o digits16.plan
    """
    from ddpm_export.export.tensorrt import build_engine

    build_engine(onnx_path, engine, fp16=fp16, optimization_level=builder_optimization_level, force=force,
                 log=click.echo)
