"""Pipeline: sample images from an exported model with numpy and one inference engine.

``Pipeline.from_onnx(path)`` needs nothing but the ONNX file: its metadata carries the UNet
config, the schedule with the sampler defaults, the export spec and the precision.
``Pipeline.from_bundle(folder)`` checks every file of a bundle against its manifest first.
Sampling runs :func:`ddpm_export.diffusion.sample`, the loop every backend shares, so a Pipeline's
images equal a PyTorch run of the same loop with the same seed up to the engine's arithmetic.

Batches larger than the graph accepts are split into chunks (see :meth:`Pipeline.sample`).
A Pipeline holds no per-call state (each call builds its own scheduler and noise generator;
``InferenceSession.run`` is thread-safe), so threads may share one.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from tqdm.auto import tqdm

from ddpm_export.checks import (check_fits_in_memory, check_guidance_scale, check_int, check_seed, check_steps,
                                check_x_T, chunk_size, is_int)
from ddpm_export.configbase import ConfigError, check_choice
from ddpm_export.contract import metadata as md
from ddpm_export.contract.choices import BACKENDS, ORT_GPU_BACKENDS
from ddpm_export.contract.info import ModelInfo
from ddpm_export.diffusion import SCHEDULERS, Backend, DiffusionConfig, make_scheduler, sample, sampler_config
from ddpm_export.errors import BadInputError, TargetMismatchWarning, WrongTypeError
from ddpm_export.files import enclosing_bundle
from ddpm_export.runtime.backends import CPU_BACKENDS, ClosableBackend, describe_precision
from ddpm_export.runtime.integrity import check_finite

__all__ = ["Pipeline", "SampleRequest", "check_n", "check_openvino_target", "chunk_seed", "warn_on_target_mismatch"]

BackendName = Literal["onnxruntime", "openvino", "ort-cuda", "ort-tensorrt", "tensorrt"]


def chunk_seed(seed: int, k: int) -> int:
    """The noise seed of chunk ``k`` of a call with ``seed``: ``seed`` itself for chunk 0, else a
    63-bit integer from ``numpy.random.SeedSequence(seed, spawn_key=(k,))``.

    Chunk 0 keeps ``seed`` so that a call that fits in one chunk is exactly
    ``ddpm_export.diffusion.sample(..., seed=seed)``; later chunks get statistically independent
    streams that do not collide with another call's seed (``seed + k`` would: seed 0's second
    chunk would repeat seed 1's first images).
    """
    if k == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(k,)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SampleRequest:
    """A validated :meth:`Pipeline.sample` call: every argument checked, the chunks planned.

    Attributes: ``n``, ``config`` (the DiffusionConfig with the call's sampler, steps and eta),
    ``seed``, ``guidance_scale``, ``cond`` (``[n]`` int64 class ids, ``[n, L, D]`` context or
    None), ``x_T``, ``chunks`` (slices of ``0 .. n``), ``shape`` ``(C, H, W)``.
    """

    def __init__(self, info: ModelInfo, n: Any, *, steps: Any, sampler: Any, seed: Any, eta: Any,
                 guidance_scale: Any, classes: Any, context: Any, x_T: Any) -> None:
        spec = info.spec
        self.shape = (spec.in_channels, spec.sample_size, spec.sample_size)
        self.n = check_n(n, self.shape)
        self.seed = check_seed(seed)
        self.config = _config(info.diffusion, sampler, steps, eta)
        self.guidance_scale = _guidance(info, guidance_scale)
        self.guided = self.guidance_scale != 1.0
        self.cond = _cond(info, self.n, classes, context)
        self.x_T = None if x_T is None else check_x_T(x_T, (self.n, *self.shape))
        self.chunks = _chunks(self.n, spec.min_batch, spec.max_batch, self.guided)

    @property
    def sampler(self) -> str:
        return self.config.sampler

    @property
    def steps(self) -> int:
        return self.config.num_inference_steps


def check_n(n: Any, shape: tuple[int, int, int]) -> int:
    """``n`` images of ``shape`` ``(C, H, W)``: an int >= 1 whose result, start noise and last
    step's arrays fit in memory, refused before anything of size ``n`` is allocated."""
    n = _positive_int("n", n)
    check_fits_in_memory("n", n, 4 * 4 * int(np.prod(shape)), "the images")
    return n


def warn_on_target_mismatch(path: str | Path, info: ModelInfo, backend: str) -> None:
    """TargetMismatchWarning where the file's layout makes it measurably slow on ``backend``: an
    int8 file whose quantized ops leave their outputs float (its policy's ``quantized_outputs``,
    what ``--target openvino`` writes) ran 0.34-0.38x as fast in ONNX Runtime as the file for ONNX
    Runtime (ddpm-cifar10; ``ddpm_export.export.int8.quantizes_outputs``). Other pairs differed by
    a few percent at most, and a file for ``any`` fits every backend."""
    if backend == "onnxruntime" and not md.quantized_outputs_of(info.metadata, str(path)):
        warnings.warn(f"{path}: this int8 file was exported with --target {info.target}, which leaves the outputs "
                      f"of its int8 ops float; ONNX Runtime then runs those ops in float (about 3x slower "
                      f"on ddpm-cifar10). For ONNX Runtime, export with --target onnxruntime (or any)",
                      TargetMismatchWarning, stacklevel=_caller_stacklevel())


#: the package's folder: a warning points at the first frame outside it
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _caller_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the function calling this) of the first frame
    outside ddpm_export: the caller's line, through any number of our own calls (``from_bundle`` ->
    ``from_onnx`` -> here, or ``write_repository`` -> here)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def check_openvino_target(path: str | Path, info: ModelInfo) -> None:
    """Refuse an int8 file exported with ``--target tensorrt`` on OpenVINO: its activations are
    signed int8 (:func:`ddpm_export.export.int8.symmetric_activations`), which OpenVINO 2026.4's CPU
    plugin computes wrong -- one call of the digits file 0.19 relative L2 from fp32 (ONNX Runtime:
    0.01; tiny 0.76 against 0.08), DDIM-50 at 10 dB -- while the uint8 files of the other targets
    match ONNX Runtime's within 1e-3."""
    if info.precision == "int8" and info.target == "tensorrt":
        raise BadInputError(f"{path}: this int8 file was exported with --target tensorrt, whose signed int8 "
                            f"activations OpenVINO computes wrong (one call of digits 0.19 relative L2 from fp32, "
                            f"ONNX Runtime 0.01); for OpenVINO, export with --target openvino (or any)")


