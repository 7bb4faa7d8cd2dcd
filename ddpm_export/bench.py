"""``ddpm-export bench``: sampling speed of every path side by side, in one process.

Paths (every one runs the same numpy DDIM loop, :func:`ddpm_export.diffusion.sample`, with the
same seed, batch, steps and thread count):

- peers, what a user gets from the tools they know:
  ``eager`` -- our PyTorch reference model, eager, ``torch.set_num_threads(threads)``;
  ``plain-ort`` -- ``torch.onnx.export(model, args, f, dynamo=False)`` of the same model with
  every other setting left at its default (static shapes, one file per batch) in ONNX Runtime;
  ``plain-ov-f32`` / ``plain-ov-bf16`` -- OpenVINO on that plain file.
- ours: each (backend, precision) through :meth:`ddpm_export.runtime.Pipeline.sample`
  (input checks and all), on files written by ``ddpm-export onnx``.

Per path and batch: median and p90 milliseconds per step of the whole sampling loop (each step
timed from one model call to the next, so the sampler's own numpy work is inside), images/s of a
full default-length sampling run at that rate, the ratio to eager, to the best peer and (ours) to
the peer on the same engine and precision (:data:`SAME_ENGINE_PEER`) -- each the median over the
interleaved rounds of the round's ratio (its median step against the other path's), the last two
also with their range over the rounds (the spread says how much a ratio moved while the run
lasted) --, achieved GFLOP/s (FLOPs per forward counted by
``torch.utils.flop_counter.FlopCounterMode`` on the reference model) and its fraction of a fp32
GEMM ceiling measured in the same run, peak RSS of the process while the path ran, and the
sampler's overhead outside the model call (% of a step).

Runs are interleaved (repeat r runs every path once) so that a change in background load hits
all paths alike: each of our paths right after the peer it is compared with, in an order reversed
every other round (``round_order`` in the report); the load actually seen is reported. ONNX
Runtime sessions run with ``session.intra_op.allow_spinning = 0`` here (peers and ours alike):
spinning pool threads of one session would steal the cores from the next path in this single
process.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from ddpm_export.checks import check_exported_from, check_steps, is_int
from ddpm_export.configbase import check_choice
from ddpm_export.console import count
from ddpm_export.contract.choices import ATTENTION_CHOICES, REWRITE_CHOICES
from ddpm_export.contract.spec import MAX_BATCH
from ddpm_export.diffusion import Backend, DiffusionConfig, make_scheduler, sample
from ddpm_export.errors import BadInputError, WrongTypeError
from ddpm_export.machine import LoadMeter, PeakRss, cpu_info, gemm_ceiling
from ddpm_export.runtime.backends import CPU_BACKENDS, installed_cpu_backends
from ddpm_export.runtime.info import ModelInfo, read_info
from ddpm_export.runtime.openvino_backend import require_openvino
from ddpm_export.runtime.pipeline import check_openvino_target
from ddpm_export.threads import check_threads, get_threads

__all__ = ["BenchConfig", "OUR_PRECISIONS", "OurFile", "default_precisions", "failed_paths", "format_report",
           "report_warnings", "run_bench"]

#: what "precision" means for our paths: the file written and how the backend computes it
OUR_PRECISIONS: dict[str, tuple[str, str | None]] = {  # name -> (file precision, OpenVINO inference precision)
    "fp32": ("fp32", "f32"),
    "bf16": ("fp32", "bf16"),   # OpenVINO only: an fp32 file computed in bfloat16
    "int8": ("int8", "f32"),    # QDQ int8 file; float islands in f32
    "int8-bf16": ("int8", "bf16"),  # OpenVINO only: the int8 file, its float islands in bfloat16
}
PEERS = ("eager", "plain-ort", "plain-ov-f32", "plain-ov-bf16")
#: our precisions that only OpenVINO computes
OPENVINO_ONLY_PRECISIONS: tuple[str, ...] = ("bf16", "int8-bf16")


class OurFile(NamedTuple):
    """One of our files: its precision, attention form, rewrites variant and ``--target``."""

    precision: str
    attention: str
    rewrites: str
    target: str


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One bench run. ``model``: preset/checkpoint (peers and our exports); ``onnx``: our file
    (else exported from ``model``); ``attention``: forms of our fp32 ONNX Runtime files;
    ``rewrites``: variants of our fp32 files (``auto``, ``none`` or one rewrite's name each).
    ``backends`` empty: the installed ones; ``precisions`` empty: :func:`default_precisions`.
    ``threads`` None (as ``bench`` without ``--threads``): the count :func:`~ddpm_export.threads.set_threads`
    set (``ddpm-export --threads``), else every CPU this process may use."""

    model: str | None = None
    onnx: str | None = None
    backends: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    attention: tuple[str, ...] = ("auto",)
    rewrites: tuple[str, ...] = ("auto",)
    batches: tuple[int, ...] = (1, 8)
    threads: int | None = None
    steps: int = 10
    repeats: int = 3
    peers: bool = True

    def __post_init__(self) -> None:
        self._check_types()
        if self.model is None and self.onnx is None:
            raise BadInputError("bench needs --model or --onnx")
        if not self.backends:
            object.__setattr__(self, "backends", installed_cpu_backends())
        if not self.precisions:
            object.__setattr__(self, "precisions", default_precisions(self.backends, self.onnx))
        for field, values, choices in (("backend", self.backends, tuple(CPU_BACKENDS)),
                                       ("precision", self.precisions, tuple(OUR_PRECISIONS)),
                                       ("attention", self.attention, ATTENTION_CHOICES),
                                       ("rewrites", self.rewrites, REWRITE_CHOICES)):
            _check_list(field, values)
            for value in values:
                check_choice(field, value, choices)
        _check_list("batch", self.batches)
        if self.threads is None:
            object.__setattr__(self, "threads", get_threads() or len(os.sched_getaffinity(0)))
        check_threads("threads", self.threads)
        for field, value in (("batch", min(self.batches)), ("steps", self.steps), ("repeats", self.repeats)):
            if value < 1:
                raise BadInputError(f"{field} must be >= 1, got {value}")
        if max(self.batches) > MAX_BATCH:
            raise BadInputError(f"batch must be <= {MAX_BATCH}, got {max(self.batches)}")
        for field, values in (("attention", self.attention), ("rewrites", self.rewrites)):
            if self.onnx is not None and values != ("auto",):  # a given file is benched as it is
                raise BadInputError(f"{field} applies to the files the bench exports from --model, not to "
                                    f"{self.onnx}: leave it out, or bench --model without --onnx")
        self._check_variants()
        if self.peers and self.model is None:
            raise BadInputError("the peers (eager, plain export) need --model; pass --no-peers with --onnx alone")
        openvino_only = [p for p in self.precisions if p in OPENVINO_ONLY_PRECISIONS]
        if openvino_only and "openvino" not in self.backends:
            if "openvino" not in installed_cpu_backends():
                require_openvino()  # MissingDependencyError naming the extra
            raise BadInputError(f"precision {', '.join(openvino_only)} runs on OpenVINO only (bfloat16 arithmetic); "
                                f"add openvino to --backend or leave it out of --precision")

    def _check_types(self) -> None:
        """WrongTypeError naming a field of the wrong type (a library caller's; the CLI parses its
        options): a str for a tuple was read letter by letter ('backend: n listed twice'), a str
        batch or steps ended in Python's TypeError, a float repeats and a str peers were taken.
        A path-like model or onnx is kept as its str, numpy batch sizes as ints (the report is JSON)."""
        for field in ("model", "onnx"):
            value = getattr(self, field)
            if not (value is None or isinstance(value, (str, os.PathLike))):
                raise WrongTypeError(f"{field} must be a str, a path or None, got {value!r}")
            object.__setattr__(self, field, None if value is None else os.fspath(value))
        for field in ("backends", "precisions", "attention", "rewrites", "batches"):
            values, kind = getattr(self, field), ("int" if field == "batches" else "str")
            if not isinstance(values, tuple) or not all(is_int(v) if kind == "int" else isinstance(v, str)
                                                        for v in values):
                raise WrongTypeError(f"{field} must be a tuple of {kind}, got {values!r}")
        object.__setattr__(self, "batches", tuple(int(b) for b in self.batches))
        for field in ("steps", "repeats"):  # threads: check_threads
            if not is_int(getattr(self, field)):
                raise WrongTypeError(f"{field} must be an int, got {getattr(self, field)!r}")
        if not isinstance(self.peers, bool):
            raise WrongTypeError(f"peers must be a bool, got {self.peers!r}")

    def _check_variants(self) -> None:
        """--attention / --rewrites variants are of the fp32 file (int8 files take ``auto``), and
        several attention forms are compared on ONNX Runtime (OpenVINO runs the first): refused
        where nothing would run them (the JSON recorded them as applied)."""
        fp32 = any(OUR_PRECISIONS[p][0] == "fp32" for p in self.precisions)
        for field, values in (("attention", self.attention), ("rewrites", self.rewrites)):
            if values != ("auto",) and not fp32:
                raise BadInputError(f"{field} {','.join(values)}: variants of the fp32 file, and --precision "
                                    f"{','.join(self.precisions)} runs none (int8 files take auto); add fp32 or "
                                    f"bf16 to --precision, or leave --{field} out")
        if len(self.attention) > 1 and not ("onnxruntime" in self.backends and "fp32" in self.precisions):
            raise BadInputError(f"attention {','.join(self.attention)}: several forms are compared on ONNX Runtime "
                                f"fp32 (OpenVINO runs the first); add onnxruntime to --backend and fp32 to "
                                f"--precision, or give one form")


