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
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ddpm_export.diffusion import SCHEDULERS, DiffusionConfig, make_scheduler
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


def low_precision(model: str, folder: Path, labels: np.ndarray, scheduler, clf, digits, null_class: int,
                  args: argparse.Namespace) -> dict:
    """Score every low-precision path on the same seeds against fp32 ONNX Runtime."""
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime import read_info
    from ddpm_export.runtime.backends import RuntimeOptions, load_onnx_backend

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
        start = time.perf_counter()
        x = generate(runner, scheduler, labels, seed=args.seed, null_class=null_class, batch_size=args.batch_size)
        r = score(x, clf, digits.heldout_x, labels)
        out[name] = {**r.to_dict(), "seconds": round(time.perf_counter() - start, 1)}
    base = out["fp32 onnxruntime"]
    for name, r in out.items():
        r["confident_delta"] = r["confident_fraction"] - base["confident_fraction"]
        r["frechet_ratio_to_fp32"] = r["frechet"] / base["frechet"]
        r["within_targets"] = abs(r["confident_delta"]) <= 0.02 and r["frechet_ratio_to_fp32"] <= 1.15
        print(f"  {name:20s} confident {r['confident_fraction']:.4f} ({r['confident_delta']:+.4f})  "
              f"FD {r['frechet']:.4f} ({r['frechet_ratio_to_fp32']:.3f}x fp32)  "
              f"{'within targets' if r['within_targets'] else 'OUTSIDE targets'}  ({r['seconds']:.0f} s)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="digits", help="preset name or checkpoint folder")
    p.add_argument("--classifier", default=str(CLASSIFIER_DIR), help="digit classifier folder")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx",
                   help="engine for the main scores (ONNX Runtime exports the model to a temp file first)")
    p.add_argument("--num-samples", type=int, default=1000, help="unguided samples, labels 0..9 in turn")
    p.add_argument("--per-class", type=int, default=20, help="guided samples per requested class")
    p.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance scale of the guided run")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's diffusion.json)")
    p.add_argument("--sampler", choices=list(SCHEDULERS), default=None, help="default: the checkpoint's diffusion.json")
    p.add_argument("--batch-size", type=int, default=125, help="samples per sampling batch (guided runs double it)")
    p.add_argument("--compare", action="store_true", help="also sample --compare-samples with both engines")
    p.add_argument("--compare-samples", type=int, default=200)
    p.add_argument("--low-precision", action="store_true",
                   help="only score int8 (ONNX Runtime, OpenVINO) and OpenVINO bf16 against fp32, same seeds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)

    from ddpm_export.config import UNetConfig
    from ddpm_export.nn.checkpoint import diffusion_config_for, model_folder

    t0 = time.perf_counter()
    dcfg = diffusion_config_for(args.model) or DiffusionConfig()
    if args.steps is not None:
        dcfg = dataclasses.replace(dcfg, num_inference_steps=args.steps)
    scheduler = make_scheduler(dcfg, args.sampler)
    sampler_name = f"{args.sampler or dcfg.sampler}-{dcfg.num_inference_steps}"
    null_class = UNetConfig.load(model_folder(args.model) / "config.json").num_classes  # the null id

    clf = DigitClassifier.load(args.classifier)
    digits = load_digits_split()
    held = score(digits.heldout_x, clf, digits.heldout_x, digits.heldout_y)
    report: dict = {"model": args.model, "sampler": sampler_name, "seed": args.seed,
                    "heldout_real": {"accuracy": held.class_accuracy, "confident_fraction": held.confident_fraction,
                                     "class_entropy_bits": held.class_entropy_bits}}
    print(f"classifier on {held.num_samples} held-out real digits: accuracy {held.class_accuracy:.4f}, "
          f"confident {held.confident_fraction:.4f}")

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
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
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
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
