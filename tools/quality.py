#!/usr/bin/env python3
"""Score the digits model's samples with the offline metric of ``ddpm_export.quality``.

Reports, for samples of the checkpoint's default sampler and steps (its diffusion.json; digits:
UniPC-10) unless ``--sampler`` / ``--steps`` override them:

- the classifier on the held-out real digits (accuracy, confident fraction): the metric's own check;
- the reference Fréchet distance: held-out real vs as many training real digits as samples;
- class-conditional samples without guidance, labels 0..9 in turn: confident fraction (> 0.9),
  entropy of the predicted-class histogram (bits; log2 10 = 3.32 is balanced), Fréchet distance
  vs the held-out digits and its ratio to the reference;
- guided samples (``--guidance``): the share predicted as the requested class;
- ``--compare``: the same seeds through PyTorch and ONNX Runtime; sample difference and both scores;
- ``--low-precision``: the same seeds through every low-precision path -- int8 (QDQ, calibrated on
  the sampler's trajectories; each backend runs the file exported with its ``--target``) in ONNX
  Runtime and OpenVINO, OpenVINO bf16 on the fp32 file -- each scored against fp32 ONNX Runtime
  with the targets confident fraction within 0.02 and Fréchet distance within 1.15x.

    OMP_WAIT_POLICY=PASSIVE python tools/quality.py --model ddpm_export/models/digits --compare --json quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ddpm_export.checks import check_guidance_scale, check_int, check_steps
from ddpm_export.contract.spec import MAX_BATCH
from ddpm_export.diffusion import SCHEDULERS, DiffusionConfig, make_scheduler
from ddpm_export.errors import BadInputError, DdpmExportError, describe, exit_status
from ddpm_export.files import atomic_file, refuse_existing_file
from ddpm_export.machine import cpu_info, cpu_line
from ddpm_export.presets import CONFIG_NAME, check_model_name
from ddpm_export.quality import (CLASSIFIER_DIR, DigitClassifier, generate, load_digits_split, onnx_backend,
                                 reference_frechet, score)


def torch_backend(model: str, threads: int):
    import torch

    from ddpm_export import load_model
    from ddpm_export.torch_backend import TorchBackend

    torch.set_num_threads(threads)
    return TorchBackend(load_model(model))


def exported_backend(model: str, onnx_path: Path, threads: int, max_batch: int):
    if not onnx_path.exists():
        from ddpm_export.export.onnx import export_onnx

        export_onnx(model, onnx_path, opt_batch=min(64, max_batch), max_batch=max_batch, log=lambda s: None)
    return onnx_backend(onnx_path, threads=threads)


LOW_PRECISION_PATHS = {  # name -> ((file precision, --target), backend, OpenVINO inference precision)
    "fp32 onnxruntime": (("fp32", "any"), "onnxruntime", None),
    "int8 onnxruntime": (("int8", "onnxruntime"), "onnxruntime", None),
    "int8 openvino": (("int8", "openvino"), "openvino", "f32"),
    "int8 openvino bf16": (("int8", "openvino"), "openvino", "bf16"),
    "bf16 openvino": (("fp32", "any"), "openvino", "bf16"),
}


def asked_bf16(name: str, row: dict) -> bool:
    """Whether the path ``name`` asked OpenVINO for bf16 and ``row`` says it computed in another precision."""
    return LOW_PRECISION_PATHS[name][2] == "bf16" and row["computed_in"] != "bf16"


def low_precision(model: str, folder: Path, labels: np.ndarray, scheduler, clf, digits, null_class: int,
                  args: argparse.Namespace) -> dict:
    """Score every low-precision path on the same seeds against fp32 ONNX Runtime."""
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime import read_info
    from ddpm_export.runtime.backends import RuntimeOptions, load_onnx_backend
    from ddpm_export.runtime.openvino_backend import OpenVinoBackend

    max_batch = 2 * args.batch_size
    files = {key: folder / f"digits-{key[0]}-{key[1]}.onnx" for key, _, _ in LOW_PRECISION_PATHS.values()}
    for (precision, target), path in files.items():  # int8: each backend's file (--target: the QDQ layout)
        export_onnx(model, path, precision=precision, target=target, opt_batch=min(64, max_batch),
                    max_batch=max_batch, log=lambda s: None)
    out: dict = {}
    for name, (key, backend, ov_precision) in LOW_PRECISION_PATHS.items():
        path = files[key]
        runner = load_onnx_backend(backend, path, read_info(path).spec,
                                   RuntimeOptions(threads=args.threads, inference_precision=ov_precision))
        # what OpenVINO computed in: f32 where this CPU has no bf16, whatever the path's name asks for
        computed = runner.inference_precision if isinstance(runner, OpenVinoBackend) else "f32"
        start = time.perf_counter()
        x = generate(runner, scheduler, labels, seed=args.seed, null_class=null_class, batch_size=args.batch_size)
        r = score(x, clf, digits.heldout_x, labels)
        out[name] = {**r.to_dict(), "seconds": round(time.perf_counter() - start, 1), "computed_in": computed}
    base = out["fp32 onnxruntime"]
    for name, r in out.items():
        r["confident_delta"] = r["confident_fraction"] - base["confident_fraction"]
        r["frechet_ratio_to_fp32"] = r["frechet"] / base["frechet"]
        r["within_targets"] = abs(r["confident_delta"]) <= 0.02 and r["frechet_ratio_to_fp32"] <= 1.15
        print(f"  {name:20s} confident {r['confident_fraction']:.4f} ({r['confident_delta']:+.4f})  "
              f"FD {r['frechet']:.4f} ({r['frechet_ratio_to_fp32']:.3f}x fp32)  "
              f"{'within targets' if r['within_targets'] else 'OUTSIDE targets'}  ({r['seconds']:.0f} s)"
              + (f"  (computed in {r['computed_in']}: this CPU has no bf16)" if asked_bf16(name, r) else ""))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="digits", help="preset name or checkpoint folder")
    p.add_argument("--classifier", default=str(CLASSIFIER_DIR), help="digit classifier folder")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx",
                   help="engine for the main scores (ONNX Runtime exports the model to a temp file first)")
    p.add_argument("--num-samples", type=int, default=1000, help="unguided samples, labels 0..9 in turn (>= 2)")
    p.add_argument("--per-class", type=int, default=20, help="guided samples per requested class (>= 1)")
    p.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance scale of the guided run")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's diffusion.json)")
    p.add_argument("--sampler", choices=list(SCHEDULERS), default=None, help="default: the checkpoint's diffusion.json")
    p.add_argument("--batch-size", type=int, default=125, help="samples per sampling batch (guided runs double it)")
    p.add_argument("--compare", action="store_true", help="also sample --compare-samples with both engines")
    p.add_argument("--compare-samples", type=int, default=200, help="samples per engine of --compare (>= 2)")
    p.add_argument("--low-precision", action="store_true",
                   help="only score int8 (ONNX Runtime, OpenVINO) and OpenVINO bf16 against fp32, same seeds")
    p.add_argument("--seed", type=int, default=0, help="noise seed (>= 0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the engines (>= 1)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here (its folder must exist)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
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


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a bad flag in one line (exit 2), before any export, sampling or torch model."""
    fd = " (a Fréchet distance needs two samples)"
    for flag, value, low, high, why in (("--num-samples", args.num_samples, 2, None, fd),
                                        ("--per-class", args.per_class, 1, None, ""),
                                        ("--compare-samples", args.compare_samples, 2, None, fd),
                                        ("--batch-size", args.batch_size, 1, MAX_BATCH // 2,
                                         f" (the export takes twice as many rows, at most {MAX_BATCH})"),
                                        ("--seed", args.seed, 0, None, ""), ("--threads", args.threads, 1, None, "")):
        what = (f"an int >= {low}" if high is None else f"an int in [{low}, {high}]") + why
        refuse(p, flag, check_int, flag, value, low, high, what)
    refuse(p, "--guidance", check_guidance_scale, args.guidance)
    check_output(p, "--json", args.json, args.force)
    refuse(p, "--model", check_model_name, args.model)