def _check_list(field: str, values: tuple[Any, ...]) -> None:
    """A bench list option: not empty, no value twice (a path or batch would be measured twice
    and reported once)."""
    if not values:
        raise BadInputError(f"{field}: the list is empty")
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise BadInputError(f"{field}: {', '.join(twice)} listed twice")


@dataclasses.dataclass
class _Path:
    name: str
    group: str                       # "peer" or "ours"
    runner: Callable[[int], Callable[[], None]]  # batch -> one timed sampling run
    info: dict[str, Any]
    timer: "_Timed"


class _Timed:
    """A Backend wrapper recording the start and end of every model call."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.starts: list[float] = []
        self.ends: list[float] = []

    def __call__(self, x: np.ndarray, t: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        self.starts.append(time.perf_counter())
        out = self.backend(x, t, c)
        self.ends.append(time.perf_counter())
        return out

    def reset(self) -> None:
        self.starts, self.ends = [], []


class _Positional:
    """A plain file's session (inputs named by torch) as a Backend: feeds by position."""

    def __init__(self, run: Callable[[list[np.ndarray]], np.ndarray]) -> None:
        self.run = run

    def __call__(self, x: np.ndarray, t: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        return self.run([x, t] if c is None else [x, t, c])


# --- building the paths ----------------------------------------------------------------------
def _ort_options(threads: int) -> Any:
    import onnxruntime as ort

    from ddpm_export.runtime.onnxruntime_backend import session_options_for

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return session_options_for(threads, opts)


def _plain_backend(path: Path, engine: str, threads: int) -> Backend:
    if engine == "ort":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), _ort_options(threads), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return _Positional(lambda args: session.run(None, dict(zip(names, args)))[0])
    from ddpm_export.runtime.openvino_backend import require_openvino

    ov = require_openvino()
    compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": engine.split("-")[1]})
    request = compiled.create_infer_request()
    return _Positional(lambda args: np.array(request.infer(args)[0], copy=True))


