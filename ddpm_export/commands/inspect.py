"""`ddpm-export inspect`: the architecture of a model, measured (blocks, receptive fields, what-if
costs, and where ONNX Runtime spends its time)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ddpm_export.console import IntRange, show_progress
from ddpm_export.contract.spec import MAX_BATCH
from ddpm_export.threads import MAX_THREADS

if TYPE_CHECKING:  # pragma: no cover
    from ddpm_export.analysis.erf import ErfResult
    from ddpm_export.nn.unet import UNet


@click.command("inspect")
@click.option("--model", "-m", "model", required=True,
              help="A preset name (see `ddpm-export models`), our checkpoint folder, or a diffusers UNet2DModel folder.")
@click.option("--batch", "-b", type=IntRange(1, MAX_BATCH), default=1,
              help="Batch for the attention score-matrix sizes and the profile (FLOPs are per image).")
@click.option("-o", "--output", "--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON here.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the ERF heat map as a PNG here.")
@click.option("--erf-samples", type=IntRange(1), default=2,
              help="Random inputs per timestep for the effective receptive field (4 timesteps).")
@click.option("--erf-size", type=IntRange(1), default=None,
              help="Input size for the ERF (default: the model's sample size; at most 4x it); a larger one "
                   "keeps the image borders out of the measurement.")
@click.option("--profile", is_flag=True, help="Also export to ONNX and profile ONNX Runtime (CPU) over a few calls.")
@click.option("--engine", type=click.Path(dir_okay=False), default=None,
              help="With --profile: also TensorRT's per-layer profile of this engine (built from an export of "
                   "--model; its sidecar is checked), on the GPU.")
@click.option("--profile-runs", type=IntRange(1), default=5, help="Profiled calls (after one warm-up call).")
@click.option("--threads", type=IntRange(1, MAX_THREADS), default=None,
              help="Threads for torch and ONNX Runtime [default: the global --threads, else 1].")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
def command(model: str, batch: int, json_path: str | None, plot: str | None, erf_samples: int,
            erf_size: int | None, profile: bool, engine: str | None,
            profile_runs: int, threads: int | None, force: bool) -> None:
    """Per-block table (level, resolution, channels, parameters, FLOPs, receptive field, attention
    cost), totals cross-checked against torch's FlopCounterMode, the effective receptive field,
    what-if costs of separable convolutions and attention, and with --profile the share of ONNX
    Runtime time per op category and per block (with --engine, of TensorRT's layer time too).

    \b
    Examples:
      ddpm-export inspect --model ddpm-cifar10 --profile
      ddpm-export inspect --model tiny --batch 8 --json tiny.json --plot erf.png
      ddpm-export inspect --model tiny --profile --engine tiny.plan
    """
    import time

    from ddpm_export.presets import check_model_name

    check_model_name(model)  # a typo is named as one, not as a missing export extra

    from ddpm_export.analysis import report as rep
    from ddpm_export.analysis.blocks import block_table
    from ddpm_export.analysis.erf import default_timesteps, measure_erf
    from ddpm_export.analysis.whatif import what_if
    from ddpm_export.threads import get_threads

    _check_outputs(model, engine, json_path, plot, force)
    if engine is not None:
        _check_engine_option(engine, profile, batch)
    threads = threads or get_threads() or 1  # a measurement: one fixed count unless asked (the ERF and profile)
    start = time.perf_counter()
    unet, weights = _load(model, threads, erf_size)
    if engine is not None:
        from ddpm_export.analysis.trt_profile import check_built_from

        check_built_from(engine, unet.config)  # before the ERF's minutes, not after
    table = block_table(unet.config, batch)
    report = rep.build_report(str(model), weights, sum(p.numel() for p in unet.parameters()), table,
                              *what_if(unet.config, batch))
    report["seconds"]["tables"] = time.perf_counter() - start
    click.echo(rep.format_tables(report))

    start = time.perf_counter()
    timesteps = default_timesteps(unet.config.num_train_timesteps)
    erf_unet, erf_weights = _erf_subject(unet, weights)
    erf = measure_erf(erf_unet, table.rf, timesteps=timesteps, samples=erf_samples, size=erf_size,
                      progress=show_progress())
    rep.add_erf(report, erf, timesteps, erf_samples, erf_weights)
    report["seconds"]["erf"] = time.perf_counter() - start
    click.echo(rep.format_erf(report))

    if profile:
        _profile(report, unet, batch, profile_runs, threads, engine)
    _write(report, erf, json_path, plot, force)


def _erf_subject(unet: "UNet", weights: str) -> tuple["UNet", str]:
    """The model the ERF is measured on and its weights' description: ``unet``, except a
    seed-initialised one with ``zero_init``, whose residual and attention branches all end in a
    zero layer, so that its gradient would flow through the skip paths alone (ddpm-cifar10: r50 2
    px, 5 with the branches on): the same seed's weights with ``zero_init`` off."""
    if weights != "seed-initialised" or not unet.config.zero_init:
        return unet, weights
    import dataclasses

    from ddpm_export.nn.weights import build_model

    return build_model(dataclasses.replace(unet.config, zero_init=False)).eval(), "seed-initialised, zero_init off"


def _check_engine_option(engine: str, profile: bool, batch: int) -> None:
    """Refuse ``--engine`` before any work: without --profile, without TensorRT or a GPU
    (MissingDependencyError, exit 2), or with an engine that is missing, has no sidecar or does
    not take ``batch``."""
    from ddpm_export.analysis.trt_profile import check_engine, require_gpu
    from ddpm_export.errors import BadInputError

    if not profile:
        raise BadInputError("--engine profiles the engine: it needs --profile")
    require_gpu()
    check_engine(engine, batch)


def _profile(report: dict[str, Any], unet: "UNet", batch: int, runs: int, threads: int, engine: str | None) -> None:
    """ONNX Runtime's profile, then with ``engine`` TensorRT's per-layer profile, printed and added to ``report``."""
    import time

    from ddpm_export.analysis import report as rep
    from ddpm_export.analysis.profile import profile_onnxruntime

    start = time.perf_counter()
    rep.add_profile(report, profile_onnxruntime(unet, batch=batch, runs=runs, threads=threads))
    report["seconds"]["profile"] = time.perf_counter() - start
    click.echo("\n" + rep.format_profile(report))
    if engine is not None:
        from ddpm_export.analysis.trt_profile import profile_tensorrt

        start = time.perf_counter()
        rep.add_trt_profile(report, profile_tensorrt(unet, engine, batch=batch, runs=runs), str(engine))
        report["seconds"]["tensorrt_profile"] = time.perf_counter() - start
        click.echo("\n" + rep.format_trt_profile(report))


def _check_outputs(model: str, engine: str | None, json_path: str | None, plot: str | None, force: bool) -> None:
    """Refuse outputs that would print nothing (-q), overwrite an input (the model's files, the
    engine or its sidecar: even with --force) or an existing file (without --force), or a plot
    that is not .png: :class:`~ddpm_export.errors.BadInputError`, exit status 2."""
    from ddpm_export.console import require_output_when_quiet
    from ddpm_export.files import refuse_existing_file, refuse_same_file, require_suffix
    from ddpm_export.inputs import input_files

    require_output_when_quiet({"--json": json_path, "--plot": plot})
    refuse_same_file({"--engine": engine, **input_files(model=model, engine=engine)},
                     {"--json": json_path, "--plot": plot})
    require_suffix("--plot", plot, ".png")
    for path in (json_path, plot):
        if path is not None:
            refuse_existing_file(path, force)


def _load(model: str, threads: int, erf_size: int | None) -> tuple["UNet", str]:
    """Load the model and check --erf-size against it: ``(unet, "trained" | "seed-initialised")``."""
    import torch

    from ddpm_export import load_model
    from ddpm_export.analysis.erf import check_erf_size
    from ddpm_export.nn.checkpoint import seed_initialised

    torch.set_num_threads(threads)
    unet = load_model(model)
    weights = "seed-initialised" if seed_initialised(model) else "trained"
    check_erf_size(unet.config, erf_size)
    return unet, weights


def _write(report: dict[str, Any], erf: "ErfResult", json_path: str | None, plot: str | None, force: bool) -> None:
    """The ERF plot and the JSON report, atomically together (both or neither)."""
    import json

    from ddpm_export.analysis.plot import erf_image
    from ddpm_export.files import atomic_files

    with atomic_files(plot, json_path, force=force) as (tmp_plot, tmp_json):
        if tmp_plot is not None:
            erf_image(erf).save(tmp_plot, format="PNG")
        if tmp_json is not None:
            tmp_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for path in (plot, json_path):
        if path is not None:
            click.echo(f"wrote {path}")
