"""Verification of an exported model against the PyTorch reference: single steps, whole
trajectories with identical noise, and the final samples.

Both sides run through :func:`ddpm_export.diffusion.sample` with the same seed; a callback
records ``x_t`` and the model output before every step. The reference side is
:class:`~ddpm_export.torch_backend.TorchBackend` on the model the file was exported from; the
candidates are ONNX Runtime on the file and, when an engine is given, TensorRT.

1. Single steps at several ``t`` (0, 937, T/2, T-1), at the exported min/opt/max batch, and for
   class-conditional models over the class ids and the null class.
2. Trajectories: DDIM with ``steps`` (default 50), DDPM over all T steps (``ddpm_steps`` may
   respace it for big models; the report says so) and the multistep solvers ``solvers``
   (DPM-Solver++ and UniPC, ``solver_steps`` each, default 10). Per step: max abs error of the
   model output and of ``x_t``. A multistep solver's history is reset at the start of every run
   (the loop does it), so one scheduler serves the reference and every candidate in turn.
   Also per step, "local" errors: the candidate re-run on exactly the reference's inputs of each
   model call (teacher forcing), which measure the backend alone, without accumulated drift.
3. Final samples: max abs, relative L2 and PSNR ``10 log10(4 / MSE)`` (images in [-1, 1], so the
   peak-to-peak range is 2).

Pass/fail by the precision in the file's metadata (:data:`THRESHOLDS`): single steps and local
per-step errors against the export's validation limits, final samples against a PSNR.

Ill-conditioned trajectories. A sampler run can amplify tiny differences exponentially: the
seed-initialised ``tiny`` preset under DDIM-50 turns a one-ulp change of ``x_T`` into a final
PSNR of ~18 dB *with PyTorch on both sides* (its untrained network shrinks ``x_t``, and the
normalisations then amplify). No backend can pass a final-sample threshold there. So when a
final PSNR misses its threshold, the reference is re-run under a perturbation (its
``reference_probe``): for fp32, from ``x_T`` moved by one float32 ulp; for lower precisions, with
Gaussian noise of the candidate's own measured per-call relative error (the local errors, capped
at its precision's single-step limit) added to every model output, the errors such a backend
makes, in random directions (a guided DDIM-50 run of the trained digits model at batch 8 turns
int8-sized errors into 31-34 dB). If the reference misses the threshold against itself too
(``reference_self_psnr_db``), the final check is reported as ``ill_conditioned`` and the verdict
rests on the local per-step errors; under the noise probe the candidate must also come within
:data:`PROBE_MARGIN_DB` of the probe (errors that add up coherently, a bias, end far below
random ones of the same size). Otherwise the miss is the backend's, and the check fails. A final
sample holding NaN or infinity (on either side) fails as ``non_finite``, naming the side.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ddpm_export.checks import check_exported_from, check_guidance_scale, check_int, check_seed, check_steps
from ddpm_export.contract.info import ModelInfo
from ddpm_export.contract.metadata import sha256_file
from ddpm_export.diffusion import SCHEDULERS, Backend, DiffusionConfig, make_scheduler, sample
from ddpm_export.diffusion.scheduler import Scheduler
from ddpm_export.errors import BadInputError, DdpmExportWarning, MissingDependencyError
from ddpm_export.files import atomic_file
from ddpm_export.metrics import (BF16_CALL_REL_L2, BF16_FINAL_PSNR_DB, BF16_LOCAL_REL_L2, BF16_REL_L2,
                                  FP16_CALL_REL_L2, FP16_REL_L2, FP32_MAX_ABS, INT8_CALL_REL_L2, INT8_FINAL_PSNR_DB,
                                  INT8_LOCAL_REL_L2, INT8_REL_L2, compare, output_scale)
from ddpm_export.runtime.backends import effective_precision
from ddpm_export.runtime.info import read_info

__all__ = ["THRESHOLDS", "Thresholds", "VerifyError", "compare", "draw_drift", "effective_precision", "plot_drift",
           "report_json", "require_matplotlib", "verify", "write_report"]

#: trajectory steps when not given: DDIM and the multistep solvers (fewer for a model trained
#: with fewer timesteps: see :func:`verify`)
DEFAULT_STEPS, DEFAULT_SOLVER_STEPS = 50, 10
#: single-step timesteps always checked (those >= T are dropped), plus T // 2 and T - 1
SINGLE_STEP_TIMESTEPS = (0, 937)
#: multistep solvers whose whole trajectories are verified by default (besides DDIM and DDPM)
SOLVERS = ("dpm-solver++", "unipc")


class VerifyError(BadInputError):
    """Verification cannot run: the inputs do not belong together or are malformed."""


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Pass limits for one precision. A single step is held to ``step_max_abs`` (fp32) or
    ``step_rel_l2`` (fp16: the export's 4e-3 on the kernels it validated with, else
    :data:`~ddpm_export.metrics.FP16_REL_L2`: :data:`FP16_EXPORT_KERNELS`); final samples to
    ``final_psnr_db``."""

    final_psnr_db: float
    step_max_abs: float | None = None
    step_rel_l2: float | None = None
    #: the per-step (local) relative L2 limit where it differs from ``step_rel_l2`` (bf16, int8)
    local_rel_l2: float | None = None
    #: the noise probe's per-call cap: the precision's measured one-call error (bf16, int8), not the
    #: candidate's own limit (a conv scaled by 1.02 inflated its own errors and excused its 30 dB)
    probe_rel_l2: float | None = None
    #: why ``step_rel_l2`` is what it is, where the precision alone does not say (fp16), for the messages
    step_basis: str | None = None


