"""`ddpm-export verify`: whole-trajectory comparison of an export against PyTorch."""

from __future__ import annotations

import click

from ddpm_export.console import FloatRange, IntRange
from ddpm_export.contract.choices import ORT_GPU_BACKENDS


@click.command("verify")
@click.option("--model", "-m", "model", required=True,
              help="The model the file was exported from: a preset name, our checkpoint folder or a diffusers folder.")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The exported ONNX file.")
@click.option("--engine", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Also verify this TensorRT engine (built from --onnx; needs tensorrt and a GPU).")
@click.option("--steps", type=IntRange(1), default=None,
              help="DDIM trajectory steps [default: 50, or T for a model trained with fewer timesteps].")
@click.option("--ddpm-steps", type=IntRange(1), default=None,
              help="Respace the DDPM trajectory to this many steps [default: all T]; for big models "
                   "(the report notes it).")
@click.option("--solver-steps", type=IntRange(1), default=None,
              help="Steps of the DPM-Solver++ and UniPC trajectories [default: 10, at most T - 1].")
@click.option("--seed", type=IntRange(0), default=0, help="Noise seed, the same on both sides.")
@click.option("--batch", type=IntRange(1), default=2, help="Images per trajectory.")
@click.option("--guidance", type=FloatRange(), default=1.0,
              help="Classifier-free guidance scale of the trajectories (class-conditional models); 1 = none.")
@click.option("-o", "--output", "--report", "report", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON here.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Plot the per-step error against step to this PNG (needs matplotlib).")
@click.option("--backend", "gpu_backends", type=click.Choice(("openvino", *ORT_GPU_BACKENDS)), multiple=True,
              help="Also verify the file on OpenVINO (the openvino extra) or ONNX Runtime's GPU provider(s) "
                   "(onnxruntime-gpu); repeatable. Each is held to the thresholds of the precision it computes.")
@click.option("--inference-precision", type=click.Choice(("f32", "bf16")), default=None,
              help="OpenVINO: compute in f32 or bf16 [default: OpenVINO's choice, bf16 on CPUs with BF16].")
@click.option("--force", is_flag=True, help="Overwrite existing --report / --plot files.")
def command(model: str, onnx_path: str, engine: str | None, steps: int | None, ddpm_steps: int | None,
            solver_steps: int | None, seed: int, batch: int, guidance: float, report: str | None, plot: str | None,
            gpu_backends: tuple[str, ...], inference_precision: str | None, force: bool) -> None:
    """Verify an ONNX file (and an engine) against the PyTorch model, step by step.

    \b
    1. single model calls at t = 0, 937, T/2, T-1, at the exported min/opt/max batch and,
       for class-conditional models, over class ids and the null class;
    2. DDIM (--steps), DDPM (all T steps), DPM-Solver++ and UniPC (--solver-steps)
       trajectories with identical noise on both sides: per-step max abs error of the model
       output and of x_t, and of each model call re-run on the reference's inputs ("local");
    3. the final samples: max abs, relative L2, PSNR = 10 log10(4 / MSE).
    Thresholds by the precision each backend computes: fp32 PSNR >= 60 dB, single step max
    abs <= 1e-4 (times the output's RMS where that exceeds 1); fp16 PSNR >= 40 dB, relative
    L2 <= 2e-2 (TensorRT, GPU providers, OpenVINO f16; on ONNX Runtime's CPU provider and OpenVINO f32, one
    call <= 4e-3, the export's own limit); bf16 PSNR >= 40 dB, relative L2 <= 2e-2 (local
    0.25); int8 PSNR >= 35 dB, relative L2 <= 5e-2 (local 0.6); the measured margins behind
    them: ddpm_export.metrics.
    A final PSNR miss where PyTorch misses too against itself (from x_T + 1 ulp for fp32;
    else with random errors of the backend's own per-call size, which it must come within
    6 dB of) is ill-conditioned: judged by the per-call errors. A final sample of NaN fails.
    Exits with status 1 naming the failed checks.
    \b
    Example:
      ddpm-export verify --model tiny --onnx tiny.onnx --report report.json --plot drift.png
    """
    from ddpm_export.console import show_progress, use_flag_names
    from ddpm_export.errors import VerificationFailed
    from ddpm_export.files import atomic_files
    from ddpm_export.presets import check_model_name

    check_model_name(model)  # a typo is named as one, not as a missing export extra

    from ddpm_export.verify import draw_drift, report_json, verify

    use_flag_names({"guidance_scale": "--guidance", "steps": "--steps", "ddpm_steps": "--ddpm-steps",
                    "solver_steps": "--solver-steps", "batch": "--batch",
                    "inference_precision": "--inference-precision"})
    _check_outputs(model, onnx_path, engine, report, plot, force)
    result = verify(model, onnx_path, engine=engine, steps=steps, ddpm_steps=ddpm_steps, solver_steps=solver_steps,
                    seed=seed, batch=batch, guidance_scale=guidance, gpu_backends=gpu_backends,
                    inference_precision=inference_precision, log=click.echo, progress=show_progress())
    with atomic_files(report, plot, force=force) as (report_tmp, plot_tmp):  # both files or neither
        if report_tmp is not None:
            report_tmp.write_text(report_json(result), encoding="utf-8")
        if plot_tmp is not None:
            draw_drift(result, plot_tmp)
    for path in (report, plot):
        if path is not None:
            click.echo(f"wrote {path}")
    for note in result["notes"]:
        click.echo(f"note: {note}")
    if not result["passed"]:
        click.echo("verify FAILED:", err=True)
        for failure in result["failures"]:
            click.echo(f"  {failure}", err=True)
        raise VerificationFailed(f"{len(result['failures'])} of {len(result['checks'])} checks failed")
    click.echo(f"verify passed ({len(result['checks'])} checks, {result['seconds']:.1f} s)")


def _check_outputs(model: str, onnx_path: str, engine: str | None, report: str | None, plot: str | None,
                   force: bool) -> None:
    """Refuse, before any work, a --report or --plot that is an input, a plot not a .png, an existing
    file without ``force``, and --plot without matplotlib."""
    from ddpm_export.files import refuse_existing_file, refuse_same_file, require_suffix
    from ddpm_export.inputs import input_files

    refuse_same_file({"--onnx": onnx_path, "--engine": engine, **input_files(model=model, onnx=onnx_path, engine=engine)},
                     {"--report": report, "--plot": plot})
    require_suffix("--plot", plot, ".png")
    for path in (report, plot):
        if path is not None:
            refuse_existing_file(path, force)
    if plot is not None:
        _require_matplotlib()


def _require_matplotlib() -> None:
    """--plot's matplotlib; where the export extra is missing too, both in one line: the user
    would otherwise learn of the second only after installing the first."""
    from importlib import import_module

    from ddpm_export.errors import CPU_TORCH, EXPORT_EXTRA, MissingDependencyError
    from ddpm_export.verify import require_matplotlib

    try:
        require_matplotlib()
    except MissingDependencyError:
        for name in EXPORT_EXTRA:
            try:
                import_module(name)
            except ImportError:
                torch_first = f" (first the CPU build of torch: {CPU_TORCH})" if name == "torch" else ""
                raise MissingDependencyError(
                    f"verify needs the export extra (no module {name!r}) and, for --plot, the plot extra (no module "
                    f"'matplotlib'): pip install 'ddpm-export[export,plot]'{torch_first}") from None
        raise
