"""`ddpm-export demo`: the whole story on the shipped model, in a few minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ddpm_export.console import IntRange
from ddpm_export.errors import MissingDependencyError

#: Classifier-free guidance of the demo grid for class-conditional models: modest, so that the
#: classes are clearly told apart without the over-saturation of large scales (Ho & Salimans use 1-4).
DEMO_GUIDANCE = 1.5  # the digits model's samples degrade from 2 on (models/digits/README.md)
#: Rows per model call in the demo's trajectory check: 2 images, or 1 image with guidance (its
#: conditional and null-class rows), so that DDPM over all T = 1000 steps fits the time budget.
VERIFY_ROWS = 2


#: what the demo writes into --out: --force replaces only such a folder
DEMO_FILES = ("model.onnx", "grid.png", "samples.npy", "report.json", "drift.png")


@click.command("demo")
@click.option("--model", "-m", "model", default=None,
              help="Preset name or checkpoint folder [default: digits if shipped, else tiny].")
@click.option("-o", "--output", "--out", "out_dir", type=click.Path(file_okay=False), default="demo-out",
              help="Folder to write.")
@click.option("--ddpm-steps", type=IntRange(1), default=None,
              help="Respace the verified DDPM trajectory to this many steps [default: all T].")
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
def command(model: str | None, out_dir: str, ddpm_steps: int | None, force: bool) -> None:
    """Export to ONNX (fp32), sample with ONNX Runtime, verify against PyTorch.

    \b
    Writes into --out (built under a temporary name, renamed when complete):
      model.onnx   the export, its config, schedule and precision in the metadata
      grid.png     samples from ONNX Runtime (class-conditional: every class in turn,
                   one row per pass, guidance scale 1.5)
      samples.npy  the same samples, [n, C, H, W] float32 in [-1, 1]
      report.json  `ddpm-export verify`'s report: single steps, DDIM-50, DDPM over all
                   T steps, DPM-Solver++-10 and UniPC-10 trajectories, final-sample PSNR
      drift.png    per-step error against step (when matplotlib is installed)
    Exits with status 1 when verification fails (the folder is still written).
    \b
    Examples:
      ddpm-export demo                                  # the shipped digits model, into demo-out/
      ddpm-export demo --model tiny --out tiny-demo --ddpm-steps 100
    """
    import time

    from ddpm_export.console import use_flag_names
    from ddpm_export.errors import VerificationFailed
    from ddpm_export.files import OutputFolder, atomic_dir, refuse_inside, refuse_nameless_folder
    from ddpm_export.inputs import input_files
    from ddpm_export.presets import check_model_name, default_model

    use_flag_names({"ddpm_steps": "--ddpm-steps"})
    start = time.perf_counter()
    model = default_model() if model is None else model
    check_model_name(model)  # "" is not the default model
    refuse_nameless_folder(out_dir)  # as typed: '-' is refused, ./- is a folder of that name
    out = Path(out_dir)
    refuse_inside({"--out": out}, {"--model": model if Path(model).exists() else None, **input_files(model=model)},
                  "replacing the folder would delete the model; choose a new folder")
    if ddpm_steps is not None:  # before minutes of export and sampling
        from ddpm_export.checks import check_steps
        from ddpm_export.diffusion.config import DiffusionConfig
        from ddpm_export.nn.checkpoint import diffusion_config_for

        check_steps(ddpm_steps, (diffusion_config_for(model) or DiffusionConfig()).num_train_timesteps, "ddpm_steps")
    with atomic_dir(out, OutputFolder("report.json", frozenset(DEMO_FILES)), force=force) as tmp:
        guidance = _export_and_sample(model, out, tmp)
        report = _verify(model, out, tmp, guidance, ddpm_steps)

    click.echo(f"\nwrote {out}/: model.onnx, grid.png, samples.npy, report.json"
               + (", drift.png" if (out / "drift.png").exists() else ""))
    verdict = "PASSED" if report["passed"] else "FAILED"
    click.echo(f"verification {verdict}: {sum(c['passed'] for c in report['checks'])}/{len(report['checks'])} checks; "
               f"total {time.perf_counter() - start:.0f} s")
    for check in report["checks"]:
        click.echo(f"  {'ok ' if check['passed'] else 'BAD'} {check['message']}")
    if not report["passed"]:
        raise VerificationFailed(f"{len(report['failures'])} of {len(report['checks'])} checks failed")


def _export_and_sample(model: str, out: Path, tmp: Path) -> float:
    """Steps 1 and 2: export to ``tmp/model.onnx``, sample the grid; returns the guidance used."""
    import time

    from ddpm_export.console import show_progress
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.images import save_grid, save_npy
    from ddpm_export.runtime import Pipeline

    quiet = lambda message: None  # noqa: E731 - export_onnx's per-batch lines are too detailed here
    click.echo(f"[1/3] export {model} -> {out / 'model.onnx'} (fp32)")
    t0 = time.perf_counter()
    exported = export_onnx(model, tmp / "model.onnx", precision="fp32", log=quiet)
    click.echo(f"      {exported.size_bytes / 2**20:.2f} MiB, validated against PyTorch "
               f"(max abs {exported.validation.max_abs:.1e}) in {time.perf_counter() - t0:.1f} s")

    pipe = Pipeline.from_onnx(tmp / "model.onnx")
    info = pipe.info
    info.spec.conditioning.require_default_input(model, "the demo", exported=False)  # before sampling
    classes = info.num_classes
    n = 2 * classes if classes else 16
    guidance = DEMO_GUIDANCE if classes and info.null_class_id is not None else 1.0
    cfg = info.diffusion
    click.echo(f"[2/3] sample {n} images with ONNX Runtime: {cfg.sampler.upper()}-{cfg.num_inference_steps}"
               + (f", classes 0..{classes - 1} twice, guidance {guidance:g}" if classes else ""))
    t0 = time.perf_counter()
    images = pipe.sample(n, seed=0, guidance_scale=guidance, progress=show_progress())
    seconds = time.perf_counter() - t0
    scale = max(1, 64 // info.spec.sample_size)
    save_grid(images, tmp / "grid.png", columns=classes or None, scale=scale)
    save_npy(images, tmp / "samples.npy")
    click.echo(f"      {seconds:.1f} s ({n / seconds:.1f} images/s) -> grid.png, samples.npy")
    return guidance


def _verify(model: str, out: Path, tmp: Path, guidance: float, ddpm_steps: int | None) -> dict[str, Any]:
    """Step 3: verify ``tmp/model.onnx`` against PyTorch; writes report.json (and drift.png)."""
    from ddpm_export.console import show_progress
    from ddpm_export.verify import plot_drift, verify, write_report

    batch = VERIFY_ROWS // (2 if guidance != 1.0 else 1)
    click.echo(f"[3/3] verify against PyTorch (seed 0, {batch} image(s) per trajectory"
               + (f", guidance {guidance:g}" if guidance != 1.0 else "") + ")")
    report = verify(model, tmp / "model.onnx", batch=batch, guidance_scale=guidance, ddpm_steps=ddpm_steps,
                    log=lambda m: click.echo("      " + m.strip().replace(str(tmp), str(out))),  # not the temp name
                    progress=show_progress())
    report["onnx"] = str(out / "model.onnx")
    write_report(report, tmp / "report.json")
    try:
        plot_drift(report, tmp / "drift.png")
    except MissingDependencyError:  # the message of `verify --plot` names a flag the demo has not
        click.echo("      no drift.png: it needs matplotlib, which is not installed: pip install 'ddpm-export[plot]'")
    return report