#: by the precision a backend computes (:func:`effective_precision`); bf16 and int8 limits are
#: measured on the digits model, see :mod:`ddpm_export.metrics`
THRESHOLDS = {
    "fp32": Thresholds(final_psnr_db=60.0, step_max_abs=FP32_MAX_ABS),
    "fp16": Thresholds(final_psnr_db=40.0, step_rel_l2=FP16_REL_L2,
                       step_basis="other fp16 kernels (TensorRT, GPU providers, OpenVINO f16) differ from the "
                                  "export's"),
    "bf16": Thresholds(final_psnr_db=BF16_FINAL_PSNR_DB, step_rel_l2=BF16_REL_L2, local_rel_l2=BF16_LOCAL_REL_L2,
                       probe_rel_l2=BF16_CALL_REL_L2),
    "int8": Thresholds(final_psnr_db=INT8_FINAL_PSNR_DB, step_rel_l2=INT8_REL_L2, local_rel_l2=INT8_LOCAL_REL_L2,
                       probe_rel_l2=INT8_CALL_REL_L2),
}
#: an fp16 file on the kernels the export validates it with (ONNX Runtime's CPU provider) or computed
#: in f32 (OpenVINO f32): one call is held to the export's own limit (correct files: digits 1.3e-4,
#: tiny 8.1e-4 here; a conv scaled by 1.01 gives 1.0e-2, which 2e-2 passed), and so is the noise
#: probe's cap; the per-step local limit stays 2e-2 (near t = 0 a correct digits file measures 1.7e-3)
FP16_EXPORT_KERNELS = Thresholds(final_psnr_db=40.0, step_rel_l2=FP16_CALL_REL_L2, local_rel_l2=FP16_REL_L2,
                                 probe_rel_l2=FP16_CALL_REL_L2,
                                 step_basis="the export's own limit: ONNX Runtime CPU or OpenVINO f32")


# --- the parts ------------------------------------------------------------------------------
def _single_step_cases(info: ModelInfo, seed: int) -> list[dict[str, Any]]:
    """Inputs of the single-step checks: every (t, batch, conditioning) combination."""
    spec, T = info.spec, info.spec.num_train_timesteps
    ts = sorted({t for t in SINGLE_STEP_TIMESTEPS if t < T} | {T // 2, T - 1})
    batches = sorted({spec.min_batch, spec.opt_batch, spec.max_batch})
    rng = np.random.Generator(np.random.PCG64(seed))
    cases = []
    for batch in batches:
        conds = spec.conditioning.check_inputs(rng, info, batch)
        for t in ts:
            x = rng.standard_normal((batch, spec.in_channels, spec.sample_size, spec.sample_size), dtype=np.float32)
            for label, cond in conds:
                cases.append({"t": t, "batch": batch, "cond": label, "x": x,
                              "tt": np.full(batch, t, dtype=np.int64), "c": cond})
    return cases


def _single_step(candidate: Backend, cases: list[dict[str, Any]],
                 expected: list[np.ndarray]) -> dict[str, Any]:
    rows = []
    for case, want in zip(cases, expected):
        err = compare(candidate(case["x"], case["tt"], case["c"]), want)
        rows.append({"t": case["t"], "batch": case["batch"], "cond": case["cond"],
                     "max_abs": err["max_abs"], "rel_l2": err["rel_l2"]})
    # np.max, not max: a NaN case is the worst error (Python's max drops a NaN after the first row)
    return {"cases": rows, "max_abs": float(np.max([r["max_abs"] for r in rows])),
            "rel_l2": float(np.max([r["rel_l2"] for r in rows])),
            "output_scale": output_scale(*expected)}


@dataclasses.dataclass
class _Trajectory:
    """One side of a sampling run: ``x_t`` and the (guided) model output before every step, the
    final samples, and every backend call ``(x, t, cond, output)`` in order."""

    x_t: list[np.ndarray]
    out: list[np.ndarray]
    final: np.ndarray
    calls: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]]