def model_configs(p: argparse.ArgumentParser, model: str) -> tuple[Any, DiffusionConfig]:
    """The UNetConfig and DiffusionConfig of ``--model`` (a checked name), or exit 2 naming it."""
    from ddpm_export.config import UNetConfig
    from ddpm_export.nn.checkpoint import diffusion_config_for, is_diffusers_folder, model_folder
    from ddpm_export.nn.diffusers_import import read_diffusers_config

    folder = model_folder(model)
    load = read_diffusers_config if is_diffusers_folder(folder) else UNetConfig.load
    return refuse(p, "--model", load, folder / CONFIG_NAME), (refuse(p, "--model", diffusion_config_for, model)
                                                              or DiffusionConfig())


def check_digits_model(p: argparse.ArgumentParser, flag: str, unet: Any, guidance: float) -> None:
    """Refuse a model whose samples the digit classifier cannot score, or guidance it cannot run."""
    if (unet.in_channels, unet.sample_size) != (1, 16) or (unet.num_classes or 0) < 10:
        kind = "unconditional" if unet.num_classes is None else f"{unet.num_classes} classes"
        p.error(f"{flag}: it makes {unet.in_channels}x{unet.sample_size}x{unet.sample_size} images ({kind}); the "
                f"digit classifier scores 1x16x16 images of classes 0..9 (e.g. --model digits)")
    if guidance != 1.0 and not unet.null_class:
        p.error(f"--guidance {guidance:g} needs a null class and {flag} has none (null_class=false); pass --guidance 1")