def _loop_runner(backends: Callable[[int], Backend], info: ModelInfo, steps: int, timer: _Timed) -> Callable[[int], Callable[[], None]]:
    """batch -> a run of the shared DDIM loop on ``backends(batch)`` through ``timer``; each run builds
    its scheduler, as ``Pipeline.sample`` does (its set-up counts to the first step of every path)."""
    spec = info.spec

    def for_batch(batch: int) -> Callable[[], None]:
        backend = backends(batch)
        # the model's own kind of condition (class ids or a context), drawn once; None when unconditional
        cond = spec.conditioning.sample(np.random.default_rng(0), spec, batch, spec.opt_context).get(
            spec.conditioning.input_name)

        def run() -> None:
            timer.backend = backend
            scheduler = make_scheduler(info.diffusion, "ddim", num_inference_steps=steps)
            sample(timer, scheduler, (batch, spec.in_channels, spec.sample_size, spec.sample_size), seed=0, cond=cond)
        return run
    return for_batch


def _peer_paths(unet: Any, info: ModelInfo, cfg: BenchConfig, folder: Path) -> list[_Path]:
    """eager, and the plain export (one static-shape file per batch) in ONNX Runtime and OpenVINO."""
    import torch

    from ddpm_export.torch_backend import TorchBackend

    plain: dict[int, Path] = {}

    def plain_file(batch: int) -> Path:
        if batch not in plain:
            import warnings

            feeds = info.spec.sample_inputs(batch)
            args = tuple(torch.from_numpy(feeds[n]) for n in info.spec.input_names)
            plain[batch] = folder / f"plain-b{batch}.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(unet, args, str(plain[batch]), dynamo=False)  # every other setting default
        return plain[batch]

    paths = []
    for name, make in (("eager", lambda b: TorchBackend(unet)),
                       ("plain-ort", lambda b: _plain_backend(plain_file(b), "ort", cfg.threads)),
                       ("plain-ov-f32", lambda b: _plain_backend(plain_file(b), "ov-f32", cfg.threads)),
                       ("plain-ov-bf16", lambda b: _plain_backend(plain_file(b), "ov-bf16", cfg.threads))):
        if name.startswith("plain-ov") and "openvino" not in cfg.backends:
            continue
        timer = _Timed(None)  # type: ignore[arg-type]
        paths.append(_Path(name, "peer", _loop_runner(make, info, cfg.steps, timer),
                           {"backend": name, "precision": "bf16" if name.endswith("bf16") else "fp32"}, timer))
    return paths


