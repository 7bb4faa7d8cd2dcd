#!/usr/bin/env python3
"""Triton serving vs ``Pipeline.sample`` in one process, on the digits model (CPU).

Starts the ``tritonserver`` of the nvidia-pytriton wheel on a repository generated with
``ddpm-export triton --unet-backend python`` (see ``ddpm_export/serve/local_server.py``) and
measures, for requests of ``-n`` images with ``--steps`` steps of the bundle's default sampler:

* the latency of one request (median of ``--repeats``), served over gRPC vs ``Pipeline.sample``;
* the throughput (images/s) of ``--clients`` concurrent clients sending ``--requests`` requests
  in all, vs the same number of threads sharing one Pipeline (median of ``--rounds``);
  the two ways alternate, so a shared machine's load weighs on both alike;
* how the unet's dynamic batcher merged the sampler instances' per-step calls (Triton's
  statistics: U-Net requests per execution);
* the machine's load (``uptime``) before and after.

    OMP_WAIT_POLICY=PASSIVE python tools/triton_bench.py [--bundle B] [-n 4] [--steps 20]

Without ``--bundle`` the shipped digits model is exported first (needs torch).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ddpm_export.checks import check_int
from ddpm_export.errors import DdpmExportError, MissingDependencyError
from ddpm_export.files import atomic_file, refuse_existing_file
from ddpm_export.machine import cpu_info
from ddpm_export.runtime import Pipeline, SampleRequest, make_bundle, verify_bundle
from ddpm_export.serve import write_repository
from ddpm_export.serve.configs import LIMITS
from ddpm_export.serve.local_server import LocalServer, find_tritonserver, stub_numpy_site

ROOT = Path(__file__).resolve().parents[1]


def served(url: str, seed: int, n: int, steps: int) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        values = {"seed": [seed], "num_images": [n], "steps": [steps]}
        inputs = []
        for name, value in values.items():
            item = grpcclient.InferInput(name, [1], "INT64")
            item.set_data_from_numpy(np.array(value, np.int64))
            inputs.append(item)
        return client.infer("sampler", inputs).as_numpy("images")
    finally:
        client.close()


def latency(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of one request per way of running it, the ways interleaved (a shared
    machine's load then weighs on both alike)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(i)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def throughput(runs: dict, clients: int, requests: int, rounds: int, images: int) -> dict[str, float]:
    """Images per second of ``clients`` threads sending ``requests`` requests; the median of
    ``rounds`` interleaved rounds."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                list(pool.map(run, range(requests)))
            rates[name].append(images * requests / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def unet_counts(url: str) -> dict[str, int]:
    """The unet's counters so far: BLS calls received, batched executions Triton ran, images."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics("unet", as_json=True)["model_stats"][0]
    finally:
        client.close()
    return {"calls": int(stats["inference_stats"]["success"].get("count", 0)),
            "executions": int(stats.get("execution_count", 0)), "images": int(stats.get("inference_count", 0))}


def unet_batching(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Calls, executions and images per execution between two :func:`unet_counts` readings (the
    throughput phase alone: the warm-up and the one-at-a-time latency requests never share a batch)."""
    calls, executions, images = (after[k] - before[k] for k in ("calls", "executions", "images"))
    return {"calls": calls, "executions": executions, "images_per_execution": images / max(executions, 1)}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def positive(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="a bundle folder [default: export digits]")
    parser.add_argument("-n", type=positive, default=4, help="images per request")
    parser.add_argument("--steps", type=positive, default=20, help="sampler steps per request (the bundle's default sampler)")
    parser.add_argument("--repeats", type=positive, default=5, help="requests timed for the latency")
    parser.add_argument("--clients", type=positive, default=4, help="concurrent clients / threads")
    parser.add_argument("--requests", type=positive, default=16, help="requests in one throughput round")
    parser.add_argument("--rounds", type=positive, default=3, help="throughput rounds (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    args = parser.parse_args()
    try:
        run(args)
    except DdpmExportError as e:  # a bad --bundle, --json ...: one line, exit 2 (1 for a failed check)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_status) from None


def run(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("tritonclient") is None:
        raise MissingDependencyError("needs the serve extra (tritonclient): pip install 'ddpm-export[serve]'")
    install, site = find_tritonserver(), stub_numpy_site(ROOT)
    if install is None or site is None:
        raise MissingDependencyError("needs nvidia-pytriton and numpy<2 for its stub (./dev installs both)")
    low, high = LIMITS["instances"]  # one sampler instance per client
    check_int("--clients", args.clients, low, high, f"an int in [{low}, {high}] (one sampler instance each)")
    low, high = LIMITS["max_images"]  # the repository is written to take -n images per request
    check_int("-n", args.n, low, high, f"an int in [{low}, {high}] (the repository's --max-images)")
    if args.json is not None:
        refuse_existing_file(args.json, args.force)  # before minutes of work
    if args.bundle is not None:
        verify_bundle(args.bundle)  # a missing or tampered bundle, named before the server starts
    load_before = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from ddpm_export.export.onnx import export_onnx

            onnx = export_onnx("digits", work / "digits.onnx", max_batch=8, log=lambda m: None).path
            bundle = make_bundle([onnx], work / "bundle")
        pipe = Pipeline.from_bundle(bundle)
        SampleRequest(pipe.info, args.n, steps=args.steps, sampler=None, seed=0, eta=None, guidance_scale=1.0,
                      classes=None, context=None, x_T=None)  # what the bundle cannot sample: before the server
        repo = write_repository(bundle, work / "repo", unet_backend="python", instances=args.clients,
                                max_images=args.n, max_image_steps=args.n * args.steps)
        local = lambda i: pipe.sample(args.n, steps=args.steps, seed=i, progress=False)  # noqa: E731
        with LocalServer(install, repo, work, pythonpath=[*site, ROOT]) as server:
            remote = lambda i: served(server.grpc_url, i, args.n, args.steps)  # noqa: E731
            max_abs = float(np.abs(remote(0) - local(0)).max())  # also warms both up
            runs = {"triton": remote, "pipeline": local}
            figures = {"latency_s": latency(runs, args.repeats)}
            before = unet_counts(server.grpc_url)
            figures["images_per_s"] = throughput(runs, args.clients, args.requests, args.rounds, args.n)
            figures["unet_batching"] = unet_batching(before, unet_counts(server.grpc_url))
    report = {"images_per_request": args.n, "steps": args.steps, "clients": args.clients,
              "requests": args.requests, "rounds": args.rounds, "max_abs_vs_pipeline": max_abs, **figures,
              "cpu": cpu_info(), "load_before": load_before, "load_after": uptime()}
    print(json.dumps(report, indent=2))
    if args.json is not None:
        with atomic_file(args.json, force=args.force) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
