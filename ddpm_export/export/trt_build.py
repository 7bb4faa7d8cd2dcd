"""The TensorRT side of ``ddpm-export trt``: parse, configure, build (needs tensorrt and a GPU).

Thin on purpose: the ONNX is parsed with TensorRT's ``OnnxParser`` into a strongly typed network
(so that a parser error names its node), the configuration is Polygraphy's ``CreateConfig`` built
from :func:`ddpm_export.export.trt_options.builder_config` (names mapped to TensorRT enums here,
nothing decided), and Polygraphy's ``EngineBytesFromNetwork`` builds it and returns the merged
timing cache. A TensorRT logger keeps the errors so that a failed build is explained
(:mod:`ddpm_export.export.trt_failures`); an ``IProgressMonitor`` draws one tqdm bar per phase.
Written against TensorRT 10's Python API and Polygraphy 0.49.1+; run only on a GPU machine.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from ddpm_export.export.trt_failures import BuildFailed, build_failure, parse_failure
from ddpm_export.gpu import import_tensorrt

__all__ = ["BuildFailed", "build_serialized"]


def build_serialized(onnx_path: str | Path, description: dict[str, Any], *, max_batch: int,
                     log: Callable[[str], None] = print) -> tuple[bytes, bytes | None]:
    """Build the engine ``description`` (from ``builder_config``) asks for from ``onnx_path``.

    Returns (serialised engine, serialised timing cache or None when no cache was asked for).
    Raises BuildFailed with a one-line explanation (the node and a hint) when TensorRT fails.
    """
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    trt = import_tensorrt("the engine build")
    logger = _logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise BuildFailed(parse_failure(str(onnx_path), [(e.node_name(), e.node_operator(), e.desc()) for e in errors]))
    monitor = _progress_monitor(trt, log) if description["create_config"]["progress_monitor"] else None
    cache_path = description["create_config"]["load_timing_cache"]
    # Polygraphy reads and writes a timing cache by path only (a file-like object fails on its
    # `.mode` and `fsync`), with a .lock file beside it: a copy in a temporary folder keeps that
    # out of the user's; the merged cache comes back as bytes for the caller to write atomically.
    with tempfile.TemporaryDirectory(prefix="ddpm-export-trt-") as tmp:
        cache_file = None if cache_path is None else Path(tmp) / "timing.cache"
        if cache_file is not None and Path(cache_path).is_file():
            shutil.copyfile(cache_path, cache_file)
        config = CreateConfig(**_create_config_kwargs(trt, description, monitor, cache_file))
        try:  # Polygraphy's own [I] lines (temporary cache paths, timings) quiet: TensorRT's warnings are logged
            with G_LOGGER.verbosity(G_LOGGER.ERROR):
                engine = EngineBytesFromNetwork((builder, network, parser), config=config,
                                                save_timing_cache=None if cache_file is None else str(cache_file))()
        except PolygraphyException as e:
            raise BuildFailed(build_failure(logger.errors or [str(e)], max_batch=max_batch,
                                            workspace_mib=_workspace_mib(description))) from e
        cache = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else None
    return bytes(engine), cache or None


def _workspace_mib(description: dict[str, Any]) -> int | None:
    pools = description["create_config"]["memory_pool_limits"]
    return pools["WORKSPACE"] // 2**20 if "WORKSPACE" in pools else None


def _create_config_kwargs(trt: Any, description: dict[str, Any], monitor: Any,
                          cache_file: Path | None) -> dict[str, Any]:
    """``CreateConfig`` keyword arguments: enum names -> TensorRT enums, the profile -> a Profile;
    ``cache_file`` the timing cache to load (Polygraphy starts an empty one where it is missing)."""
    from polygraphy.backend.trt import Profile

    cc = description["create_config"]
    profile = Profile()
    for name, shapes in description["profile"].items():
        profile.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    kwargs: dict[str, Any] = {"tf32": cc["tf32"], "profiles": [profile],
                              "builder_optimization_level": cc["builder_optimization_level"]}
    if cc["memory_pool_limits"]:
        kwargs["memory_pool_limits"] = {getattr(trt.MemoryPoolType, k): v for k, v in cc["memory_pool_limits"].items()}
    if cache_file is not None:
        kwargs["load_timing_cache"] = str(cache_file)
    if cc["version_compatible"]:
        kwargs["version_compatible"] = True
    if cc["hardware_compatibility_level"] != "NONE":
        kwargs["hardware_compatibility_level"] = getattr(trt.HardwareCompatibilityLevel, cc["hardware_compatibility_level"])
    if monitor is not None:
        kwargs["progress_monitor"] = monitor
    return kwargs


def _logger(trt: Any, log: Callable[[str], None]) -> Any:
    """A TensorRT logger that prints warnings and errors and keeps the errors."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                log(f"[TensorRT] {msg}")

    return Logger()


def _progress_monitor(trt: Any, log: Callable[[str], None]) -> Any:
    """One tqdm bar per build phase (nested phases below their parent), where TensorRT has
    ``IProgressMonitor`` (10.0 and later); None otherwise."""
    if getattr(trt, "IProgressMonitor", None) is None:
        log(f"TensorRT {trt.__version__} has no IProgressMonitor: building without a progress bar")
        return None
    from tqdm.auto import tqdm

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}
            self._lock = threading.Lock()  # TensorRT calls it from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=len(self._bars), leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return Monitor()
