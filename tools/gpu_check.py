"""The GPU check as one table: engines (fp32, fp16 from the fp32 file), ONNX Runtime's CUDA and
TensorRT providers, `verify` against PyTorch (fp32 >= 60 dB, fp16 >= 40 dB), `inspect`'s
TensorRT per-layer profile of the fp32 engine and `bench`'s CPU paths. Every step
runs the real CLI in a subprocess; a step that cannot run on this machine -- exit 2 with one of
the messages of a missing package, GPU or provider (:data:`ENVIRONMENT`) -- says why (SKIP)
instead of failing the rest; any other exit 2 (a build TensorRT refused, an engine mismatch, a
usage error of this script) is a FAIL. Called by tools/gpu_check.sh.

Exit status: 1 when a step failed, else 2 when a step was skipped (not everything was checked:
without a GPU every GPU step is; it exited 0 then, as if the GPU side had passed), else 0.

    python tools/gpu_check.py [--model digits] [--out gpu-check-out]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROWS: list[tuple[str, str, str, str]] = []
#: what the CLI says (exit 2) when a package, the GPU or an execution provider is missing here
ENVIRONMENT = ("package is not installed", "package is installed but fails to import", "no CUDA GPU is visible",
               "CUDA is not usable here", "install onnxruntime-gpu", "ONNX Runtime fell back to")


def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpm_export.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def step(name: str, *args: str, report: Path | None = None, detail: Callable[[dict], str] | None = None) -> bool:
    """Run one CLI step and add its row: PASS (exit 0), SKIP (exit 2 naming a missing piece of the
    environment), FAIL (anything else)."""
    start = time.perf_counter()
    proc = cli(*args)
    seconds = f"{time.perf_counter() - start:.1f}"
    last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
    missing = proc.returncode == 2 and any(text in proc.stderr for text in ENVIRONMENT)
    status = "PASS" if proc.returncode == 0 else "SKIP" if missing else "FAIL"
    line = last[0][:110]
    if report is not None and report.is_file():
        line = (detail or _verify_detail)(json.loads(report.read_text()))
    ROWS.append((name, status, seconds, line))
    if status == "FAIL":
        print(f"--- {name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", flush=True)
    return proc.returncode == 0


def _verify_detail(report: dict) -> str:
    parts = []
    for name, r in report["backends"].items():
        ddim = r["trajectories"]["ddim"]["final"]["psnr_db"]
        parts.append(f"{name}: step rel L2 {r['single_step']['rel_l2']:.1e}, DDIM PSNR "
                     f"{'inf' if ddim is None else f'{ddim:.1f}'} dB")
    return f"{report['precision']} (>= {report['thresholds']['final_psnr_db']:g} dB) " + "; ".join(parts)


def _profile_detail(report: dict) -> str:
    p = report["tensorrt_profile"]
    shares = ", ".join(f"{c} {us / p['total_us']:.0%}" for c, us in p["by_category_us"].items() if us)
    return f"{p['total_us'] / p['runs'] / 1e3:.3f} ms/run: {shares}; unplaced {p['unplaced_us'] / p['total_us']:.0%}"


#: the file that marks an --out folder as this tool's, so that a later run may replace it
MARKER = ".ddpm-gpu-check"


def fresh_out(out: Path) -> str | None:
    """Empty ``out`` for this run and mark it as ours; the reason it cannot be, or None. A folder
    holding files this tool did not write (no :data:`MARKER`) is never deleted."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; give a folder"
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        return f"--out {out} holds files this tool did not write; give a new or empty folder"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by tools/gpu_check.py: its next run replaces this folder\n", encoding="utf-8")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--model", default="digits", help="the preset or checkpoint folder to export and build")
    parser.add_argument("--out", type=Path, default=Path("gpu-check-out"),
                        help="a new or empty folder, or one an earlier run wrote (replaced)")
    args = parser.parse_args()
    out, m = args.out, args.model
    from ddpm_export.errors import DdpmExportError
    from ddpm_export.presets import check_model_name

    try:
        check_model_name(m)
    except DdpmExportError as e:
        parser.error(f"--model: {e}")
    problem = fresh_out(out)
    if problem is not None:
        parser.error(problem)
    fp32 = out / f"{m}.onnx"
    if not step(f"export {m} fp32", "onnx", "--model", m, "-o", str(fp32), "--target", "tensorrt"):
        return _print()
    cache = str(out / "trt.timing-cache")
    step("trt fp32 engine", "trt", "--onnx", str(fp32), "-o", str(out / "fp32.plan"), "--timing-cache", cache,
         "--no-progress")
    step("trt fp16 engine (fp16 pass)", "trt", "--onnx", str(fp32), "--fp16", "-o", str(out / "fp16.plan"),
         "--timing-cache", cache, "--no-progress")
    step("trt --model --fp16 (one step)", "trt", "--model", m, "--fp16", "-o", str(out / "one.plan"),
         "--version-compatible", "--hardware-compatibility", "ampere+", "--workspace", "4096", "--no-progress")
    for name, onnx, engine in (("verify fp32 engine", fp32, out / "fp32.plan"),
                               ("verify fp16 engine", out / "fp16.plan.onnx", out / "fp16.plan"),
                               ("verify vc/ampere+ engine", out / "one.plan.onnx", out / "one.plan")):
        if engine.is_file():
            report = out / f"{engine.stem}.report.json"
            step(name, "verify", "--model", m, "--onnx", str(onnx), "--engine", str(engine), "--report", str(report),
                 report=report)
        else:
            ROWS.append((name, "SKIP", "0.0", f"no {engine.name} (its build did not pass)"))
    if (out / "fp32.plan").is_file():
        report = out / "inspect.json"
        step("inspect --profile --engine fp32", "inspect", "--model", m, "--profile", "--profile-runs", "3",
             "--erf-samples", "1", "--engine", str(out / "fp32.plan"), "--json", str(report), report=report,
             detail=_profile_detail)
    else:
        ROWS.append(("inspect --profile --engine fp32", "SKIP", "0.0", "no fp32.plan (its build did not pass)"))
    for backend in ("ort-cuda", "ort-tensorrt"):
        report = out / f"{backend}.report.json"
        step(f"verify {backend}", "verify", "--model", m, "--onnx", str(fp32), "--backend", backend,
             "--report", str(report), report=report)
    step("bench (CPU paths, this machine's cores)", "bench", "--model", m, "--batch", "1", "--steps", "5",
         "--repeats", "2", "--json", str(out / "bench.json"))
    return _print()


def _print() -> int:
    widths = [max(len(r[i]) for r in [("check", "status", "s", "detail"), *ROWS]) for i in range(4)]
    line = "  ".join(f"{{:{w}}}" for w in widths)
    print("\n" + line.format("check", "status", "s", "detail"))
    print(line.format(*("-" * w for w in widths)))
    for row in ROWS:
        print(line.format(*row))
    skipped = sum(r[1] == "SKIP" for r in ROWS)
    if any(r[1] == "FAIL" for r in ROWS):
        return 1
    if skipped:
        print(f"{skipped} of {len(ROWS)} checks skipped (a missing piece, named in the row): not everything was "
              f"checked (exit 2)")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