def _our_paths(files: dict[OurFile, Path], cfg: BenchConfig) -> list[_Path]:
    """Each (backend, precision) through Pipeline.sample on our ``files``. Several attention forms
    are compared on ONNX Runtime fp32 only; several rewrites variants on every fp32 path."""
    from ddpm_export.runtime import Pipeline

    paths = []
    fp32 = [f for f in files if f.precision == "fp32"]
    several_forms, several_rewrites = len({f.attention for f in fp32}) > 1, len({f.rewrites for f in fp32}) > 1
    for precision in cfg.precisions:
        file_precision, ov_precision = OUR_PRECISIONS[precision]
        for backend in cfg.backends:
            if precision in OPENVINO_ONLY_PRECISIONS and backend != "openvino":
                continue  # bf16 is OpenVINO's inference precision
            first_form = next((f.attention for f in files if f.precision == file_precision), None)
            # a file exported for this backend (int8: --target decides the QDQ layout) when there is one
            targeted = any(f.target == backend for f in files if f.precision == file_precision)
            for key, path in files.items():
                if key.precision != file_precision or (backend == "openvino" and key.attention != first_form):
                    continue
                if targeted and key.target != backend:
                    continue
                kwargs: dict[str, Any] = {"threads": cfg.threads}
                if backend == "openvino":
                    kwargs["inference_precision"] = ov_precision
                else:
                    kwargs["session_options"] = _ort_options(cfg.threads)
                pipe = Pipeline.from_onnx(path, backend=backend, **kwargs)
                timer = _Timed(pipe.backend)
                timed = Pipeline(timer, pipe.info, source=str(path))

                def runner(batch: int, timed: Pipeline = timed) -> Callable[[], None]:
                    return lambda: timed.sample(batch, steps=cfg.steps, sampler="ddim", seed=0, progress=False)
                name = f"ours-{backend}-{precision}"
                name += f"-{key.attention}" if several_forms and key.precision == "fp32" and backend == "onnxruntime" else ""
                name += f"-rewrites-{key.rewrites}" if several_rewrites and key.precision == "fp32" else ""
                paths.append(_Path(name, "ours", runner, {"backend": backend, "precision": precision,
                                                          "attention": key.attention, "target": key.target,
                                                          "rewrites": list(pipe.info.rewrites), "file": path.name},
                                   timer))
    return paths


def _export_ours(model: str, cfg: BenchConfig, folder: Path, log: Callable[[str], None]) -> dict[OurFile, Path]:
    """Our files for ``model``: fp32 in each attention form and rewrites variant asked for (exported
    for ONNX Runtime; OpenVINO runs the same file), and int8 (``auto`` rewrites) exported for each
    backend asked for (``--target``: the QDQ layout differs). Not validated here (``verify`` does
    that); batch range 1..max(batches)."""
    from ddpm_export.contract.choices import MIN_OPSET
    from ddpm_export.export.attention_forms import resolve_attention
    from ddpm_export.export.onnx import DEFAULT_OPSET, export_onnx

    files: dict[OurFile, Path] = {}
    max_batch = max(max(cfg.batches), 2)
    wanted = {OUR_PRECISIONS[p][0] for p in cfg.precisions}
    for precision in sorted(wanted, key=["fp32", "int8"].index):
        variants = ([(a, r, "onnxruntime") for a in cfg.attention for r in cfg.rewrites] if precision == "fp32"
                    else [("auto", "auto", backend) for backend in cfg.backends])
        for attention, rewrites, target in variants:
            out = folder / f"ours-{precision}-{attention}-{rewrites}-{target}.onnx"
            log(f"exporting {model} ({precision}, attention {attention}, rewrites {rewrites}, target {target}) "
                f"for the bench")
            opset = max(DEFAULT_OPSET, MIN_OPSET[resolve_attention(attention, target)])
            result = export_onnx(model, out, precision=precision, attention=attention, target=target, opset=opset,
                                 rewrites=rewrites, opt_batch=min(4, max_batch), max_batch=max_batch, validate=False,
                                 log=lambda line: None)
            files[OurFile(precision, result.attention, rewrites, target)] = result.path
    return files


# --- measuring -------------------------------------------------------------------------------
def _reference_model(info: ModelInfo, model: str | None) -> Any:
    """The PyTorch model: ``model`` loaded (eager peer, plain export, FLOPs), or with ``--onnx``
    alone a seed-initialised network of the file's config (FLOPs do not depend on the weights)."""
    from ddpm_export import load_model
    from ddpm_export.nn.checkpoint import build_model

    return (load_model(model) if model is not None else build_model(info.unet)).eval()


