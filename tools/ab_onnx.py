"""Time ONNX files side by side in ONNX Runtime: one forward of each per round, in a new shuffled
order every round, wall and process-CPU time, ratios to the first file.

For levers worth 1-3% (``docs/speed-levers.md``), where `ddpm-export bench`'s few whole-loop rounds
cannot tell a change from the machine's noise. Each file is fed ``x_t`` (standard normal, seed 0)
and ``t = 500`` by input position, so a plain ``torch.onnx.export`` file (inputs named by torch)
and ours time alike; unconditional models only. ``FILE+static`` also times FILE in a session whose
``batch`` axis is fixed to ``--batch`` (ONNX Runtime's free-dimension override). Ratios > 1 mean
faster than the first file; "pairwise" is the median of the per-round ratios.

    OMP_WAIT_POLICY=PASSIVE python tools/ab_onnx.py plain-b1.onnx ours.onnx ours.onnx+static \
        [--batch 1] [--rounds 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


def runner(spec: str, batch: int, threads: int) -> tuple[str, Callable[[], np.ndarray]]:
    """``(label, run)`` for ``FILE`` or ``FILE+static``: ``run()`` is one forward at ``batch``."""
    import onnxruntime as ort

    path, _, variant = spec.partition("+")
    if variant not in ("", "static"):
        raise SystemExit(f"{spec}: the only suffix is +static")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as `ddpm-export bench`
    if variant:
        opts.add_free_dimension_override_by_name("batch", batch)
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 2:
        raise SystemExit(f"{path}: {len(inputs)} inputs; this tool feeds (x_t, t) to unconditional models only")
    shape = [batch if not isinstance(d, int) else d for d in inputs[0].shape]
    feeds = {inputs[0].name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32),
             inputs[1].name: np.full(batch, 500, dtype=np.int64)}
    return path + (f"+{variant}" if variant else ""), lambda: session.run(None, feeds)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+",
                        help="ONNX files, the first is the reference; FILE+static: a static session")
    parser.add_argument("--batch", type=int, default=1, help="rows per forward (>= 1)")
    parser.add_argument("--rounds", type=int, default=100, help="shuffled rounds of one forward per file (>= 1)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (>= 1)")
    args = parser.parse_args(argv)
    for flag, value in (("batch", args.batch), ("rounds", args.rounds), ("threads", args.threads)):
        if value < 1:
            parser.error(f"--{flag} must be >= 1, got {value}")
    missing = [spec for spec in args.files if not Path(spec.partition("+")[0]).is_file()]
    if missing:
        parser.error(f"{missing[0]}: no such ONNX file")
    from ddpm_export.machine import cpu_info

    info = cpu_info()
    print(f"{info['model']}; {', '.join(k for k, v in info['flags'].items() if v)}; {args.threads} threads, "
          f"batch {args.batch}, {args.rounds} rounds; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    pairs = [runner(spec, args.batch, args.threads) for spec in args.files]
    short = [Path(label).name for label, _ in pairs]  # the file names, unless two share one (a/m.onnx, b/m.onnx)
    labels = short if len(set(short)) == len(short) else [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise SystemExit("the same file twice: give each once")
    runs = dict(zip(labels, (run for _, run in pairs)))
    outputs = {label: run() for label, run in runs.items()}  # first call: allocations, prepacking
    wall: dict[str, list[float]] = {label: [] for label in runs}
    cpu: dict[str, list[float]] = {label: [] for label in runs}
    order = list(runs)
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):
        random.Random(r).shuffle(order)
        for label in order:
            w0, c0 = time.perf_counter(), time.process_time()
            runs[label]()
            cpu[label].append(time.process_time() - c0)
            wall[label].append(time.perf_counter() - w0)
    first = next(iter(runs))
    for label in runs:
        diff = float(np.abs(outputs[label] - outputs[first]).max())
        w, c = np.median(wall[label]), np.median(cpu[label])
        print(f"{label:40s} wall {w * 1e3:8.2f} ms x{np.median(wall[first]) / w:.3f}"
              f"  cpu {c * 1e3:8.2f} ms x{np.median(cpu[first]) / c:.3f}"
              f"  pairwise x{np.median(np.array(wall[first]) / np.array(wall[label])):.3f}  max abs diff {diff:.1e}")
    print(f"1-minute load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
