#!/usr/bin/env python3
"""Sample quality against model calls: DDIM-50 vs the multistep solvers at 5..25 steps.

Every setting samples the same ``--num-samples`` digits (labels 0..9 in turn, no guidance, the
same seed) through the torch-free runtime (``Pipeline`` on ONNX Runtime, the shipped digits
model exported to ONNX) and scores them with ``ddpm_export.quality`` (the classifier in
``ddpm_export/models/digit-classifier``): the share classified with confidence > 0.9 and the Fréchet distance
to the held-out real digits in the classifier's feature space (lower is better; the line
"real digits" is held-out vs as many training digits). Images per second are wall-clock of the
sampling alone, on this machine at its current load (printed with ``uptime``'s load average):
indicative only on a shared machine.

    OMP_WAIT_POLICY=PASSIVE python tools/solver_table.py --json solver-table.json --markdown solver-table.md
    OMP_WAIT_POLICY=PASSIVE python tools/solver_table.py --set use_karras_sigmas=false   # another setting
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ddpm_export.checks import check_int, check_steps
from ddpm_export.contract.spec import MAX_BATCH
from ddpm_export.diffusion import SCHEDULERS, DiffusionConfig, sampler_config
from ddpm_export.errors import BadInputError, DdpmExportError, describe, exit_status
from ddpm_export.files import atomic_file, refuse_existing_file, refuse_same_file
from ddpm_export.machine import cpu_info, cpu_line
from ddpm_export.presets import CONFIG_NAME, check_model_name
from ddpm_export.quality import CLASSIFIER_DIR, DigitClassifier, load_digits_split, reference_frechet, score

SOLVER_LABELS = {"ddim": "DDIM", "ddpm": "DDPM", "dpm-solver++": "DPM-Solver++ 2M", "unipc": "UniPC bh2",
                 "dpm-solver": "DPM-Solver 2M", "sde-dpm-solver++": "SDE-DPM-Solver++ 2M"}


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _pipeline(model: str, onnx: Path | None, threads: int, max_batch: int, tmp: Path):
    import onnxruntime as ort

    from ddpm_export.runtime import Pipeline

    if onnx is None:
        from ddpm_export.export.onnx import export_onnx

        onnx = tmp / "model.onnx"
        export_onnx(model, onnx, opt_batch=max_batch, max_batch=max_batch, log=lambda s: None)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return Pipeline.from_onnx(onnx, session_options=opts)


def _settings(args: argparse.Namespace) -> list[tuple[str, int]]:
    runs = [(name, int(steps)) for name, steps in (b.split(":") for b in args.baseline)]
    runs += [(solver, steps) for steps in args.steps for solver in args.solvers]
    return runs


def _row(pipe, sampler: str, steps: int, args, clf, digits) -> dict:
    labels = np.arange(args.num_samples) % 10
    load_before = _load_average()
    start = time.perf_counter()
    x = pipe.sample(args.num_samples, sampler=sampler, steps=steps, seed=args.seed, classes=labels, progress=False)
    seconds = time.perf_counter() - start
    s = score(x, clf, digits.heldout_x, labels)
    return {"sampler": sampler, "steps": steps, "model_calls": steps, "confident_fraction": s.confident_fraction,
            "frechet": s.frechet,
            "class_entropy_bits": s.class_entropy_bits, "label_accuracy": s.class_accuracy,
            "seconds": round(seconds, 2), "images_per_s": args.num_samples / seconds,
            "load_average_before": load_before, "load_average_after": _load_average()}


def markdown(report: dict) -> str:
    lines = ["| sampler | steps (model calls) | confidently classified | Fréchet distance | images/s |",
             "|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {SOLVER_LABELS.get(r['sampler'], r['sampler'])} | {r['steps']} | "
                     f"{r['confident_fraction']:.3f} | {r['frechet']:.2f} | {r['images_per_s']:.1f} |")
    lines.append(f"| real digits (held-out vs {report['num_samples']} training) | – | "
                 f"{report['heldout_real_confident']:.3f} | {report['reference_frechet']:.2f} | – |")
    lines += ["", f"images/s: ONNX Runtime, {report['max_batch']} images per call; {report['machine']}"]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="ddpm_export/models/digits", help="checkpoint folder (exported to ONNX first)")
    p.add_argument("--onnx", type=Path, default=None, help="use this export of --model instead")
    p.add_argument("--num-samples", type=int, default=360, help="digits sampled per row (>= 2)")
    p.add_argument("--baseline", nargs="*", default=["ddim:50"], help="sampler:steps rows first")
    p.add_argument("--solvers", nargs="*", choices=list(SCHEDULERS), metavar="SAMPLER",
                   default=["dpm-solver++", "unipc"], help=f"one of: {', '.join(SCHEDULERS)}")
    p.add_argument("--steps", type=int, nargs="*", default=[5, 10, 15, 20, 25])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=JSON",
                   help="override a DiffusionConfig field of the file for every row, e.g. "
                        "timestep_spacing='\"trailing\"' or use_karras_sigmas=false (repeatable; default: the "
                        "file's sampling defaults)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of every row (>= 0)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--max-batch", type=int, default=120, help="images per model call (export's max batch)")
    p.add_argument("--json", type=Path, default=None, help="write the report here (its folder must exist)")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here (its folder must exist)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json or --markdown file")
    return p


def refuse(p: argparse.ArgumentParser, flag: str, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``; on a BadInputError, exit 2 with its message in one line naming ``flag``."""
    try:
        return check(*args, **kwargs)
    except BadInputError as e:
        message = str(e)
        p.error(message if message.startswith(flag) else f"{flag}: {message}")