def _run(backend: Backend, scheduler: Scheduler, *, shape: tuple[int, int, int, int], seed: int,
         cond: np.ndarray | None, null: np.ndarray | None, guidance: float, progress: bool,
         x_T: np.ndarray | None = None) -> _Trajectory:
    xs: list[np.ndarray] = []
    outs: list[np.ndarray] = []
    calls: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]] = []
    bar = tqdm(total=scheduler.num_inference_steps, disable=not progress, unit="step", leave=False,
               desc=f"{type(backend).__name__} trajectory")

    def record(i: int, t: int, x: np.ndarray, out: np.ndarray) -> None:
        xs.append(x)  # the loop never writes into arrays it hands out
        outs.append(out)
        bar.update()

    def recording_backend(x: np.ndarray, t: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        out = backend(x, t, c)
        calls.append((x, t, c, out))
        return out

    with bar:
        final = sample(recording_backend, scheduler, shape, seed=seed, cond=cond, null_cond=null,
                       guidance_scale=guidance, x_T=x_T, callback=record)
    return _Trajectory(xs, outs, final, calls)


def _trajectory_errors(ref: _Trajectory, got: _Trajectory, candidate: Backend,
                       scheduler: Scheduler) -> dict[str, Any]:
    out_err = [float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(got.out, ref.out)]
    x_err = [float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(got.x_t, ref.x_t)]
    local = [compare(candidate(x, t, c), want) for x, t, c, want in ref.calls]
    return {"num_inference_steps": int(scheduler.num_inference_steps),
            "timesteps": [int(t) for t in scheduler.timesteps],
            "model_output_max_abs": out_err, "x_t_max_abs": x_err,
            # np.max, not max: a NaN step is the worst error (Python's max skips a NaN after the first item)
            "model_output_max_abs_max": float(np.max(out_err)), "x_t_max_abs_max": float(np.max(x_err)),
            "local_model_output_max_abs": [e["max_abs"] for e in local],
            "local_model_output_rel_l2": [e["rel_l2"] for e in local],
            "local_max_abs": float(np.max([e["max_abs"] for e in local])),
            "local_rel_l2": float(np.max([e["rel_l2"] for e in local])),
            "local_output_scale": output_scale(*(want for *_, want in ref.calls)),
            "final": compare(got.final, ref.final)}


def _one_ulp(x_T: np.ndarray, seed: int) -> np.ndarray:
    """``x_T`` with every element moved by one float32 ulp in a random direction."""
    up = np.random.Generator(np.random.PCG64(seed)).integers(0, 2, size=x_T.shape).astype(bool)
    return np.where(up, np.nextafter(x_T, np.float32(np.inf)), np.nextafter(x_T, np.float32(-np.inf)))


# --- the whole check ------------------------------------------------------------------------
def verify(model: str | Path, onnx: str | Path, *, engine: str | Path | None = None, steps: int | None = None,
           ddpm_steps: int | None = None, solver_steps: int | None = None, solvers: Sequence[str] = SOLVERS,
           seed: int = 0, batch: int = 2, guidance_scale: float = 1.0,
           providers: Sequence[Any] | None = None, gpu_backends: Sequence[str] = (), threads: int | None = None,
           inference_precision: str | None = None, log: Callable[[str], None] = print,
           progress: bool = False) -> dict[str, Any]:
    """Verify ``onnx`` (and ``engine``, and the file on ``gpu_backends``: ``"openvino"``, ``"ort-cuda"``,
    ``"ort-tensorrt"``) against the PyTorch ``model``, each backend held to the thresholds of the
    precision it computes (:func:`effective_precision`); return the report (a dict). ``progress``
    draws a bar over each trajectory's steps (DDPM runs all T of them). ``steps``: :func:`_default_steps`.

    ``report["passed"]`` says whether every check passed and ``report["failures"]`` which did not;
    ``report["warnings"]`` what was warned about (DdpmExportWarnings: a file exported for another
    runtime, the model's schedule not the file's), ``report["notes"]`` the rest worth saying;
    ``report["thresholds"]`` the ONNX Runtime check's limits (each backend's: ``backend_thresholds``).
    Raises VerifyError when the file was not exported from ``model``'s config or an argument
    does not fit the exported graph.
    """
    from ddpm_export import load_model
    from ddpm_export.torch_backend import TorchBackend

    start, onnx = time.perf_counter(), Path(onnx)
    info = read_info(onnx)
    T = info.diffusion.num_train_timesteps
    steps, solver_steps = _default_steps(T, steps, solver_steps)
    unet = load_model(model)
    _check_arguments(info, unet.config, model, onnx, steps, ddpm_steps, batch, guidance_scale, seed)
    spec, cfg = info.spec, info.diffusion
    solver_schedulers = _solver_schedulers(cfg, solvers, solver_steps)
    onnx_sha, source_match = sha256_file(onnx), _check_source(model, unet, onnx, info)

    reference = TorchBackend(unet)
    candidates = _candidates(onnx, info, engine, providers, onnx_sha, gpu_backends, threads, inference_precision)
    precisions, backend_limits = _precisions(info, candidates)
    n_ddpm = T if ddpm_steps is None else ddpm_steps
    notes, warned = _respaced_note(n_ddpm, T), _target_warning(onnx, info) + _schedule_warning(model, onnx, info)
    cond = spec.conditioning.call_input(None, batch, info)  # every class in turn, or None
    run = functools.partial(_run, shape=(batch, spec.in_channels, spec.sample_size, spec.sample_size), seed=seed,
                            cond=cond, null=info.null_input(batch) if guidance_scale != 1.0 else None,
                            guidance=guidance_scale, progress=progress)

    log(f"verify {onnx} ({info.precision}) against {model} (PyTorch), seed {seed}; {_named(precisions)}")
    results = _single_steps(reference, candidates, info, seed, log)
    for kind, scheduler in {"ddim": _scheduler(cfg, "ddim", steps), "ddpm": _scheduler(cfg, "ddpm", n_ddpm),
                            **solver_schedulers}.items():
        _trajectories(results, kind, scheduler, run, reference, candidates, backend_limits, precisions, seed,
                      log)

    checks = _checks(results, backend_limits, precisions)
    failures = [c["message"] for c in checks if not c["passed"]]
    notes += [] if source_match is not None else _untrained_note(model, checks, precisions)  # no weights file
    return {
        "passed": not failures, "failures": failures, "checks": checks,
        **_checked_files(model, onnx, onnx_sha, engine, info), "source_sha256_match": source_match,
        "thresholds": dataclasses.asdict(backend_limits["onnxruntime"]), "backend_precisions": precisions,
        "backend_thresholds": {name: dataclasses.asdict(t) for name, t in backend_limits.items()},
        "seed": seed, "batch": batch, "classes": None if cond is None else cond.tolist(), "schedule": cfg.to_dict(),
        "guidance_scale": guidance_scale, "ddpm_all_steps": n_ddpm == T, "notes": notes, "warnings": warned,
        "backends": results, "seconds": round(time.perf_counter() - start, 2),
    }


def _checked_files(model: str | Path, onnx: Path, onnx_sha: str, engine: str | Path | None,
                   info: ModelInfo) -> dict[str, Any]:
    """The report's fields naming what was checked: the model, the file (its hash and what its
    metadata says it holds) and the engine."""
    return {"model": str(model), "onnx": str(onnx), "onnx_sha256": onnx_sha,
            "engine": None if engine is None else str(engine), "target": info.target, "precision": info.precision,
            "attention": info.attention, "rewrites": list(info.rewrites)}


def _untrained_note(model: str | Path, checks: list[dict[str, Any]], precisions: dict[str, str]) -> list[str]:
    """For a model with no trained weights: a note when a bf16 or int8 check failed, whose limits
    were measured on the trained digits model (:mod:`ddpm_export.metrics`)."""
    missed = " and ".join(sorted({precisions[c["name"].split(".")[0]] for c in checks if not c["passed"]}
                                 & {"bf16", "int8"}))
    if not missed:
        return []
    return [f"{model} has no trained weights (seed-initialised); the {missed} limits were set on a trained model "
            f"(digits), which an untrained network's outputs may miss: judge {missed} on trained weights"]


def _named(precisions: dict[str, str]) -> str:
    """``"backends: onnxruntime (fp32), openvino (bf16)"``."""
    return "backends: " + ", ".join(f"{name} ({p})" for name, p in precisions.items())


def _precisions(info: ModelInfo, candidates: dict[str, Backend]) -> tuple[dict[str, str], dict[str, Thresholds]]:
    """Each backend's effective precision, and the thresholds it is held to by that precision."""
    precisions = {name: effective_precision(info.precision, backend) for name, backend in candidates.items()}
    return precisions, {name: FP16_EXPORT_KERNELS if p == "fp16" and _export_kernels(candidates[name])
                        else THRESHOLDS[p] for name, p in precisions.items()}


def _export_kernels(backend: Backend) -> bool:
    """Whether ``backend`` computes an fp16 file as the export validated it (ONNX Runtime on the CPU
    provider alone) or more exactly (OpenVINO in f32): :data:`FP16_EXPORT_KERNELS` applies."""
    from ddpm_export.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from ddpm_export.runtime.openvino_backend import OpenVinoBackend

    if isinstance(backend, OpenVinoBackend):
        return backend.inference_precision == "f32"
    return (isinstance(backend, OnnxRuntimeBackend) and backend.session is not None
            and backend.session.get_providers() == ["CPUExecutionProvider"])


def _respaced_note(n_ddpm: int, T: int) -> list[str]:
    """The report's note on a DDPM trajectory of fewer than all T steps."""
    return [] if n_ddpm == T else [f"DDPM trajectory respaced to {n_ddpm} of {T} steps (ddpm_steps={n_ddpm}); "
                                   f"the default checks all {T}"]


def _default_steps(T: int, steps: int | None, solver_steps: int | None) -> tuple[int, int]:
    """``steps`` / ``solver_steps``, or :data:`DEFAULT_STEPS` / :data:`DEFAULT_SOLVER_STEPS` where
    None, at most T and T - 1 (the solvers' leading spacing) for a model trained with fewer timesteps."""
    return (min(DEFAULT_STEPS, T) if steps is None else steps,
            min(DEFAULT_SOLVER_STEPS, max(1, T - 1)) if solver_steps is None else solver_steps)


def _check_source(model: str | Path, unet: Any, onnx: Path, info: ModelInfo) -> bool | None:
    """VerifyError when the file was exported from other weights than ``model``'s: every check would
    fail for that reason alone. Its recorded tensors digest (``source_tensors_sha256``) matches a
    re-saved copy too; files without one are matched by ``source_sha256``, of the weights file, else
    of the loaded weights (a seeded preset's, a sharded diffusers folder's). Returns True when the
    model has trained weights (None: seed-initialised)."""
    from ddpm_export.export.onnx import state_sha256
    from ddpm_export.nn.checkpoint import seed_initialised, weights_path
    from ddpm_export.nn.weights import tensors_sha256

    tensors = None if info.source_tensors_sha256 is None else tensors_sha256(unet.state_dict())
    if tensors is None or tensors != info.source_tensors_sha256:
        weights = weights_path(model)
        have = sha256_file(weights) if weights is not None else state_sha256(unet)
        if not info.same_source(have, tensors):
            what, recorded, here = (("source sha256", info.source_sha256, have) if tensors is None else
                                    ("tensors sha256", info.source_tensors_sha256, tensors))
            raise VerifyError(f"{onnx} was exported from other weights than {model}'s ({what} {recorded[:12]}... "
                              f"recorded, {here[:12]}... here): re-export it from {model}, or verify it against "
                              f"the model it came from")
    return None if seed_initialised(model) else True


def _target_warning(onnx: Path, info: ModelInfo) -> list[str]:
    """The TargetMismatchWarning ``sample`` gives for a file exported for another runtime than ONNX
    Runtime, which verify always runs it on (:func:`warn_on_target_mismatch`): warned, and kept in
    the report's ``warnings`` beside :func:`_schedule_warning`'s."""
    from ddpm_export.runtime.pipeline import warn_on_target_mismatch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_on_target_mismatch(onnx, info, "onnxruntime")
    for w in caught:  # shown as any warning: the CLI's Warning: line, none under -q
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return [str(w.message) for w in caught]


def _schedule_warning(model: str | Path, onnx: Path, info: ModelInfo) -> list[str]:
    """A DdpmExportWarning (kept in the report's ``warnings``) when the model's schedule -- its
    ``diffusion.json`` or diffusers scheduler config, else the default one, as the export takes --
    is not the one the file records: both sides of the checks use the file's, so they cannot tell
    (a file edited to a cosine schedule passed without a word)."""
    from ddpm_export.nn.checkpoint import diffusion_config_for, schedule_file

    ours = diffusion_config_for(model) or DiffusionConfig()
    if ours == info.diffusion:
        return []
    a, b = info.diffusion.to_dict(), ours.to_dict()
    where = schedule_file(model) or "the default schedule (the model has no schedule file)"
    fields = ", ".join(f"{k} ({a[k]!r} in the file, {b[k]!r} in {where})" for k in info.diffusion.differences(ours))
    message = (f"{onnx} records another schedule than its model's: {fields}; the checks use the file's -- "
               f"re-export it after changing the schedule")
    warnings.warn(message, DdpmExportWarning, stacklevel=3)  # the CLI: one Warning: line, none under -q
    return [message]


def _check_arguments(info: ModelInfo, unet_config: Any, model: str | Path, onnx: Path, steps: int,
                     ddpm_steps: int | None, batch: int, guidance_scale: float, seed: int) -> None:
    """Refuse a file not exported from ``model`` and arguments the graph cannot run."""
    check_exported_from(info.unet, unet_config, onnx, model, VerifyError)
    check_seed(seed)  # numpy's own errors named no argument (seed=-1: "expected non-negative integer")
    check_int("batch", batch, 1, None, "an int >= 1")
    if info.precision not in THRESHOLDS:
        raise VerifyError(f"{onnx}: precision {info.precision!r} has no thresholds (known: {', '.join(THRESHOLDS)})")
    spec, T = info.spec, info.diffusion.num_train_timesteps
    guided = check_guidance_scale(guidance_scale) != 1.0
    if guided and info.null_class_id is None:
        raise VerifyError(f"guidance_scale={guidance_scale} needs a class-conditional model with a null class")
    per_call = batch * (2 if guided else 1)
    if not spec.min_batch <= per_call <= spec.max_batch:
        raise VerifyError(f"batch={batch}{' with guidance (x2)' if guided else ''} runs {per_call} images per call, "
                          f"outside the exported range [{spec.min_batch}, {spec.max_batch}]")
    check_steps(steps, T)
    if ddpm_steps is not None:
        check_steps(ddpm_steps, T, "ddpm_steps")
    spec.conditioning.require_default_input(str(onnx), "`ddpm-export verify`", VerifyError)
    spec.check_samplable(str(onnx), VerifyError)  # before any check runs, as Pipeline refuses it


def _candidates(onnx: Path, info: ModelInfo, engine: str | Path | None, providers: Sequence[Any] | None,
                onnx_sha: str, gpu_backends: Sequence[str] = (), threads: int | None = None,
                inference_precision: str | None = None) -> dict[str, Backend]:
    """ONNX Runtime on the file, the file on ``gpu_backends`` (OpenVINO; ONNX Runtime's CUDA /
    TensorRT providers) and, with ``engine``, TensorRT: the backends checked."""
    from ddpm_export.runtime.backends import RuntimeOptions, load_onnx_backend
    from ddpm_export.runtime.onnxruntime_backend import session_options_for
    from ddpm_export.threads import get_threads

    import onnxruntime as ort

    from ddpm_export.runtime.onnxruntime_backend import OnnxRuntimeBackend

    # ONNX Runtime's pool threads spin after each run by default; here every ORT call is followed by
    # a torch call on the same cores, which the spinning would slow down (about 2x on 2 cores).
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if inference_precision is not None and "openvino" not in gpu_backends:
        raise VerifyError("inference_precision applies to the openvino backend; add it (--backend openvino)")
    spec = info.spec
    candidates: dict[str, Backend] = {
        "onnxruntime": OnnxRuntimeBackend.from_path(onnx, spec, providers=providers,
                                                    session_options=session_options_for(threads or get_threads(),
                                                                                        options))}
    for name in gpu_backends:
        if name == "openvino":
            candidates[name] = load_onnx_backend(name, onnx, spec, RuntimeOptions(
                threads=threads, inference_precision=inference_precision))
            continue
        from ddpm_export.runtime.ort_gpu import gpu_backend

        candidates[name] = gpu_backend(onnx, name, spec)
    if engine is not None:
        from ddpm_export.runtime.tensorrt import TensorRTBackend

        candidates["tensorrt"] = TensorRTBackend(engine, spec, onnx_sha256=onnx_sha)
    return candidates


def _single_steps(reference: Backend, candidates: dict[str, Backend], info: ModelInfo, seed: int,
                  log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Every candidate's single-step errors; the per-backend result dicts of the report."""
    cases = _single_step_cases(info, seed)
    expected = [reference(c["x"], c["tt"], c["c"]) for c in cases]
    results: dict[str, dict[str, Any]] = {name: {"trajectories": {}} for name in candidates}
    for name, backend in candidates.items():
        results[name]["single_step"] = s = _single_step(backend, cases, expected)
        log(f"  {name}: single step ({len(cases)} cases): max abs {s['max_abs']:.3e}, rel L2 {s['rel_l2']:.3e}")
    return results


def _trajectories(results: dict[str, dict[str, Any]], kind: str, scheduler: Scheduler,
                  run: Callable[..., _Trajectory], reference: Backend, candidates: dict[str, Backend],
                  limits: dict[str, Thresholds], precisions: dict[str, str], seed: int,
                  log: Callable[[str], None]) -> None:
    """One sampler's trajectory on every candidate against the reference, into ``results``."""
    t0 = time.perf_counter()
    ref = run(reference, scheduler)
    ulp_psnr: list[float | None] = []  # the reference against itself from x_T + 1 ulp, run when needed
    for name, backend in candidates.items():
        got = run(backend, scheduler)
        errs = results[name]["trajectories"][kind] = _trajectory_errors(ref, got, backend, scheduler)
        f, limit = errs["final"], limits[name]
        errs["final_check"] = "passed"
        bad = [side for side, x in (("PyTorch", ref.final), (name, got.final)) if not np.isfinite(x).all()]
        if bad:  # NaN compares False against the limit: it must not pass
            errs["final_check"], errs["non_finite"] = "non_finite", bad
        elif f["psnr_db"] is not None and f["psnr_db"] < limit.final_psnr_db:
            if precisions[name] == "fp32":
                if not ulp_psnr:
                    ulp_psnr.append(compare(run(reference, scheduler, x_T=_one_ulp(ref.x_t[0], seed + 1)).final,
                                            ref.final)["psnr_db"])
                errs["reference_probe"], errs["reference_self_psnr_db"] = ULP_PROBE, ulp_psnr[0]
            else:
                errs["reference_probe"] = NOISE_PROBE
                noise = _noisy(reference, errs["local_model_output_rel_l2"], limit.probe_rel_l2 or limit.step_rel_l2,
                               seed + 2)
                errs["reference_self_psnr_db"] = compare(run(noise, scheduler).final, ref.final)["psnr_db"]
            errs["final_check"] = _final_state(f["psnr_db"], errs["reference_self_psnr_db"], errs["reference_probe"],
                                               limit.final_psnr_db)
        log(f"  {name}: {kind.upper()}-{scheduler.num_inference_steps}: per-step max abs model output "
            f"{errs['model_output_max_abs_max']:.3e}, x_t {errs['x_t_max_abs_max']:.3e} (local max abs "
            f"{errs['local_max_abs']:.3e}, rel L2 {errs['local_rel_l2']:.3e}); final max abs {f['max_abs']:.3e}, "
            f"rel L2 {f['rel_l2']:.3e}, PSNR {_db(f['psnr_db'])} ({time.perf_counter() - t0:.1f} s)")
        if errs["final_check"] == "ill_conditioned":
            log(f"    ill-conditioned ({_probed(errs)}); judged by the local per-step errors")


#: the two reference probes (``reference_probe`` in the report; see the module docstring)
ULP_PROBE, NOISE_PROBE = "x_T + 1 ulp", "its own per-call errors as noise"
#: a low-precision candidate whose final PSNR misses its limit on an ill-conditioned trajectory
#: must still come within this of the reference perturbed by random errors of its own size
#: (MSE at most 4x): errors that accumulate coherently (a bias) end far further off than that
PROBE_MARGIN_DB = 6.0


def _noisy(reference: Backend, rel_l2: Sequence[float], cap: float | None, seed: int) -> Backend:
    """``reference`` with Gaussian noise added to the output of its k-th call, scaled to relative
    L2 ``min(rel_l2[k], cap)``: errors of a candidate's own measured size, capped at what its
    precision measured for a correct file, in random directions."""
    rng, calls = np.random.Generator(np.random.PCG64(seed)), iter(rel_l2)

    def noisy(x: np.ndarray, t: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        out = reference(x, t, c)
        rel = next(calls) if cap is None else min(next(calls), cap)
        noise = rng.standard_normal(out.shape)
        scale = rel * np.linalg.norm(out.astype(np.float64)) / max(float(np.linalg.norm(noise)), 1e-30)
        return (out + scale * noise).astype(out.dtype)

    return noisy


def _final_state(psnr: float, probe_psnr: float | None, probe: str, limit: float) -> str:
    """``ill_conditioned`` when the reference misses ``limit`` against itself under the probe's
    perturbation (and, for the noise probe, ``psnr`` is within :data:`PROBE_MARGIN_DB` of it)."""
    if probe_psnr is None or not math.isfinite(probe_psnr) or probe_psnr >= limit:  # NaN errors excuse nothing
        return "failed"
    if probe == NOISE_PROBE and psnr < probe_psnr - PROBE_MARGIN_DB:
        return "failed"
    return "ill_conditioned"


def _probed(traj: dict[str, Any]) -> str:
    """What the reference probe of a missed final check found, in words."""
    how = ("from x_T + 1 ulp" if traj["reference_probe"] == ULP_PROBE
           else "with random errors of this backend's per-call size")
    return f"PyTorch against itself {how}: {_db(traj['reference_self_psnr_db'])}"


def _solver_schedulers(cfg: DiffusionConfig, solvers: Sequence[str], steps: int) -> dict[str, Scheduler]:
    """The multistep solvers' schedulers at ``steps`` with the file's settings (refused up front).
    DDIM and DDPM have their own trajectories (``steps``, ``ddpm_steps``): named here, they replaced
    those, and the report still said DDPM ran all T steps."""
    choices = [name for name in SCHEDULERS if name not in ("ddim", "ddpm")]
    if isinstance(solvers, str) or not set(solvers) <= set(choices):
        raise VerifyError(f"solvers must be a sequence of names out of {', '.join(choices)}, got {solvers!r}")
    try:
        return {name: _scheduler(cfg, name, steps) for name in solvers}
    except ValueError as e:
        raise VerifyError(f"solver trajectories (solver_steps={steps}): {e}") from None


def _scheduler(cfg: DiffusionConfig, sampler: str, steps: int) -> Scheduler:
    """``sampler`` at ``steps`` with the file's schedule; validated as that sampler, not as the
    file's default one (a UniPC default must not refuse DDPM's 1000 steps)."""
    return make_scheduler(cfg, sampler, num_inference_steps=steps)


def _db(psnr: float | None) -> str:
    return "inf (identical)" if psnr is None else f"{psnr:.2f} dB"


def _checks(results: dict[str, dict[str, Any]], per_backend: dict[str, Thresholds],
            precisions: dict[str, str]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    limits, precision = THRESHOLDS["fp32"], "fp32"  # rebound per backend below

    def step_checks(prefix: str, label: str, max_abs: float, rel_l2: float, scale: float,
                    local: bool = False) -> None:
        """``scale``: the reference outputs' :func:`output_scale`, which multiplies the max abs limit."""
        rel_limit = limits.local_rel_l2 if local and limits.local_rel_l2 is not None else limits.step_rel_l2
        abs_limit = None if limits.step_max_abs is None else limits.step_max_abs * scale
        for metric, value, limit, what in (("max_abs", max_abs, abs_limit, "max abs"),
                                           ("rel_l2", rel_l2, rel_limit, "relative L2")):
            if limit is None:
                continue
            ok = value <= limit
            relation = "<=" if ok else ">"
            scaled = metric == "max_abs" and scale > 1
            why = f"; {limits.step_max_abs:.0e} x the output's RMS {scale:.3g}" if scaled else ""
            if metric == "rel_l2" and limit == limits.step_rel_l2 and limits.step_basis is not None:
                why = f"; {limits.step_basis}"
            checks.append({"name": f"{prefix}.{metric}", "value": value, "threshold": limit, "passed": ok,
                           "message": f"{label} {what} error {value:.3e} {relation} {limit:.1e} ({precision}{why})"})

    for name, r in results.items():
        limits, precision = per_backend[name], precisions[name]
        s = r["single_step"]
        step_checks(f"{name}.single_step", f"{name}: single-step", s["max_abs"], s["rel_l2"], s["output_scale"])
        for kind, traj in r["trajectories"].items():
            label = f"{kind.upper()}-{traj['num_inference_steps']}"
            step_checks(f"{name}.{kind}.local", f"{name}: {label} per-step (local)", traj["local_max_abs"],
                        traj["local_rel_l2"], traj["local_output_scale"], local=True)
            psnr, state = traj["final"]["psnr_db"], traj["final_check"]
            message = (f"{name}: {label} final-sample PSNR {_db(psnr)} {'>=' if state == 'passed' else '<'} "
                       f"{limits.final_psnr_db:g} dB ({precision})")
            if state == "non_finite":
                message = (f"{name}: {label} final sample holds NaN or infinity (from {' and '.join(traj['non_finite'])}): "
                           f"not finite, so no PSNR")
            if state == "ill_conditioned":
                message += f"; ill-conditioned ({_probed(traj)}), judged by the local per-step errors"
            elif state == "failed":
                below = (traj["reference_self_psnr_db"] is not None
                         and traj["reference_self_psnr_db"] < limits.final_psnr_db)
                message += (f" ({_probed(traj)}, below the limit too, but this backend ends more than "
                            f"{PROBE_MARGIN_DB:g} dB below it: its errors add up)" if below else f" ({_probed(traj)})")
            checks.append({"name": f"{name}.{kind}.final_psnr_db", "value": psnr, "threshold": limits.final_psnr_db,
                           "passed": state not in ("failed", "non_finite"), "state": state, "message": message})
    return checks


# --- outputs ----------------------------------------------------------------------------------
def write_report(report: dict[str, Any], path: str | Path, *, force: bool = False) -> Path:
    """The report as JSON (strict: no NaN / Infinity), written atomically."""
    path = Path(path)
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(report_json(report), encoding="utf-8")
    return path


def report_json(report: dict[str, Any]) -> str:
    """The report as strict JSON text (no NaN / Infinity: see :func:`_finite_or_null`)."""
    return json.dumps(_finite_or_null(report), indent=2, allow_nan=False) + "\n"


def _finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON null): a report of a
    non-finite export stays strict JSON; its checks already say they failed."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def require_matplotlib() -> None:
    """Raise ImportError with the install hint when matplotlib is missing (before any long run)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("the drift plot needs matplotlib, which is not installed: "
                                     "pip install 'ddpm-export[plot]' (or drop --plot)") from e


def plot_drift(report: dict[str, Any], path: str | Path, *, force: bool = False) -> Path:
    """:func:`draw_drift` written atomically to ``path``."""
    path = Path(path)
    with atomic_file(path, force=force) as tmp:
        draw_drift(report, tmp)
    return path


def draw_drift(report: dict[str, Any], path: str | Path) -> None:
    """Per-step max abs error of the model output, of ``x_t`` and of the local (teacher-forced)
    model output against step, one panel per sampler, as a PNG written to ``path`` as is. Zero
    errors (``x_T`` is shared) are left out of the log scale. With guidance, a step's local error
    is that of its one doubled-batch call."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(next(iter(report["backends"].values()))["trajectories"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    try:
        for ax, kind in zip(axes[0], kinds):
            for name, r in report["backends"].items():
                traj = r["trajectories"][kind]
                for key, label, style in (("model_output_max_abs", "model output", "-"), ("x_t_max_abs", "x_t", "--"),
                                          ("local_model_output_max_abs", "model output, local", ":")):
                    values = np.asarray(traj[key], dtype=np.float64)
                    ax.plot(np.arange(len(values)), np.where(values > 0, values, np.nan), style,
                            label=f"{name}: {label}")
            ax.set_yscale("log")
            ax.set_title(f"{kind.upper()}-{traj['num_inference_steps']}: {report['precision']} vs PyTorch")
            ax.set_xlabel("step (0 = x_T)")
            ax.set_ylabel("max abs error")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
