"""What a benchmark must say about the machine it ran on (Linux; numpy and onnxruntime only).

- :func:`cpu_info`: the CPU model and the instruction sets that decide which kernels run
  (AVX2, AVX-512, VNNI, BF16, AMX), from ``/proc/cpuinfo``.
- :class:`LoadMeter`: the background load during a run -- CPU time spent by *other* processes
  (``/proc/stat`` busy time minus this process's own), as a fraction of the CPUs we may use --
  and the 1-minute load average. On a shared machine every speed figure needs it.
- :class:`PeakRss`: this process's peak resident memory over a stretch of code (resetting the
  kernel's high-water mark through ``/proc/self/clear_refs``).
- :func:`gemm_ceiling`: the fp32 GEMM rate ONNX Runtime reaches here with the same threads
  (one large MatMul), the yardstick for a network's achieved GFLOP/s.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LoadMeter", "PeakRss", "cpu_info", "cpu_line", "gemm_ceiling"]

#: flag groups reported, each true when any of its /proc/cpuinfo flags is present
FLAG_GROUPS = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "bf16": ("avx512_bf16", "avx_ne_convert"),
    "amx": ("amx_tile", "amx_bf16", "amx_int8"),
}


def cpu_info() -> dict[str, Any]:
    """``{"model", "flags": {avx2, avx512, vnni, bf16, amx}, "logical_cpus", "usable_cpus"}``."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "flags": {name: any(f in flags for f in group) for name, group in FLAG_GROUPS.items()},
            "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0))}


def cpu_line(info: dict[str, Any], threads: int) -> str:
    """One line for a tool's speed figures: ``CPU: <model>; <flag groups present>; <threads> thread(s),
    <usable> of <logical> logical CPUs usable; load average <1 min>`` (``info``: :func:`cpu_info`)."""
    flags = ", ".join(name.upper() for name, present in info["flags"].items() if present) or "no AVX2/AVX-512"
    return (f"CPU: {info['model']}; {flags}; {threads} thread(s), {info['usable_cpus']} of {info['logical_cpus']} "
            f"logical CPUs usable; load average {os.getloadavg()[0]:.2f}")


def _busy_jiffies() -> tuple[int, int]:
    """``(busy, total)`` jiffies over the CPUs this process may run on (its affinity: under
    ``taskset -c 0`` a busy CPU 1 is no load on it) from their ``cpuN`` lines of /proc/stat."""
    mine = {f"cpu{n}" for n in os.sched_getaffinity(0)}
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name in mine:
            fields = [int(v) for v in values]
            cpu_total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
            busy += cpu_total - fields[3] - (fields[4] if len(fields) > 4 else 0)  # less idle + iowait
            total += cpu_total
    return busy, total


class LoadMeter:
    """Background load between :meth:`start` and :meth:`stop`: other processes' CPU time as a
    fraction of the CPUs this process may use (0 = they were ours alone; 1 = every one busy with
    other work)."""

    def start(self) -> "LoadMeter":
        self._busy, self._total = _busy_jiffies()
        self._own = sum(os.times()[:2])
        self._load_before = os.getloadavg()[0]
        return self

    def stop(self) -> dict[str, float]:
        busy, total = _busy_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        own = (sum(os.times()[:2]) - self._own) * hz
        d_total = max(total - self._total, 1)
        other = max(busy - self._busy - own, 0.0)
        return {"background_cpu_fraction": round(other / d_total, 3),
                "loadavg_1min_before": round(self._load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2)}


class PeakRss:
    """``with PeakRss() as p: ...`` then ``p.mib``: peak resident set size of this process
    during the block (the process total, MiB; the high-water mark is reset on entry)."""

    def __enter__(self) -> "PeakRss":
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        except OSError:
            pass  # not permitted: the figure is then the peak since the process started
        self.mib = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                self.mib = int(line.split()[1]) / 1024


def gemm_ceiling(threads: int, size: int = 2048, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of one fp32 ``[size, size] x [size, size]`` MatMul in ONNX Runtime with ``threads``
    intra-op threads (median of ``repeats`` runs after one warm-up; 2 size^3 FLOPs each)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [size, size])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    a = rng.standard_normal((size, size), dtype=np.float32)
    session.run(None, {"A": a})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"A": a})
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"gflops": round(2 * size**3 / seconds / 1e9, 1), "size": size, "threads": threads}
