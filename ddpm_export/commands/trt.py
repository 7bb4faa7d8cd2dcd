"""`ddpm-export trt`: build a TensorRT engine from an exported ONNX file (or a model, in one step)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ddpm_export.console import IntRange
from ddpm_export.contract.choices import HARDWARE_COMPATIBILITY
from ddpm_export.contract.spec import MAX_BATCH

if TYPE_CHECKING:  # pragma: no cover
    from ddpm_export.export.trt_options import BuildOptions


@click.command("trt")
@click.option("--onnx", "onnx_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="An ONNX file written by `ddpm-export onnx` (its metadata gives the shape profile).")
@click.option("--model", "-m", "model", default=None,
              help="Export this preset or checkpoint folder first (needs torch), then build: one step.")
@click.option("-o", "--output", "--save-engine", "engine", required=True, type=click.Path(dir_okay=False),
              help="The engine file to write; its sidecar <engine>.json is written beside it.")
@click.option("--fp16/--fp32", "fp16", default=None,
              help="--fp16: an fp16 engine; an fp32 file of ours is converted to the fp16 policy's graph first "
                   "(written beside the engine as <engine>.onnx). --fp32 refuses an fp16 or int8 file. Default: the "
                   "file's precision.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache: read if it exists, written back (atomically) with this build's timings.")
@click.option("--workspace", type=IntRange(1), default=None, metavar="MiB",
              help="Limit TensorRT's workspace memory pool [default: TensorRT's, the GPU's memory].")
@click.option("--version-compatible", is_flag=True,
              help="Build a version-compatible engine (runs on later TensorRT releases of the same major version).")
@click.option("--hardware-compatibility", type=click.Choice(HARDWARE_COMPATIBILITY),
              default="none", help="GPUs the engine may run on besides the builder's kind.")
@click.option("--builder-optimization-level", type=IntRange(0, 5), default=3,
              help="TensorRT builder optimisation level (higher: slower build, maybe faster engine).")
@click.option("--min-batch", type=IntRange(1, MAX_BATCH), default=None, help="With --model: smallest batch [1].")
@click.option("--opt-batch", type=IntRange(1, MAX_BATCH), default=None,
              help="With --model: batch to optimise for [4, brought into the batch range].")
@click.option("--max-batch", type=IntRange(1, MAX_BATCH), default=None, help="With --model: largest batch [16].")
@click.option("--progress/--no-progress", default=None, show_default=False,
              help="Show TensorRT's build progress [default: when stderr is a terminal, on with -v, off with -q].")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def command(onnx_path: str | None, model: str | None, engine: str, fp16: bool | None, timing_cache: str | None,
            workspace: int | None, version_compatible: bool, hardware_compatibility: str,
            builder_optimization_level: int, min_batch: int | None, opt_batch: int | None, max_batch: int | None,
            progress: bool | None, force: bool) -> None:
    """Build a strongly typed TensorRT engine (needs a GPU and the `gpu` extra).

    \b
    One optimisation profile covers the file's batch range (min/opt/max from its ExportSpec);
    TF32 is off, so an fp32 file gives an fp32 engine, an fp16 file an fp16 engine with the
    same fp32 islands, and an int8 file (--target tensorrt) an int8 engine. The sidecar records
    the ONNX sha256, TensorRT version, GPU and the compatibility options; runtimes refuse an
    engine that cannot run there.
    Exit status: 0 built; 2 bad input, TensorRT, CUDA or a GPU missing, or TensorRT failed to
    build a valid file (the message names the node and a hint); nothing is written then. 1 only
    when the one-step export (--model) disagrees with PyTorch.
    \b
    Examples:
      ddpm-export trt --model digits --fp16 -o digits16.plan
      ddpm-export onnx --model digits -o digits.onnx
      ddpm-export trt --onnx digits.onnx --fp16 -o digits16.plan --timing-cache trt.cache
    """
    if (onnx_path is None) == (model is None):
        raise click.UsageError("pass exactly one of --onnx and --model")
    if model is not None:
        from ddpm_export.presets import check_model_name

        check_model_name(model)  # a typo is named as one, not as a missing extra
    _require_extras()
    from ddpm_export.console import show_progress
    from ddpm_export.contract.sidecar import sidecar_path
    from ddpm_export.export.tensorrt import build_engine, engine_onnx_path
    from ddpm_export.export.trt_options import BuildOptions
    from ddpm_export.files import refuse_same_file
    from ddpm_export.inputs import input_files

    graph = engine_onnx_path(engine) if model or (fp16 and _converts(onnx_path)) else None  # written then
    refuse_same_file({"--onnx": onnx_path, **input_files(model=model, onnx=onnx_path)},
                     {"-o": engine, "-o's sidecar": sidecar_path(engine), "-o's graph": graph,
                      "--timing-cache": timing_cache})
    batches = {k: v for k, v in (("min_batch", min_batch), ("opt_batch", opt_batch), ("max_batch", max_batch))
               if v is not None}
    if batches and model is None:
        raise click.UsageError("--min-batch/--opt-batch/--max-batch apply to --model (an ONNX file has its own)")
    options = BuildOptions(workspace_mib=workspace, timing_cache=timing_cache, version_compatible=version_compatible,
                           hardware_compatibility=hardware_compatibility,  # type: ignore[arg-type]
                           builder_optimization_level=builder_optimization_level,
                           progress=show_progress(progress))
    if model is not None:
        _export_and_build(model, engine, fp16, options, batches, force)
    else:
        # errors go to the CLI's one mapping (ddpm_export.errors): TensorRTUnavailable, BuildFailed -> 2
        build_engine(onnx_path, engine, fp16=fp16, options=options, keep_onnx=False, force=force, log=click.echo)


def _converts(onnx_path: str | None) -> bool:
    """Whether --fp16 converts ``onnx_path`` (an fp32 file) into ``<engine>.onnx``: an fp16 file,
    ``<engine>.onnx`` itself say, is built as it is."""
    from ddpm_export.runtime.info import read_info

    return onnx_path is not None and read_info(onnx_path).precision == "fp32"


def _require_extras() -> None:
    """Without the export extra (onnx, to read and check the file), name it and, when TensorRT is
    missing too, the gpu extra, in one line: the user would otherwise learn of the second only after
    installing the first."""
    from importlib import import_module
    from importlib.util import find_spec

    from ddpm_export.errors import MissingDependencyError

    try:
        import_module("onnx")
        return
    except ImportError as e:
        why = f"onnx: {e}"  # absent, or installed but broken
    if find_spec("tensorrt") is not None:
        raise MissingDependencyError(f"ddpm-export trt needs the export extra ({why}): pip install 'ddpm-export[export]'")
    raise MissingDependencyError(f"ddpm-export trt needs the export extra ({why}) and, on a machine with an NVIDIA GPU, "
                                 f"the gpu extra (no module 'tensorrt'): pip install 'ddpm-export[export,gpu]'")


def _export_and_build(model: str, engine: str, fp16: bool | None, options: BuildOptions, batches: dict[str, int],
                      force: bool) -> None:
    """Export ``model`` (fp16 policy with --fp16) into a temporary folder, then build from it;
    the exported file is kept beside the engine as ``<engine>.onnx``."""
    import tempfile
    from pathlib import Path

    from ddpm_export.console import use_flag_names
    from ddpm_export.contract.spec import batch_range
    from ddpm_export.export.tensorrt import (TensorRTUnavailable, build_engine, check_tensorrt_version,
                                            engine_onnx_path, refuse_outputs)
    from ddpm_export.gpu import require_gpu

    use_flag_names({"min_batch/opt_batch/max_batch": "--min-batch/--opt-batch/--max-batch"})
    batch_range(**batches)  # named as such, not as a missing tensorrt nor after finding a GPU
    refuse_outputs(engine, engine_onnx_path(engine), options, force)
    require_gpu(f"cannot build {engine}", TensorRTUnavailable)  # before a minutes-long export
    check_tensorrt_version(options)
    from ddpm_export.export.onnx import export_onnx

    precision = "fp16" if fp16 else "fp32"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.onnx"  # build_engine keeps it as engine_onnx_path(engine): the log says so
        # a ValidationError (the export disagrees with torch) is a failed verification: exit 1
        path = export_onnx(model, staged, precision=precision, target="tensorrt", **batches,
                           log=lambda line: click.echo(line.replace(str(staged), str(engine_onnx_path(engine))))).path
        build_engine(path, engine, fp16=fp16, options=options, keep_onnx=True, force=force, log=click.echo)
