"""TensorRT build options and the builder configuration they stand for (torch-free, no tensorrt).

:class:`BuildOptions` holds what ``ddpm-export trt`` accepts beyond the ONNX file; :func:`builder_config`
turns a plan and the options into a plain dict -- exactly what is handed to Polygraphy's
``CreateConfig`` (names of TensorRT enum members as strings), so the decision is tested on a CPU
and :mod:`ddpm_export.export.trt_build` only maps names to enums. TensorRT's documented knobs:

- ``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` (``--workspace`` MiB);
- ``ITimingCache`` loaded from and merged back into ``--timing-cache`` (tactic timings; speeds
  up rebuilds, never changes results' validity);
- ``BuilderFlag.VERSION_COMPATIBLE`` (``--version-compatible``): the engine runs on later
  TensorRT releases of the same major version (it embeds the lean runtime);
- ``HardwareCompatibilityLevel`` (``--hardware-compatibility``): ``ampere+`` runs on every GPU of
  compute capability >= 8.0, ``same-compute-capability`` on every GPU of the builder's capability;
- ``builder_optimization_level`` 0..5 (default 3).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from ddpm_export.checks import Registry
from ddpm_export.configbase import FrozenConfig, check
from ddpm_export.contract.choices import HARDWARE_COMPATIBILITY

if TYPE_CHECKING:  # pragma: no cover
    from ddpm_export.export.tensorrt import EnginePlan

#: --hardware-compatibility choice (contract.choices) -> trt.HardwareCompatibilityLevel member
HARDWARE_LEVELS: Registry[str] = Registry("hardware_compatibility", zip(
    HARDWARE_COMPATIBILITY, ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"), strict=True))
HardwareLevel = Literal["none", "ampere+", "same-compute-capability"]


@dataclasses.dataclass(frozen=True)
class BuildOptions(FrozenConfig):
    """Options of one engine build (see the module docstring for what each maps to).

    Attributes:
        workspace_mib: cap of TensorRT's workspace pool in MiB; None leaves TensorRT's default
            (the GPU's memory).
        timing_cache: path of a timing cache, read when it exists and written back (atomically)
            with this build's timings merged in; None uses none.
        version_compatible: build a version-compatible engine.
        hardware_compatibility: ``none`` (only GPUs like the builder's), ``ampere+`` or
            ``same-compute-capability``.
        builder_optimization_level: 0 (fast build) .. 5 (longest search); TensorRT's default is 3.
        progress: show a progress bar through TensorRT's IProgressMonitor.
    """

    version: int = 1
    workspace_mib: int | None = None
    timing_cache: str | None = None
    version_compatible: bool = False
    hardware_compatibility: HardwareLevel = "none"
    builder_optimization_level: int = 3
    progress: bool = True

    def validate(self) -> None:
        check(self.workspace_mib is None or self.workspace_mib >= 1, "workspace_mib",
              f"must be >= 1 MiB, got {self.workspace_mib}")
        check(0 <= self.builder_optimization_level <= 5, "builder_optimization_level",
              f"must be in 0..5, got {self.builder_optimization_level}")
        check(self.hardware_compatibility in HARDWARE_LEVELS, "hardware_compatibility",
              f"{self.hardware_compatibility!r} is not one of {', '.join(HARDWARE_LEVELS.names)}")

    def compatibility(self) -> dict[str, Any]:
        """The options that decide where the engine may run (recorded in the sidecar)."""
        return {"version_compatible": self.version_compatible, "hardware_compatibility": self.hardware_compatibility}

    def needs_tensorrt(self) -> tuple[int, int]:
        """The oldest TensorRT (major, minor) that has every option asked for: 10.0, or 10.9 for
        ``same-compute-capability`` (``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY`` first
        appears in TensorRT 10.9's Python bindings)."""
        return (10, 9) if self.hardware_compatibility == "same-compute-capability" else (10, 0)

    def builder(self) -> dict[str, Any]:
        """The options that change how the engine is built, not where it runs (recorded in the sidecar)."""
        return {"workspace_mib": self.workspace_mib, "timing_cache": self.timing_cache is not None,
                "builder_optimization_level": self.builder_optimization_level}


def builder_config(plan: "EnginePlan", options: BuildOptions) -> dict[str, Any]:
    """What the build hands to TensorRT, as plain data: Polygraphy ``CreateConfig`` keyword
    arguments with enum members named by strings, plus the network flag and the profile.

    Always: a strongly typed network (the precision comes from the graph), TF32 off, one
    optimisation profile from the file's batch range.
    """
    pools = {} if options.workspace_mib is None else {"WORKSPACE": options.workspace_mib * 2**20}
    return {
        "network": {"strongly_typed": True},
        "profile": {name: {"min": list(lo), "opt": list(opt), "max": list(hi)}
                    for name, (lo, opt, hi) in plan.profile.items()},
        "create_config": {
            "tf32": False,
            "memory_pool_limits": pools,
            "load_timing_cache": options.timing_cache,
            "version_compatible": options.version_compatible,
            "hardware_compatibility_level": HARDWARE_LEVELS[options.hardware_compatibility],
            "builder_optimization_level": options.builder_optimization_level,
            "progress_monitor": options.progress,
        },
    }