class Pipeline:
    """Sample ``[n, C, H, W]`` images in ``[-1, 1]`` from an exported U-Net.

    Args:
        backend: the network (:class:`OnnxRuntimeBackend`, :class:`TensorRTBackend`, or any
            :class:`ddpm_export.diffusion.Backend`).
        info: the exported file's metadata (:class:`ModelInfo`).
        source: where it came from, for messages.

    :meth:`close` (or a ``with`` block) releases the backend that :meth:`from_onnx` /
    :meth:`from_bundle` opened; a backend given to ``Pipeline(backend, ...)`` stays its owner's to close.
    """

    def __init__(self, backend: Backend, info: ModelInfo, *, source: str = "model") -> None:
        info.spec.check_samplable(source)
        self.backend = backend
        self.info = info
        self.source = source
        self._opened: ClosableBackend | None = None  # the backend from_onnx / from_bundle opened: close() releases it
        self._closed = False

    @classmethod
    def _opening(cls, backend: ClosableBackend, info: ModelInfo, source: str) -> "Pipeline":
        """A Pipeline that owns ``backend`` (closed with it; closed at once if ``info`` is refused)."""
        try:
            pipe = cls(backend, info, source=source)
        except BaseException:
            backend.close()
            raise
        pipe._opened = backend
        return pipe

    def close(self) -> None:
        """Release the backend this Pipeline opened (a session, compiled models, TensorRT's CUDA stream
        and device buffers); idempotent. :meth:`sample` and :meth:`run` after it raise BadInputError."""
        self._closed = True
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BadInputError(f"{self.source}: this Pipeline is closed; load it again to sample")

    @classmethod
    def from_onnx(cls, path: str | Path, *, backend: BackendName = "onnxruntime", threads: int | None = None,
                  inference_precision: str | None = None,
                  providers: Sequence[Any] | None = None, session_options: Any = None, device: int = 0,
                  trt_fp16: bool = False, trt_cache_dir: str | Path | None = None) -> "Pipeline":
        """A Pipeline on ONNX Runtime or OpenVINO; everything else comes from the file's metadata.

        The CPU backends (:data:`ddpm_export.runtime.backends.CPU_BACKENDS`: ``"onnxruntime"``,
        ``"openvino"``) take ``threads`` (None: by model size,
        :func:`ddpm_export.runtime.backends.default_threads`); OpenVINO takes ``inference_precision``
        (``"f32"``, ``"bf16"``, None: its default for this CPU).

        ``backend``: ``"onnxruntime"`` with ``providers`` (default ``["CPUExecutionProvider"]``),
        or ``"ort-cuda"`` / ``"ort-tensorrt"`` on CUDA ``device`` (:mod:`ddpm_export.runtime.ort_gpu`;
        ``trt_fp16`` and the engine cache folder ``trt_cache_dir`` for ``ort-tensorrt``), which
        raise ProviderUnavailable rather than run on the CPU.

        An int8 file exported with ``--target openvino`` loaded on ``"onnxruntime"`` runs, with a
        :class:`~ddpm_export.errors.TargetMismatchWarning` (ONNX Runtime runs its int8 ops in float).
        """
        from ddpm_export.runtime.backends import RuntimeOptions, load_onnx_backend
        from ddpm_export.runtime.info import read_info

        if backend == "tensorrt":  # a name of BackendName: say where it applies, as `sample --onnx` does
            runs = ", ".join(map(repr, (*CPU_BACKENDS, *ORT_GPU_BACKENDS)))
            raise BadInputError(f"backend='tensorrt' runs a bundle's engine: Pipeline.from_bundle(folder, "
                                f"backend='tensorrt'); from_onnx runs {runs}")
        _check_backend(backend, (*CPU_BACKENDS, *ORT_GPU_BACKENDS))
        _check_gpu_options(backend, device, trt_fp16, trt_cache_dir)
        if backend in CPU_BACKENDS:
            info = read_info(path)
            warn_on_target_mismatch(path, info, backend)
            if backend == "openvino":
                check_openvino_target(path, info)
            options = RuntimeOptions(threads=threads, inference_precision=inference_precision, providers=providers,
                                     session_options=session_options)
            return cls._opening(load_onnx_backend(backend, path, info.spec, options), info, str(path))
        if threads is not None or inference_precision is not None:
            raise BadInputError(f"threads and inference_precision apply to the CPU backends, not {backend!r}")
        from ddpm_export.runtime.ort_gpu import gpu_backend

        if providers is not None:
            raise BadInputError(f"providers apply to backend='onnxruntime'; {backend!r} chooses its own")
        info = read_info(path)
        return cls._opening(gpu_backend(path, backend, info.spec, device=device, fp16=trt_fp16, cache_dir=trt_cache_dir,
                                        session_options=session_options), info, str(path))

    @classmethod
    def from_bundle(cls, directory: str | Path, *, onnx: str | Path | None = None, backend: BackendName = "onnxruntime",
                    threads: int | None = None, inference_precision: str | None = None,
                    providers: Sequence[Any] | None = None, session_options: Any = None,
                    device: int = 0, trt_fp16: bool = False, trt_cache_dir: str | Path | None = None) -> "Pipeline":
        """A Pipeline on a bundle folder, after checking every file's sha256 against ``manifest.json``.

        Args:
            onnx: which of the bundle's ONNX files (its name in the bundle, a str or Path); default
                the first one listed.
            backend: ``"onnxruntime"`` or ``"openvino"`` run the ONNX file (with ``threads`` and
                ``inference_precision`` as in :meth:`from_onnx`; ``"ort-cuda"`` / ``"ort-tensorrt"``: on
                ONNX Runtime's GPU providers, ``"ort-tensorrt"`` with ``trt_fp16`` and
                ``trt_cache_dir`` as in :meth:`from_onnx`); ``"tensorrt"`` runs the engine built
                from it (metadata from the manifest, so neither onnx nor onnxruntime is needed).
            device: CUDA device of the GPU backends.
        """
        from ddpm_export.runtime import bundle as bundle_mod

        _check_backend(backend, BACKENDS)  # before hashing every file
        _check_gpu_options(backend, device, trt_fp16, trt_cache_dir)
        given = {"threads": threads, "inference_precision": inference_precision, "providers": providers,
                 "session_options": session_options}
        unused = [name for name, value in given.items() if value is not None]
        if backend == "tensorrt" and unused:  # the engine runs as built: nothing to take them
            raise BadInputError(f"{', '.join(unused)} apply to the backends that run the ONNX file, not 'tensorrt' "
                                f"(the bundle's engine)")
        manifest = bundle_mod.verify_bundle(directory)
        entry = manifest.model(onnx)
        folder = Path(directory)
        if backend != "tensorrt":
            pipe = cls.from_onnx(folder / entry["onnx"], backend=backend, threads=threads,
                                 inference_precision=inference_precision, providers=providers,
                                 session_options=session_options, device=device, trt_fp16=trt_fp16,
                                 trt_cache_dir=trt_cache_dir)
            return pipe  # verify_bundle checked the manifest's schedule against the file's metadata
        from ddpm_export.runtime.tensorrt import TensorRTBackend

        if not entry["engines"]:
            raise bundle_mod.BundleError(f"{folder}: no TensorRT engine for {entry['onnx']} in this bundle; "
                                         f"add one with `ddpm-export bundle --engine`")
        info = ModelInfo.from_metadata(entry["metadata"], source=f"{folder / bundle_mod.MANIFEST}")
        engine = TensorRTBackend(folder / entry["engines"][0], info.spec,
                                 onnx_sha256=manifest.sha256(entry["onnx"]), device=device)
        return cls._opening(engine, info, str(folder / entry["engines"][0]))

    # --- what it accepts ---------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample."""
        s = self.info.spec
        return (s.in_channels, s.sample_size, s.sample_size)

    def chunk_size(self, guided: bool) -> int:
        """Images per backend call: ``max_batch``, or ``max_batch // 2`` with guidance (the
        conditional and unconditional halves run as one doubled batch)."""
        return chunk_size(self.info.spec.max_batch, guided)

    # --- sampling ----------------------------------------------------------------------
    def sample(self, n: int, *, steps: int | None = None, sampler: str | None = None, seed: int = 0,
               eta: float | None = None, guidance_scale: float = 1.0,
               classes: int | Sequence[int] | np.ndarray | None = None, context: np.ndarray | None = None,
               x_T: np.ndarray | None = None, progress: bool = False,
               callback: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Sample ``n`` images; returns ``[n, C, H, W]`` float32 in ``[-1, 1]``.

        Every argument is checked before the first model call; errors name the argument.

        Args:
            n: number of images (>= 1).
            steps: inference steps N (default: the metadata's ``num_inference_steps``), in [1, T]; the
                multistep solvers (UniPC, DPM-Solver) with leading spacing need N < T.
            sampler: ``"ddim"``, ``"ddpm"``, ``"dpm-solver++"``, ``"dpm-solver"``, ``"sde-dpm-solver++"``
                or ``"unipc"`` (default: the metadata's ``sampler``); the solvers read their settings
                (order, solver type, ...) from the metadata's DiffusionConfig.
            seed: noise seed (>= 0), see the chunking rule below.
            eta: DDIM's noise level in [0, 1] (default: the metadata's ``eta``); DDIM only.
            guidance_scale: classifier-free guidance ``uncond + s (cond - uncond)``; 1.0 is none.
                Other values need a class-conditional model with a null class, and run the
                conditional and the null-class halves as one doubled batch.
            classes: class-conditional models only: one id for every image, or ``n`` ids, each in
                ``[0, num_classes)`` (the null id ``num_classes`` is reserved for guidance).
                Default: ``i % num_classes`` for image ``i`` (every class in turn).
            context: context-conditioned models only: ``[n, L, D]`` float32 (no guidance).
            x_T: the starting noise ``[n, C, H, W]`` float32 (default: drawn from the seed).
            progress: show a tqdm bar over all steps of all chunks (off by default in the library;
                the CLI turns it on when stderr is a terminal).
            callback: called after every step as ``callback(done, total)``, the steps done and to
                do over all chunks: a service's progress report, or its way to stop a request (a
                deadline passed, a client gone): an exception it raises stops sampling there and
                reaches the caller, and the Pipeline stays usable.

        Chunking: images per backend call are capped at ``max_batch`` (``max_batch // 2`` with
        guidance). Image ``i`` belongs to chunk ``k = i // chunk_size``; chunk ``k`` is exactly
        ``ddpm_export.diffusion.sample(backend, scheduler, (len_k, C, H, W),
        seed=chunk_seed(seed, k), cond=..., x_T=x_T[chunk])`` -- so a call that fits in one chunk
        equals one ``sample`` call with ``seed``, and results depend on the exported
        ``max_batch``. A last chunk smaller than the exported ``min_batch`` is refused.
        """
        self._check_open()
        _check_run_options(progress, callback)
        req = SampleRequest(self.info, n, steps=steps, sampler=sampler, seed=seed, eta=eta,
                            guidance_scale=guidance_scale, classes=classes, context=context, x_T=x_T)
        return self._run(req, progress=bool(progress), callback=callback)

    def run(self, req: SampleRequest, *, progress: bool = False,
            callback: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Sample a validated request (see :meth:`sample`, also for ``callback``); ``progress``
        and ``callback`` are checked as :meth:`sample` checks them, before the first model call."""
        if not isinstance(req, SampleRequest):
            raise WrongTypeError(f"req must be a SampleRequest (or call Pipeline.sample), got {type(req).__name__}")
        self._check_open()
        _check_run_options(progress, callback)
        return self._run(req, progress=bool(progress), callback=callback)

    def _run(self, req: SampleRequest, *, progress: bool, callback: Callable[[int, int], None] | None) -> np.ndarray:
        """:meth:`run` once the Pipeline is open and the request and options are checked."""
        total = req.steps * len(req.chunks)
        outputs = []
        with tqdm(total=total, disable=not progress, unit="step", leave=False, desc=f"{req.sampler} x{req.n}") as bar:
            precision = describe_precision(self.info.precision, self.backend)
            for k, chunk in enumerate(req.chunks):
                def step_done(i: int, t: int, x: np.ndarray, out: np.ndarray, k: int = k) -> None:
                    self._step_done(bar, out, step=i + 1, steps=req.steps, t=t, precision=precision)
                    if callback is not None:
                        callback(k * req.steps + i + 1, total)

                scheduler = make_scheduler(req.config, req.sampler)  # per call: no state shared between threads
                b = chunk.stop - chunk.start
                cond = None if req.cond is None else req.cond[chunk]
                null = self.info.null_input(b) if req.guided else None
                outputs.append(sample(
                    self.backend, scheduler, (b, *req.shape), seed=chunk_seed(req.seed, k), cond=cond,
                    null_cond=null, guidance_scale=req.guidance_scale,
                    x_T=None if req.x_T is None else req.x_T[chunk],
                    callback=step_done))
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _step_done(self, bar: Any, model_output: np.ndarray, *, step: int, steps: int, t: int, precision: str) -> None:
        """After every model call: stop on a non-finite output (no image is returned), advance the bar."""
        check_finite(model_output, step=step, steps=steps, t=t, source=self.source, precision=precision)
        bar.update(1)


# --- argument checks (the shared ones live in ddpm_export.checks) ------------------------
def _check_run_options(progress: Any, callback: Any) -> None:
    """``progress`` and ``callback`` of :meth:`Pipeline.sample` and :meth:`Pipeline.run`."""
    if not isinstance(progress, (bool, np.bool_)):  # "no" would be truthy
        raise WrongTypeError(f"progress must be True or False, got {progress!r}")
    if callback is not None and not callable(callback):
        raise WrongTypeError(f"callback must be a function of (done, total) or None, got {callback!r}")


def _check_backend(backend: Any, choices: tuple[str, ...]) -> None:
    """``backend`` is one of ``choices``: WrongTypeError (a TypeError) when it is no str, else
    ConfigError (a ValueError); both list the choices."""
    if not isinstance(backend, str):
        raise WrongTypeError(f"backend={backend!r} is not valid; choose one of: {', '.join(map(repr, choices))}")
    check_choice("backend", backend, choices)


def _check_gpu_options(backend: str, device: Any, trt_fp16: bool, trt_cache_dir: str | Path | None) -> None:
    """GPU options on a backend that does not take them are a mistake: refuse them rather than
    drop them (``device`` on a CPU backend, the TensorRT provider's options on any backend but
    ``ort-tensorrt``)."""
    if not is_int(device) or device < 0:
        raise BadInputError(f"device must be a CUDA device index (an int >= 0), got {device!r}")
    if device != 0 and backend in CPU_BACKENDS:
        raise BadInputError(f"device={device} applies to the GPU backends, not {backend!r} (it runs on the CPU)")
    if (trt_fp16 or trt_cache_dir is not None) and backend != "ort-tensorrt":
        raise BadInputError(f"trt_fp16 and trt_cache_dir apply to backend='ort-tensorrt', not {backend!r}")
    if trt_cache_dir is not None:
        _check_cache_dir(trt_cache_dir)


def _check_cache_dir(trt_cache_dir: Any) -> None:
    """The engine cache folder: a path, and not in a bundle (ONNX Runtime writes its engines and
    timing cache there: the bundle would hold files its manifest does not list, and be refused)."""
    if not isinstance(trt_cache_dir, (str, os.PathLike)):
        raise WrongTypeError(f"trt_cache_dir must be a str or os.PathLike naming a folder, got "
                             f"{type(trt_cache_dir).__name__}")
    bundle = enclosing_bundle(Path(trt_cache_dir, "engine"))  # the folder itself or one above it
    if bundle is not None:
        raise BadInputError(f"trt_cache_dir: {trt_cache_dir} is inside the bundle folder {bundle}: the engines cached "
                            f"there would break its manifest; give a folder outside it")


def _config(base: DiffusionConfig, sampler: Any, steps: Any, eta: Any) -> DiffusionConfig:
    name = base.sampler if sampler is None else sampler
    SCHEDULERS[name]  # refuses an unknown sampler, listing the choices
    n_steps = check_steps(base.num_inference_steps if steps is None else steps, base.num_train_timesteps)
    changes: dict[str, Any] = {"num_inference_steps": n_steps}
    if eta is not None:
        if name != "ddim":
            given = "" if sampler is not None else " (the file's default; pass sampler='ddim')"
            raise BadInputError(f"eta applies to the DDIM sampler only; got eta={eta!r} with sampler={name!r}{given}")
        if isinstance(eta, (bool, np.bool_)) or not isinstance(eta, (int, float, np.integer, np.floating)):
            raise WrongTypeError(f"eta must be a float in [0, 1], got {eta!r}")
        if not 0.0 <= eta <= 1.0:
            raise BadInputError(f"eta must be a float in [0, 1], got {eta!r}")
        changes["eta"] = float(eta)
    try:
        return sampler_config(base, name, **changes)
    except ConfigError as e:
        given = "" if steps is None else f", steps={n_steps}"  # the config's own message says num_inference_steps
        raise ConfigError(f"sampler={name!r}{given} with this model's DiffusionConfig: {e}") from None


def _guidance(info: ModelInfo, scale: Any) -> float:
    scale = check_guidance_scale(scale)
    if scale != 1.0:
        if info.num_classes is None:
            raise BadInputError(f"guidance_scale={scale} needs a class-conditional model; this one is "
                                f"{info.spec.conditioning.adjective} -- pass guidance_scale=1.0")
        if info.null_class_id is None:
            raise BadInputError(f"guidance_scale={scale} needs a null class (the model was built with "
                                f"null_class=False) -- pass guidance_scale=1.0")
        if info.spec.max_batch < 2:
            raise BadInputError(f"guidance_scale={scale} runs a doubled batch, but the graph was exported with "
                                f"max_batch={info.spec.max_batch}; re-export with --max-batch >= 2")
    return scale


def _cond(info: ModelInfo, n: int, classes: Any, context: Any) -> np.ndarray | None:
    """The conditioning input of a call from whichever of ``classes`` / ``context`` the model takes."""
    kind = info.spec.conditioning
    given = {"classes": (classes, "class ids"), "context": (context, "context")}
    for argument, (value, noun) in given.items():
        if argument != kind.argument and value is not None:
            raise BadInputError(f"{argument}: this model is {kind.adjective} and takes no {noun}; "
                                "leave it out")
    return kind.call_input(given[kind.argument][0] if kind.argument else None, n, info)


def _chunks(n: int, min_batch: int, max_batch: int, guided: bool) -> list[slice]:
    per_image = 2 if guided else 1
    size = chunk_size(max_batch, guided)
    if size * per_image < min_batch:  # even a full chunk is too small: no n works
        raise BadInputError(f"guidance runs 2 rows per image, so a call holds an even number of rows, at most "
                            f"{size * per_image} within the exported max_batch {max_batch}, which is below its "
                            f"min_batch {min_batch}: this file cannot sample with guidance; re-export it with a batch "
                            f"range that holds an even number (e.g. --max-batch {2 * -(-min_batch // 2)})")
    chunks = [slice(i, min(i + size, n)) for i in range(0, n, size)]
    last = (chunks[-1].stop - chunks[-1].start) * per_image
    if last < min_batch:
        fewest = -(-min_batch // per_image)  # images of a last chunk the graph can run
        choice = f"a multiple of {size}" if fewest >= size else f"so that n % {size} is 0 or at least {fewest}"
        raise BadInputError(f"n={n}: the last chunk would run a batch of {last}, below the exported min_batch "
                            f"{min_batch} (chunks of {size} images{' with guidance' if guided else ''}); "
                            f"choose n {choice}")
    return chunks


def _positive_int(name: str, value: Any) -> int:
    return check_int(name, value, 1, None, "an int >= 1")