def flops_per_image(info: ModelInfo, unet: Any) -> float:
    """FLOPs of one forward of ``unet`` at batch 1 (FlopCounterMode; 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    feeds = info.spec.sample_inputs(1)
    args = [torch.from_numpy(feeds[n]) for n in info.spec.input_names]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(*args)
    return float(counter.get_total_flops())


def _run_order(paths: list[_Path]) -> list[_Path]:
    """The order of a round: the peers, each followed by our paths on its engine and precision
    (:data:`SAME_ENGINE_PEER`), then our other paths (int8; after the last peer, OpenVINO bf16, the
    usual best). A pair compared in "x same" runs back to back, so a drift in background load hits
    both alike; :func:`_measure` reverses the order every other round, so that no path always
    runs first or right after another engine."""
    peers = [p for p in paths if p.group == "peer"]
    followers: dict[str, list[_Path]] = {p.name: [] for p in peers}
    rest = []
    for p in paths:
        if p.group == "ours":
            peer = SAME_ENGINE_PEER.get((p.info["backend"], p.info["precision"]))
            (followers[peer] if peer in followers else rest).append(p)
    return [q for p in peers for q in (p, *followers[p.name])] + rest


def _measure(paths: list[_Path], order: list[_Path], batch: int, cfg: BenchConfig,
             log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Warm every path up, then ``repeats`` interleaved rounds (``order``, :func:`_run_order`, reversed
    every other round); per-step times (and each round's median), model-call share, RSS; rows in
    the order of ``paths``."""
    runs, failed = {}, {}
    for p in paths:
        try:
            runs[p.name] = p.runner(batch)
            runs[p.name]()  # warm-up: first-run allocations, OpenVINO's shape compilation
        except Exception as e:  # noqa: BLE001 -- one engine's failure is that path's result, not the run's
            failed[p.name] = _failure(p.name, batch, e, log)
    steps: dict[str, list[float]] = {p.name: [] for p in paths}
    rounds: dict[str, list[float]] = {p.name: [] for p in paths}  # each round's median step
    overhead: dict[str, list[float]] = {p.name: [] for p in paths}
    rss: dict[str, float] = {p.name: 0.0 for p in paths}
    for r in range(cfg.repeats):
        for p in order if r % 2 == 0 else order[::-1]:
            if p.name in failed:
                continue
            p.timer.reset()
            try:
                with PeakRss() as peak:
                    start = time.perf_counter()
                    runs[p.name]()
                    end = time.perf_counter()
            except Exception as e:  # noqa: BLE001
                failed[p.name] = _failure(p.name, batch, e, log)
                continue
            marks = [start, *p.timer.starts[1:], end]  # the loop's set-up counts to the first step
            this_round = [1e3 * (b - a) for a, b in zip(marks, marks[1:])]
            steps[p.name] += this_round
            rounds[p.name].append(statistics.median(this_round))
            model = sum(e - s for s, e in zip(p.timer.starts, p.timer.ends))
            overhead[p.name].append(1.0 - model / (end - start))
            rss[p.name] = max(rss[p.name], peak.mib)
        log(f"  batch {batch}: round {r + 1}/{cfg.repeats} done")
    return {name: ({"failed": failed[name]} if name in failed else
                   {"median_ms": statistics.median(v), "p90_ms": float(np.percentile(v, 90)),
                    "round_median_ms": rounds[name], "sampler_overhead_pct": 100 * statistics.median(overhead[name]),
                    "peak_rss_mib": rss[name]})
            for name, v in steps.items()}


def _failure(name: str, batch: int, error: Exception, log: Callable[[str], None]) -> str:
    """A path's failure as its row's message (the other paths are measured on)."""
    from ddpm_export.errors import describe

    message = describe(error)
    log(f"  {name} failed at batch {batch}: {message}")
    return message


#: our (backend, precision) -> the peer on the same engine at the same precision (int8 has none)
SAME_ENGINE_PEER: dict[tuple[str, str], str] = {("onnxruntime", "fp32"): "plain-ort",
                                                ("openvino", "fp32"): "plain-ov-f32",
                                                ("openvino", "bf16"): "plain-ov-bf16"}


def _ratio(rows: dict[str, dict[str, Any]], name: str, peer: str | None) -> tuple[float | None, list[float] | None]:
    """How much faster ``name`` ran than ``peer``: the median over the interleaved rounds of each
    round's ratio (its median step against the other's), and those ratios. Paired within a round,
    a change of background load between rounds cancels; the ratio of the medians pooled over all
    rounds did not, and could fall outside the rounds' own range."""
    if peer is None or peer not in rows:
        return None, None
    rounds = [t / m for t, m in zip(rows[peer]["round_median_ms"], rows[name]["round_median_ms"])]
    return statistics.median(rounds), rounds


def _best_peer(rows: dict[str, dict[str, Any]], peers: list[str]) -> str | None:
    """The fastest peer by the measure the ratios use: one that no other peer beats in the median
    of the paired round ratios (so no peer reads above 1.00 against it), the lowest pooled median
    among several; when a cycle leaves none, the lowest pooled median."""
    if not peers:
        return None
    unbeaten = [p for p in peers if all(_ratio(rows, q, p)[0] <= 1.0 for q in peers if q != p)]
    return min(unbeaten or peers, key=lambda n: rows[n]["median_ms"])