def check_output(p: argparse.ArgumentParser, flag: str, path: Path | None, force: bool) -> None:
    """Refuse, before the work, an output file that could not be written after it (a missing folder)
    or that exists (unless ``force``)."""
    if path is None:
        return
    if not path.parent.is_dir():
        p.error(f"{flag} {path}: the folder {path.parent} does not exist")
    refuse(p, flag, refuse_existing_file, path, force)


def parse_overrides(p: argparse.ArgumentParser, overrides: list[str]) -> dict[str, Any]:
    """``--set FIELD=JSON`` as ``{field: value}``: the syntax and the field names (the values: :func:`check_args`)."""
    fields = [f.name for f in dataclasses.fields(DiffusionConfig)]
    changes = {}
    for text in overrides:
        field, sep, value = text.partition("=")
        if not sep:
            p.error(f"--set {text}: expected FIELD=JSON, e.g. use_karras_sigmas=false")
        if field not in fields:
            p.error(f"--set {text}: {field!r} is not a DiffusionConfig field; choose one of: {', '.join(fields)}")
        try:
            changes[field] = json.loads(value)
        except json.JSONDecodeError as e:
            p.error(f"--set {text}: {value!r} is not JSON ({e.msg}); a string needs its quotes, e.g. "
                    f"timestep_spacing='\"trailing\"'")
    return changes


def file_configs(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Any, DiffusionConfig]:
    """The UNetConfig and DiffusionConfig the rows sample with: ``--onnx``'s metadata, else ``--model``'s files."""
    if args.onnx is not None:
        from ddpm_export.runtime import read_info

        info = refuse(p, "--onnx", read_info, args.onnx)
        return info.unet, info.diffusion
    refuse(p, "--model", check_model_name, args.model)  # torch-free, before the imports below load torch
    from ddpm_export.config import UNetConfig
    from ddpm_export.nn.checkpoint import diffusion_config_for, is_diffusers_folder, model_folder
    from ddpm_export.nn.diffusers_import import read_diffusers_config

    folder = model_folder(args.model)
    load = read_diffusers_config if is_diffusers_folder(folder) else UNetConfig.load
    return refuse(p, "--model", load, folder / CONFIG_NAME), (refuse(p, "--model", diffusion_config_for, args.model)
                                                              or DiffusionConfig())


def check_digits_model(p: argparse.ArgumentParser, flag: str, unet: Any) -> None:
    """Refuse a model whose samples the digit classifier cannot score (rows sample classes 0..9)."""
    if (unet.in_channels, unet.sample_size) != (1, 16) or (unet.num_classes or 0) < 10:
        kind = "unconditional" if unet.num_classes is None else f"{unet.num_classes} classes"
        p.error(f"{flag}: it makes {unet.in_channels}x{unet.sample_size}x{unet.sample_size} images ({kind}); the "
                f"digit classifier scores 1x16x16 images of classes 0..9")