def schedule(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Any, str, int]:
    """The scheduler --sampler / --steps name, its label and the model's null class id, or exit 2 naming a flag."""
    unet, dcfg = model_configs(p, args.model)
    check_digits_model(p, f"--model {args.model}", unet, 1.0 if args.low_precision else args.guidance)
    changes = {}
    if args.steps is not None:
        changes["num_inference_steps"] = refuse(p, "--steps", check_steps, args.steps, dcfg.num_train_timesteps,
                                                "--steps")
    given = " ".join(f"--{k} {v}" for k, v in (("sampler", args.sampler), ("steps", args.steps)) if v is not None)
    scheduler = refuse(p, given, make_scheduler, dcfg, args.sampler, **changes)  # validated as that sampler's
    steps = changes.get("num_inference_steps", dcfg.num_inference_steps)
    return scheduler, f"{args.sampler or dcfg.sampler}-{steps}", unet.num_classes


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)
    try:
        return run(p, args)
    except (DdpmExportError, OSError) as e:  # a broken checkpoint, a full disk: one line, the project's status
        print(f"error: {describe(e)}", file=sys.stderr)
        return exit_status(e)


def write_json(args: argparse.Namespace, report: dict) -> None:
    """``report`` into ``--json`` (if given), atomically: temp file + rename, over a file only with --force."""
    if args.json is not None:
        with atomic_file(args.json, force=args.force) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