def _ratios(rows: dict[str, dict[str, Any]], paths: dict[str, dict[str, Any]], batch: int, flops: float,
            gemm: float, full_steps: int) -> None:
    """Add images/s, ratios to eager, to the best peer and to the same-engine peer (each with its
    value per round), GFLOP/s and the GEMM fraction in place. ``paths``: name -> path record."""
    rows = {name: row for name, row in rows.items() if "failed" not in row}  # a failed path: its message only
    peers = [name for name in rows if paths[name]["group"] == "peer"]
    best = _best_peer(rows, peers)
    for name, row in rows.items():
        ms = row["median_ms"]
        row["images_per_s"] = batch * 1e3 / (ms * full_steps)
        row["gflops"] = flops * batch / (ms / 1e3) / 1e9
        row["gemm_fraction"] = row["gflops"] / gemm
        row["vs_eager"] = _ratio(rows, name, "eager")[0]
        row["vs_best_peer"], row["vs_best_peer_rounds"] = _ratio(rows, name, best)
        row["best_peer"] = best
        same = (SAME_ENGINE_PEER.get((paths[name]["backend"], paths[name]["precision"]))
                if paths[name]["group"] == "ours" else None)
        row["same_engine_peer"] = same if same in rows else None
        row["vs_same_engine_peer"], row["vs_same_engine_peer_rounds"] = _ratio(rows, name, same)


# --- the whole run ---------------------------------------------------------------------------
def check_model_and_extra(cfg: BenchConfig) -> None:
    """Refuse an unknown model, then a missing export extra (torch: the peers, our exports, the FLOP
    count); the CLI checks both before its note on a missing OpenVINO, which came first, unrelated."""
    from importlib import import_module

    from ddpm_export.presets import check_model_name

    if cfg.model is not None:
        check_model_name(cfg.model)
    import_module("torch")  # a ModuleNotFoundError the CLI turns into the export extra's line


def _check_inputs(cfg: BenchConfig) -> None:
    """Refuse, before anything is exported or timed: an unknown model, a missing export extra or
    OpenVINO, and a ``--onnx`` file that no asked-for precision runs (one not exported from
    ``--model`` is refused by :func:`run_bench` once the model is loaded)."""
    check_model_and_extra(cfg)
    from ddpm_export.nn.checkpoint import diffusion_config_for  # after: it needs torch

    if "openvino" in cfg.backends:
        require_openvino()
    _check_forms(cfg.attention)
    if cfg.onnx is None:
        check_steps(cfg.steps, (diffusion_config_for(str(cfg.model)) or DiffusionConfig()).num_train_timesteps)
        return
    info = read_info(cfg.onnx)
    check_steps(cfg.steps, info.diffusion.num_train_timesteps)
    if "openvino" in cfg.backends:  # Pipeline.from_onnx refuses it, once the peers were built
        try:
            check_openvino_target(cfg.onnx, info)
        except BadInputError as e:
            raise BadInputError(f"{e}; or bench it with --backend onnxruntime") from None
    outside = [b for b in cfg.batches if not info.spec.min_batch <= b <= info.spec.max_batch]
    if outside:  # Pipeline.sample would split a larger batch into calls, a smaller one it refuses
        raise BadInputError(f"batch: {', '.join(map(str, outside))} outside {cfg.onnx}'s batch range "
                            f"{info.spec.min_batch}..{info.spec.max_batch} (export a file with that range)")
    fits = _file_precisions(info, cfg.onnx)
    misfits = [p for p in cfg.precisions if p not in fits]
    if misfits:
        raise BadInputError(f"{cfg.onnx} is an {info.precision} file: precision {', '.join(misfits)} "
                            f"does not run it (choose from {', '.join(fits)})")


def _check_forms(attention: tuple[str, ...]) -> None:
    """Refuse two ``--attention`` entries that are one form for ONNX Runtime (``auto`` is what
    ``--target onnxruntime`` picks): one file would be measured and reported for both."""
    from ddpm_export.export.attention_forms import resolve_attention

    seen: dict[str, str] = {}
    for form in attention:
        resolved = resolve_attention(form, "onnxruntime")
        if resolved in seen:
            raise BadInputError(f"attention {seen[resolved]} and {form} are the same form for ONNX Runtime "
                                f"({resolved}): list it once")
        seen[resolved] = form


def _threads_warning(threads: int, usable: int) -> list[str]:
    """A warning line when ``threads`` exceed the CPUs this process may use: every engine then
    time-slices its threads (the GEMM ceiling read 2.6 GFLOP/s at 999 threads on 2 CPUs, 185 at 2)."""
    if threads <= usable:
        return []
    return [f"warning: --threads {threads} is more than the {usable} CPUs this process may use: the engines "
            f"time-slice their threads, so every figure (and the GEMM ceiling) is far below what the machine does"]


