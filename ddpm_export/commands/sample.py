"""`ddpm-export sample`: images from an ONNX file or a bundle, without PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ddpm_export.console import FloatRange, IntRange
from ddpm_export.contract.choices import BACKENDS
from ddpm_export.diffusion.samplers import SCHEDULERS

if TYPE_CHECKING:  # pragma: no cover
    from ddpm_export.runtime import Pipeline

#: the library arguments an error may name, as this command's flags
_FLAG_NAMES = {"guidance_scale": "--guidance", "classes": "--class", "steps": "--steps", "eta": "--eta",
               "sampler": "--sampler", "n": "-n", "num_inference_steps": "--steps", "trt_cache_dir": "--trt-cache"}


@click.command("sample")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="An ONNX file written by `ddpm-export onnx` (its metadata holds everything else).")
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="A bundle folder (`ddpm-export bundle`); every file's sha256 is checked first.")
@click.option("--bundle-onnx", "bundle_onnx", default=None, metavar="NAME",
              help="With --bundle: which of its ONNX files to sample, by file name (e.g. digits-int8.onnx) "
                   "[default: the first one the bundle lists].")
@click.option("--model", "-m", "model", default=None,
              help="A preset or checkpoint folder: a preset's shipped ONNX file, else exported on the fly "
                   "(needs the export extra: torch) [default, when neither --onnx nor --bundle is given: "
                   "digits if shipped, else tiny].")
@click.option("-n", "--num-images", "n", type=IntRange(1), default=16, help="Number of images.")
@click.option("--steps", type=IntRange(1), default=None,
              help="Inference steps [default: the file's num_inference_steps].")
@click.option("--sampler", type=click.Choice(SCHEDULERS.names), default=None,
              help="Sampler; the multistep solvers read their settings from the file [default: the file's sampler].")
@click.option("--eta", type=FloatRange(0.0, 1.0), default=None,
              help="DDIM noise: 0 deterministic, 1 DDPM-like [default: the file's eta].")
@click.option("--seed", type=IntRange(0), default=0, help="Noise seed.")
@click.option("--class", "class_ids", type=IntRange(0), multiple=True,
              help="Class-conditional models: the class of every image; repeated, its values in turn "
                   "(--class 3 --class 7: 3, 7, 3, ...; at most -n values) [default: classes 0, 1, ... in turn].")
@click.option("--guidance", type=FloatRange(), default=1.0,
              help="Classifier-free guidance scale (class-conditional models with a null class); 1 = none.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="The PNG grid to write (1- and 3-channel models; -o, --save-npy or both).")
@click.option("--save-npy", type=click.Path(dir_okay=False), default=None,
              help="Write the raw samples [n, C, H, W] float32 in [-1, 1] as .npy (any channel count).")
@click.option("--scale", type=IntRange(1, 16), default=1, help="Enlarge each tile this many times (nearest).")
@click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime",
              help="onnxruntime (CPU); openvino (CPU, the openvino extra); ort-cuda / ort-tensorrt: ONNX Runtime's "
                   "GPU providers (onnxruntime-gpu); tensorrt: the bundle's engine (--bundle only).")
@click.option("--inference-precision", type=click.Choice(("f32", "bf16")), default=None,
              help="openvino: compute in f32 or bf16 [default: OpenVINO's choice, bf16 on CPUs with BF16].")
@click.option("--trt-fp16", is_flag=True, help="ort-tensorrt: let TensorRT run in fp16 (trt_fp16_enable).")
@click.option("--trt-cache", type=click.Path(file_okay=False), default=None,
              help="ort-tensorrt: engine and timing cache folder, so later runs skip the engine build.")
@click.option("--progress/--no-progress", default=None, show_default=False,
              help="Show a progress bar [default: when stderr is a terminal, on with -v, off with -q].")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
def command(onnx_path: str | None, bundle_dir: str | None, bundle_onnx: str | None, model: str | None, n: int,
            steps: int | None, sampler: str | None, eta: float | None, seed: int, class_ids: tuple[int, ...],
            guidance: float, output: str | None, save_npy: str | None, scale: int, backend: str,
            inference_precision: str | None, trt_fp16: bool, trt_cache: str | None, progress: bool | None,
            force: bool) -> None:
    """Sample images with ONNX Runtime or OpenVINO (no PyTorch) and write them as a PNG grid.

    \b
    Images are mapped from [-1, 1] to 0..255 (grayscale for 1 channel), ceil(sqrt(n))
    columns; --save-npy keeps the raw samples (any channel count: alone for 2- or 4-channel
    models). With more images than the graph's max batch, sampling runs in chunks (see
    `Pipeline.sample`). Outputs are written atomically (both files or neither) and never
    overwritten without --force.
    \b
    Examples:
      ddpm-export sample -n 40 --guidance 1.5 -o digits.png     # the shipped digits model
      ddpm-export sample --onnx tiny.onnx -n 16 -o grid.png
      ddpm-export sample --bundle bundle/ -n 20 --class 3 --guidance 1.5 --steps 50 -o threes.png
      ddpm-export sample --bundle bundle/ --bundle-onnx digits-int8.onnx --backend openvino -o int8.png
      ddpm-export --threads 2 sample --onnx tiny.onnx --backend openvino --inference-precision bf16 -o grid.png
    """
    from ddpm_export.console import count, show_progress, use_flag_names
    from ddpm_export.files import atomic_files
    from ddpm_export.images import write_array, write_grid
    from ddpm_export.runtime.backends import describe_precision
    from ddpm_export.runtime.pipeline import check_n

    use_flag_names(_FLAG_NAMES)
    _check_sources(onnx_path, (bundle_dir, bundle_onnx), model)
    if len(class_ids) > n:  # taken in turn: the values past the n-th would be dropped without a word
        raise click.UsageError(f"--class given {len(class_ids)} times for -n {n}: the values after the first {n} would "
                               f"be unused; pass at most {n}, or raise -n")
    if backend == "tensorrt" and bundle_dir is None:
        raise click.UsageError("--backend tensorrt runs a bundle's engine: pass --bundle")
    if (trt_fp16 or trt_cache is not None) and backend != "ort-tensorrt":
        raise click.UsageError("--trt-fp16 and --trt-cache apply to --backend ort-tensorrt")
    if inference_precision is not None and backend != "openvino":
        raise click.UsageError("--inference-precision applies to --backend openvino")
    _check_outputs(output, save_npy, onnx_path, bundle_dir, force)
    cpu = {} if inference_precision is None else {"inference_precision": inference_precision}
    pipe = _load(onnx_path, (bundle_dir, bundle_onnx), model, backend, trt_fp16, trt_cache, cpu)
    info = pipe.info
    info.spec.conditioning.require_default_input(str(onnx_path or bundle_dir or model), "`ddpm-export sample`")
    channels = info.spec.in_channels
    check_n(n, pipe.image_shape)  # before anything of -n's size: the class ids per image, the grid
    if output is not None:  # before sampling, not after
        _check_grid(n, pipe, scale)
    images = pipe.sample(n, steps=steps, sampler=sampler, seed=seed, eta=eta, guidance_scale=guidance,
                         classes=[class_ids[i % len(class_ids)] for i in range(n)] if class_ids else None,
                         progress=show_progress(progress))
    with atomic_files(output, save_npy, force=force) as (png, npy):  # both files or neither
        if png is not None:
            write_grid(images, png, scale=scale)
        if npy is not None:
            write_array(images, npy)
    precision = describe_precision(info.precision, pipe.backend)
    written = " and ".join(str(path) for path in (output, save_npy) if path is not None)
    size = info.spec.sample_size
    click.echo(f"wrote {written} ({count(n, 'image')}, {channels}x{size}x{size}, {precision})")


def _check_grid(n: int, pipe: Pipeline, scale: int) -> None:
    """Refuse a PNG grid of ``n`` images that cannot be drawn: a channel count it cannot hold, or
    more memory than this machine has (the grid is drawn after sampling; ``-n`` is checked first)."""
    from ddpm_export.checks import physical_memory
    from ddpm_export.errors import BadInputError
    from ddpm_export.images import GRID_CHANNELS, grid_bytes

    channels = pipe.image_shape[0]
    if channels not in GRID_CHANNELS:
        raise BadInputError(f"--output: a PNG grid holds 1 or 3 channels, and {pipe.source} makes {channels}-channel "
                            f"images; write them with --save-npy alone")
    need, have = grid_bytes(n, pipe.image_shape, scale=scale), physical_memory()
    if need > have:
        raise BadInputError(f"--output: the PNG grid of {n} images at --scale {scale} would need {need / 2**30:,.1f} "
                            f"GiB, more than this machine's {have / 2**30:,.1f} GiB of memory; ask for fewer images "
                            f"or a smaller --scale, or write --save-npy alone")


def _check_outputs(output: str | None, save_npy: str | None, onnx_path: str | None, bundle_dir: str | None,
                   force: bool) -> None:
    """Refuse no output at all, an output that is an input or lies in the bundle, a wrong suffix,
    or an existing file without ``force`` -- before any work."""
    from ddpm_export.files import refuse_existing_file, refuse_inside, refuse_same_file, require_suffix
    from ddpm_export.inputs import input_files

    if output is None and save_npy is None:
        raise click.UsageError("nothing to write: pass -o GRID.png, --save-npy SAMPLES.npy or both")
    refuse_same_file({"--onnx": onnx_path, **input_files(onnx=onnx_path, bundle=bundle_dir)},
                     {"--output": output, "--save-npy": save_npy})
    refuse_inside({"--bundle": bundle_dir}, {"--output": output, "--save-npy": save_npy},
                  "a file added to a bundle breaks its manifest; write it elsewhere")
    require_suffix("--output", output, ".png")
    require_suffix("--save-npy", save_npy, ".npy")
    for path in (output, save_npy):
        if path is not None:
            refuse_existing_file(path, force)


def _check_sources(onnx_path: str | None, bundle: tuple[str | None, str | None], model: str | None) -> None:
    """Refuse two sources (``--onnx``, ``--bundle`` with its ``--bundle-onnx``, ``--model``) or an empty one."""
    from ddpm_export.presets import check_model_name

    bundle_dir, bundle_onnx = bundle
    if onnx_path is not None and bundle_dir is not None:
        raise click.UsageError("--onnx and --bundle: to pick one of the bundle's ONNX files, pass its name with "
                               "--bundle-onnx NAME instead of --onnx")
    if sum(x is not None for x in (onnx_path, bundle_dir, model)) > 1:
        raise click.UsageError("pass at most one of --onnx, --bundle and --model")
    if model is not None:
        check_model_name(model)  # "" is not the default model
    if bundle_onnx is not None and bundle_dir is None:
        raise click.UsageError("--bundle-onnx picks a file of a bundle: pass --bundle too")


def _load(onnx_path: str | None, bundle: tuple[str | None, str | None], model: str | None, backend: str,
          trt_fp16: bool, trt_cache: str | None, cpu: dict[str, Any]) -> Pipeline:
    """The Pipeline of whichever source was given (``bundle``: its folder and the ONNX file's name
    in it, or Nones; default: the shipped model's ONNX file), on ``backend``; a GPU backend whose
    provider is missing raises ProviderUnavailable (exit 2)."""
    from pathlib import Path

    from ddpm_export.presets import default_model, shipped_onnx
    from ddpm_export.runtime import Pipeline

    options: dict[str, Any] = {"backend": backend, **cpu}
    if backend == "ort-tensorrt":
        options.update(trt_fp16=trt_fp16, trt_cache_dir=trt_cache)
    bundle_dir, bundle_onnx = bundle
    if bundle_dir is not None:
        return Pipeline.from_bundle(bundle_dir, onnx=bundle_onnx, **options)
    if onnx_path is not None:
        return Pipeline.from_onnx(onnx_path, **options)
    name = default_model() if model is None else model
    # a preset's pre-exported file (no torch, no onnx needed) -- unless the name is a folder here,
    # which every command reads first (a model trained into ./digits is not the preset digits)
    shipped = None if model is not None and Path(model).exists() else shipped_onnx(name)
    return Pipeline.from_onnx(shipped, **options) if shipped is not None else _export_and_load(name, options)


def _export_and_load(model: str, options: dict[str, Any]) -> Pipeline:
    """Export ``model`` (validated, fp32) into a temporary folder and load it; the file goes away."""
    import tempfile
    from pathlib import Path

    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime import Pipeline

    with tempfile.TemporaryDirectory() as tmp:
        click.echo(f"exporting {model} to ONNX (use `ddpm-export onnx` once and --onnx to skip this)")
        path = export_onnx(model, Path(tmp) / "model.onnx", log=lambda line: None).path
        return Pipeline.from_onnx(path, **options)