def baseline_rows(p: argparse.ArgumentParser, baseline: list[str]) -> list[tuple[str, str, int]]:
    """``(flag, sampler, steps)`` of each ``--baseline SAMPLER:STEPS``, the name and the syntax checked."""
    rows = []
    for text in baseline:
        name, _, steps = text.partition(":")
        flag = f"--baseline {text}"
        if not steps.strip().isdigit():
            p.error(f"{flag}: expected SAMPLER:STEPS, e.g. ddim:50")
        refuse(p, flag, SCHEDULERS.__getitem__, name)  # an unknown sampler, listing the choices
        rows.append((flag, name, int(steps)))
    return rows


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Refuse a bad flag in one line (exit 2) before the export and the sampling; the ``--set`` changes."""
    fd = " (a Fréchet distance needs two samples)"
    for flag, value, low, high, why in (("--num-samples", args.num_samples, 2, None, fd),
                                        ("--seed", args.seed, 0, None, ""), ("--threads", args.threads, 1, None, ""),
                                        ("--max-batch", args.max_batch, 1, MAX_BATCH, "")):
        what = (f"an int >= {low}" if high is None else f"an int in [{low}, {high}]") + why
        refuse(p, flag, check_int, flag, value, low, high, what)
    outputs = {"--json": args.json, "--markdown": args.markdown}
    refuse(p, "--json", refuse_same_file, {"--onnx": args.onnx}, outputs)
    for flag, path in outputs.items():
        check_output(p, flag, path, args.force)
    rows = baseline_rows(p, args.baseline)
    if not rows and not (args.solvers and args.steps):
        given = " ".join(f"{flag}{''.join(f' {v}' for v in values)}" for flag, values in
                         (("--baseline", args.baseline), ("--solvers", args.solvers), ("--steps", args.steps)))
        p.error(f"{given}: no row to run; give --baseline SAMPLER:STEPS, or --solvers SAMPLER... with --steps N...")
    changes = parse_overrides(p, args.overrides)
    unet, base = file_configs(p, args)
    check_digits_model(p, f"--onnx {args.onnx}" if args.onnx is not None else f"--model {args.model}", unet)
    base = refuse(p, "--set", DiffusionConfig.from_dict, {**base.to_dict(), **changes}, source="--set")
    for flag, _, steps in rows:
        refuse(p, flag, check_steps, steps, base.num_train_timesteps, "steps")
    for steps in args.steps:
        refuse(p, "--steps", check_steps, steps, base.num_train_timesteps, "--steps")
    rows += [(f"--solvers {solver} --steps {steps}", solver, steps) for steps in args.steps for solver in args.solvers]
    for flag, sampler, steps in rows:  # as Pipeline.sample checks them, with the file's config
        refuse(p, flag, sampler_config, base, sampler, num_inference_steps=steps)
    return {field: getattr(base, field) for field in changes}


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    changes = check_args(p, args)
    try:
        return run(args, changes)
    except (DdpmExportError, OSError) as e:  # a broken checkpoint, a full disk: one line, the project's status
        print(f"error: {describe(e)}", file=sys.stderr)
        return exit_status(e)


def write_text(path: Path, text: str, force: bool) -> None:
    """``text`` into ``path`` atomically (temp file + rename: never half-written), over a file only if ``force``."""
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")


def run(args: argparse.Namespace, changes: dict[str, Any]) -> int:
    """The table the checked ``args`` ask for (``changes``: the ``--set`` fields); printed, and written."""
    clf = DigitClassifier.load(CLASSIFIER_DIR)
    digits = load_digits_split()
    held = score(digits.heldout_x, clf, digits.heldout_x, digits.heldout_y)
    report = {"model": args.model, "num_samples": args.num_samples, "seed": args.seed, "guidance_scale": 1.0,
              "threads": args.threads, "max_batch": args.max_batch, "cpu": cpu_info(),
              "reference_frechet": reference_frechet(clf, digits, n=args.num_samples, seed=args.seed),
              "heldout_real_confident": held.confident_fraction, "rows": []}
    report["machine"] = cpu_line(report["cpu"], args.threads)  # what the images/s figures were measured on
    print(report["machine"], flush=True)
    with tempfile.TemporaryDirectory(prefix="solver-table-") as tmp:
        pipe = _pipeline(args.model, args.onnx, args.threads, args.max_batch, Path(tmp))
        if changes:  # the sampling defaults of the file, overridden for the table (checked by check_args)
            pipe.info = dataclasses.replace(pipe.info, diffusion=pipe.info.diffusion.replace(**changes))
        report["diffusion"] = pipe.info.diffusion.to_dict()
        for i, (sampler, steps) in enumerate(_settings(args)):
            row = _row(pipe, sampler, steps, args, clf, digits)
            report["rows"].append(row)
            print(f"{sampler:>14s}-{steps:<3d}: confident {row['confident_fraction']:.3f}"
                  f"  FD {row['frechet']:.3f}  {row['images_per_s']:.1f} images/s  (load {row['load_average_before']})",
                  flush=True)
            if args.json is not None:  # after every row (a killed run keeps those done); from row 2 over our own
                write_text(args.json, json.dumps(report, indent=2) + "\n", force=args.force or i > 0)
    table = markdown(report)
    print(table)
    if args.markdown is not None:
        write_text(args.markdown, table, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