def _file_precisions(info: ModelInfo, onnx: str) -> tuple[str, ...]:
    """Our precisions that run the file ``onnx`` whose metadata is ``info`` (fp32 file: fp32, bf16;
    int8: int8, int8-bf16); BadInputError for another precision."""
    precision = info.precision
    fits = tuple(p for p, (of_file, _) in OUR_PRECISIONS.items() if of_file == precision)
    if not fits:
        raise BadInputError(f"{onnx} is an {precision} file; the bench runs fp32 and int8 files")
    return fits


def default_precisions(backends: tuple[str, ...], onnx: str | None) -> tuple[str, ...]:
    """What ``--precision`` defaults to: every precision ``backends`` compute (bf16 ones need
    OpenVINO), those that run ``onnx`` when a file is given."""
    wanted = _file_precisions(read_info(onnx), onnx) if onnx is not None else tuple(OUR_PRECISIONS)
    return tuple(p for p in wanted if p not in OPENVINO_ONLY_PRECISIONS or "openvino" in backends)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build every path, measure them side by side, return the report (JSON-ready dict). PyTorch
    runs on ``cfg.threads`` meanwhile; its thread count is restored afterwards."""
    _check_inputs(cfg)  # first: a mistyped --model is named as one, not as a missing torch
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_bench(cfg, log)
    finally:
        torch.set_num_threads(previous)  # a library caller's setting, not ours to keep


def _run_bench(cfg: BenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`run_bench` once PyTorch runs on ``cfg.threads``."""
    import torch

    report: dict[str, Any] = {"cpu": cpu_info(), "threads": {"intra_op": cfg.threads, "inter_op": 1,
                              "torch": torch.get_num_threads()},
                              "config": {**dataclasses.asdict(cfg)}, "versions": _versions()}
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as tmp:
        folder = Path(tmp)
        if cfg.onnx:
            info = read_info(cfg.onnx)
            files = {OurFile(info.precision, info.attention, ",".join(info.rewrites) or "none", info.target):
                     Path(cfg.onnx)}
        else:
            files = _export_ours(str(cfg.model), cfg, folder, log)
            info = read_info(next(iter(files.values())))
        unet = _reference_model(info, cfg.model)
        if cfg.onnx and cfg.model is not None:
            check_exported_from(info.unet, unet.config, cfg.onnx, cfg.model)
        paths = (_peer_paths(unet, info, cfg, folder) if cfg.peers else []) + _our_paths(files, cfg)
        flops = flops_per_image(info, unet)
        meter = LoadMeter().start()
        # the ceiling is the best of several measurements (before, between and after the batches):
        # on a shared machine one snapshot can land in a busy moment
        log(f"measuring the fp32 GEMM ceiling ({count(cfg.threads, 'thread')})")
        gemms = [gemm_ceiling(cfg.threads)]
        report["flops_per_image"] = flops
        report["paths"] = [{"name": p.name, "group": p.group, **p.info} for p in paths]
        order = _run_order(paths)
        report["round_order"] = [p.name for p in order]  # reversed in every other round
        report["results"] = {}
        records = {p["name"]: p for p in report["paths"]}
        for batch in cfg.batches:
            log(f"measuring batch {batch} ({count(len(paths), 'path')}, {cfg.repeats} x {cfg.steps} steps each)")
            report["results"][str(batch)] = _measure(paths, order, batch, cfg, log)
            gemms.append(gemm_ceiling(cfg.threads))
        report["gemm_ceiling"] = {**max(gemms, key=lambda g: g["gflops"]),
                                  "measurements": [g["gflops"] for g in gemms]}
        for batch, rows in report["results"].items():
            _ratios(rows, records, int(batch), flops, report["gemm_ceiling"]["gflops"],
                    info.diffusion.num_inference_steps)
        report["load"] = meter.stop()
        report["images_per_s_steps"] = info.diffusion.num_inference_steps
    report["warnings"] = report_warnings(report)  # in the JSON too: `-q --json` prints no header
    return report


def _versions() -> dict[str, str | None]:
    """What produced the figures: a kernel change in any of these moves them."""
    import importlib.metadata as im
    import platform

    from ddpm_export._version import __version__

    def version(dist: str) -> str | None:
        try:
            return im.version(dist)
        except im.PackageNotFoundError:
            return None
    return {"ddpm_export": __version__, "python": platform.python_version(),
            **{d: version(d) for d in ("numpy", "torch", "onnx", "onnxruntime", "openvino")}}


def failed_paths(report: dict[str, Any]) -> list[str]:
    """``"<path> at batch <b>: <message>"`` for each path that failed (none: every path was measured)."""
    return [f"{name} at batch {batch}: {row['failed']}" for batch, rows in report.get("results", {}).items()
            for name, row in rows.items() if "failed" in row]


def report_warnings(report: dict[str, Any]) -> list[str]:
    """The run's warning lines: GEMM ceiling readings that disagree, more threads than CPUs."""
    return [*_noise_warning(report["gemm_ceiling"]["measurements"]),
            *_threads_warning(report["threads"]["intra_op"], report["cpu"]["usable_cpus"])]