def run(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Sample and score what the checked ``args`` ask for; print the figures, write ``--json``."""
    scheduler, sampler_name, null_class = schedule(p, args)  # null_class: the null id
    t0 = time.perf_counter()
    clf = refuse(p, "--classifier", DigitClassifier.load, args.classifier)
    digits = load_digits_split()
    held = score(digits.heldout_x, clf, digits.heldout_x, digits.heldout_y)
    report: dict = {"model": args.model, "sampler": sampler_name, "seed": args.seed, "threads": args.threads,
                    "cpu": cpu_info(), "heldout_real": {"accuracy": held.class_accuracy, "confident_fraction": held.confident_fraction,
                                     "class_entropy_bits": held.class_entropy_bits}}
    print(f"classifier on {held.num_samples} held-out real digits: accuracy {held.class_accuracy:.4f}, "
          f"confident {held.confident_fraction:.4f}")
    print(cpu_line(report["cpu"], args.threads))  # what the seconds were measured on (and bf16 ran on)

    tmp = tempfile.TemporaryDirectory(prefix="ddpm-quality-")
    max_batch = 2 * args.batch_size
    backends = {}

    def get(name: str):
        if name not in backends:
            backends[name] = (exported_backend(args.model, Path(tmp.name) / "digits.onnx", args.threads, max_batch)
                              if name == "onnx" else torch_backend(args.model, args.threads))
        return backends[name]

    n = args.num_samples
    if args.low_precision:
        print(f"low-precision paths, {n} samples ({sampler_name}, no guidance), same seeds:")
        report["low_precision"] = low_precision(args.model, Path(tmp.name), np.arange(n) % 10, scheduler, clf,
                                                digits, null_class, args)
        report["low_precision_samples"] = n
        write_json(args, report)
        tmp.cleanup()
        return 0
    ref = reference_frechet(clf, digits, n=n, seed=args.seed)
    ref_full = reference_frechet(clf, digits)
    labels = np.arange(n) % 10
    start = time.perf_counter()
    samples = generate(get(args.backend), scheduler, labels, seed=args.seed, null_class=null_class,
                       batch_size=args.batch_size, progress=True)
    uncond = score(samples, clf, digits.heldout_x, labels)
    report["reference_frechet"] = {"heldout_vs_train_subset": ref, "subset_size": min(n, len(digits.train_x)),
                                   "heldout_vs_full_train": ref_full}
    report["samples"] = {**uncond.to_dict(), "frechet_ratio": uncond.frechet / ref, "backend": args.backend,
                         "seconds": round(time.perf_counter() - start, 1)}
    print(f"reference FD held-out vs {min(n, len(digits.train_x))} training digits: {ref:.3f} "
          f"(vs all {len(digits.train_x)}: {ref_full:.3f})")
    print(f"{n} samples ({sampler_name}, no guidance, {args.backend}): confident {uncond.confident_fraction:.4f}, "
          f"entropy {uncond.class_entropy_bits:.3f} bits, FD {uncond.frechet:.3f} = {uncond.frechet / ref:.2f}x "
          f"reference, label accuracy {uncond.class_accuracy:.4f}")

    g_labels = np.repeat(np.arange(10), args.per_class)
    start = time.perf_counter()
    g_samples = generate(get(args.backend), scheduler, g_labels, seed=args.seed + 10_000, null_class=null_class,
                         guidance_scale=args.guidance, batch_size=args.batch_size, progress=True)
    guided = score(g_samples, clf, digits.heldout_x, g_labels)
    report["guided"] = {**guided.to_dict(), "guidance_scale": args.guidance,
                        "seconds": round(time.perf_counter() - start, 1)}
    print(f"{len(g_labels)} guided samples (scale {args.guidance:g}): requested class predicted "
          f"{guided.class_accuracy:.4f}, confident {guided.confident_fraction:.4f}, FD {guided.frechet:.3f}")

    if args.compare:
        m = args.compare_samples
        c_labels = np.arange(m) % 10
        runs = {}
        for name in ("torch", "onnx"):
            start = time.perf_counter()
            x = generate(get(name), scheduler, c_labels, seed=args.seed, null_class=null_class,
                         batch_size=args.batch_size)
            runs[name] = (x, score(x, clf, digits.heldout_x, c_labels), time.perf_counter() - start)
        diff = float(np.abs(runs["torch"][0] - runs["onnx"][0]).max())
        report["compare"] = {"num_samples": m, "max_abs_sample_diff": diff,
                             **{name: {**r[1].to_dict(), "seconds": round(r[2], 1)} for name, r in runs.items()}}
        print(f"torch vs onnxruntime on {m} samples, same seeds: max |diff| {diff:.2e}")
        for name, (_, r, secs) in runs.items():
            print(f"  {name:6s} confident {r.confident_fraction:.4f}  entropy {r.class_entropy_bits:.4f}  "
                  f"FD {r.frechet:.4f}  label accuracy {r.class_accuracy:.4f}  ({secs:.0f} s)")

    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args, report)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