def _with_rounds(ratio: float | None, rounds: list[float] | None) -> str:
    """``1.54 (1.41-1.62)``: a ratio (the median over the rounds) and its range; ``-`` without one."""
    if ratio is None or rounds is None:
        return "-"
    return f"{ratio:.2f} ({min(rounds):.2f}-{max(rounds):.2f})"


#: GEMM ceiling readings of one run further apart than this (lowest / highest below 1 - it): the
#: machine's speed changed while the run lasted (3% apart on a quiet 2-core host, 20-55% on a busy one)
NOISY_CEILING_SPREAD = 0.15


def _noise_warning(gflops: list[float]) -> list[str]:
    """A warning line when the GEMM ceiling readings of the run disagree (see NOISY_CEILING_SPREAD)."""
    low, high = min(gflops), max(gflops)
    if low >= (1 - NOISY_CEILING_SPREAD) * high:
        return []
    return [f"warning: the GEMM ceiling readings are {100 * (1 - low / high):.0f}% apart ({low:.0f}-{high:.0f} "
            f"GFLOP/s): the machine's speed changed during the run, so only ratios with a narrow (rounds) range "
            f"hold; rerun on a quiet machine or with more --repeats"]


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table with the machine header."""
    cpu, load = report["cpu"], report["load"]
    flags = ", ".join(f"{k.upper() if k != 'avx512' else 'AVX-512'} {'yes' if v else 'no'}"
                      for k, v in cpu["flags"].items())
    lines = [f"CPU: {cpu['model']} ({cpu['usable_cpus']} of {cpu['logical_cpus']} logical CPUs usable); {flags}",
             f"threads: {report['threads']['intra_op']} intra-op, 1 inter-op, torch {report['threads']['torch']}; "
             f"background load: {100 * load['background_cpu_fraction']:.0f}% of the CPUs busy with other processes, "
             f"load average {load['loadavg_1min_before']} -> {load['loadavg_1min_after']}",
             f"fp32 GEMM ceiling (ONNX Runtime MatMul {report['gemm_ceiling']['size']}^3): "
             f"{report['gemm_ceiling']['gflops']} GFLOP/s (best of {report['gemm_ceiling']['measurements']}); "
             f"{report['flops_per_image'] / 1e9:.2f} GFLOP per image per forward; images/s for a "
             f"{report['images_per_s_steps']}-step run", *report_warnings(report), ""]
    width = max([34, *(len(name) for rows in report["results"].values() for name in rows)])
    head = (f"{'path':<{width}} {'batch':>5} {'ms/step':>9} {'p90':>9} {'img/s':>8} {'x eager':>8} {'x best (rounds)':>17} "
            f"{'x same (rounds)':>17} {'GFLOP/s':>8} {'%GEMM':>6} {'RSS MiB':>8} {'loop %':>7}")
    lines += [head, "-" * len(head)]
    for batch, rows in report["results"].items():
        best_peer = next((r["best_peer"] for r in rows.values() if r.get("best_peer")), None)
        if best_peer:
            lines.append(f"batch {batch}: best peer {best_peer}")
        for name, r in rows.items():
            if "failed" in r:
                lines.append(f"{name:<{width}} {batch:>5} FAILED: {r['failed']}")
                continue
            eager = "-" if r["vs_eager"] is None else f"{r['vs_eager']:.2f}"
            best = _with_rounds(r["vs_best_peer"], r["vs_best_peer_rounds"])
            same = _with_rounds(r["vs_same_engine_peer"], r["vs_same_engine_peer_rounds"])
            lines.append(f"{name:<{width}} {batch:>5} {r['median_ms']:>9.1f} {r['p90_ms']:>9.1f} {r['images_per_s']:>8.2f} "
                         f"{eager:>8} {best:>17} {same:>17} {r['gflops']:>8.1f} {100 * r['gemm_fraction']:>5.0f}% "
                         f"{r['peak_rss_mib']:>8.0f} {r['sampler_overhead_pct']:>6.1f}%")
        lines.append("")
    lines.append("ms/step, p90: over every step of every round (pooled); x eager / x best: speed relative to eager "
                 "and to the best peer (eager, plain-ort, plain-ov-*: the one no other peer beats in the paired ratios); "
                 "x same: relative to the peer on the same engine and precision (plain-ort for ours-onnxruntime-fp32, "
                 "plain-ov-f32 / plain-ov-bf16 for ours-openvino-fp32 / -bf16); each the median over the interleaved "
                 "rounds of the round's ratio (its median step against the other's), (rounds): the lowest and highest "
                 "-- paired, the ratios may rank two close paths otherwise than ms/step; loop %: time outside the "
                 "model call")
    return "\n".join(lines)
