"""``ddpm-export bench`` on the tiny preset with 2 steps: every path runs and the report carries
every field (no timed assertions: speed is what the bench measures, not what a test checks)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the peers and the exports need torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from ddpm_export.cli import main  # noqa: E402

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
ROW_FIELDS = {"median_ms", "p90_ms", "round_median_ms", "images_per_s", "vs_eager", "vs_best_peer",
              "vs_best_peer_rounds", "best_peer", "same_engine_peer", "vs_same_engine_peer",
              "vs_same_engine_peer_rounds", "gflops", "gemm_fraction", "peak_rss_mib", "sampler_overhead_pct"}


def _bench_tiny(out: Path, *args: str, repeats: int = 1):  # type: ignore[no-untyped-def]
    """``ddpm-export bench --model tiny`` on one thread, every backend installed; JSON to ``out``."""
    backends = "onnxruntime,openvino" if HAS_OPENVINO else "onnxruntime"
    result = CliRunner().invoke(main, ["bench", "--model", "tiny", "--repeats", str(repeats), "--threads", "1",
                                       "--backend", backends, *args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_bench_reports_every_path(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _bench_tiny(out, "--steps", "2", "--batch", "1,2", "--precision", "fp32,bf16,int8",
                         "--attention", "decomposed,ort-mha", repeats=2)
    assert "CPU:" in result.output and "AVX-512" in result.output and "background load" in result.output
    report = json.loads(out.read_text())
    assert set(report["cpu"]["flags"]) == {"avx2", "avx512", "vnni", "bf16", "amx"}
    assert report["threads"] == {"intra_op": 1, "inter_op": 1, "torch": 1}
    assert report["gemm_ceiling"]["gflops"] > 0 and report["flops_per_image"] > 0
    assert all(w.startswith("warning: ") for w in report["warnings"])  # the header's warnings, in the JSON too
    assert 0.0 <= report["load"]["background_cpu_fraction"] <= 1.0
    names = {p["name"] for p in report["paths"]}
    expected = {"eager", "plain-ort", "ours-onnxruntime-fp32-decomposed", "ours-onnxruntime-fp32-ort-mha",
                "ours-onnxruntime-int8"}
    if HAS_OPENVINO:
        expected |= {"plain-ov-f32", "plain-ov-bf16", "ours-openvino-fp32", "ours-openvino-bf16", "ours-openvino-int8"}
    assert names == expected
    # each path compared in "x same" runs right after its peer; int8 last (reversed every other round)
    order = ["eager", "plain-ort", "ours-onnxruntime-fp32-decomposed", "ours-onnxruntime-fp32-ort-mha"]
    if HAS_OPENVINO:
        order += ["plain-ov-f32", "ours-openvino-fp32", "plain-ov-bf16", "ours-openvino-bf16"]
    assert report["round_order"] == order + [n for n in ("ours-onnxruntime-int8", "ours-openvino-int8") if n in names]
    for batch in ("1", "2"):
        rows = report["results"][batch]
        assert set(rows) == expected
        for name, row in rows.items():
            assert set(row) == ROW_FIELDS, name
            assert row["p90_ms"] >= row["median_ms"] > 0
            assert row["vs_eager"] > 0 and row["best_peer"] in {"eager", "plain-ort", "plain-ov-f32", "plain-ov-bf16"}
            assert 0 <= row["sampler_overhead_pct"] < 100 and row["peak_rss_mib"] > 0
        assert rows["eager"]["vs_eager"] == 1.0
        best = rows["eager"]["best_peer"]
        assert rows[best]["vs_best_peer"] == 1.0
        for name, row in rows.items():
            # the median of the rounds' ratios: inside their range (a ratio of pooled medians was not always)
            for key in ("vs_best_peer", "vs_same_engine_peer"):
                if row[key] is not None:
                    assert min(row[f"{key}_rounds"]) <= row[key] <= max(row[f"{key}_rounds"]), (name, key)
            assert len(row["round_median_ms"]) == 2 and min(row["round_median_ms"]) > 0
            # per round, against that round's time of the best peer: the best peer itself is 1 in every round
            assert len(row["vs_best_peer_rounds"]) == 2
            assert (row["vs_best_peer_rounds"] == [1.0, 1.0]) == (name == best)
        # like for like: our fp32 / bf16 paths against the peer on their engine; peers and int8 have none
        same = {name: row["same_engine_peer"] for name, row in rows.items()}
        assert same["ours-onnxruntime-fp32-decomposed"] == same["ours-onnxruntime-fp32-ort-mha"] == "plain-ort"
        assert same["ours-onnxruntime-int8"] is None and same["plain-ort"] is None and same["eager"] is None
        if HAS_OPENVINO:
            assert same["ours-openvino-fp32"] == "plain-ov-f32" and same["ours-openvino-bf16"] == "plain-ov-bf16"
        for name, peer in same.items():
            row = rows[name]
            if peer is None:
                assert row["vs_same_engine_peer"] is None and row["vs_same_engine_peer_rounds"] is None
            else:
                rounds = [p / m for p, m in zip(rows[peer]["round_median_ms"], row["round_median_ms"])]
                assert row["vs_same_engine_peer_rounds"] == rounds
                assert row["vs_same_engine_peer"] == pytest.approx((rounds[0] + rounds[1]) / 2)  # two rounds' median
    assert "x same (rounds)" in result.output and f"batch 1: best peer {report['results']['1']['eager']['best_peer']}" \
        in result.output
    assert report["versions"]["onnxruntime"] and report["versions"]["ddpm_export"]  # what produced the figures


def test_the_best_peer_is_the_one_no_peer_beats_in_the_paired_rounds() -> None:
    """Chosen by the pooled median while the ratios are paired per round, the best peer could be
    beaten: plain-ort read 1.08x the 'best' (the session-13 review's example)."""
    from ddpm_export.bench import _best_peer, _ratio

    rows = {"plain-ort": {"median_ms": 12.0, "round_median_ms": [10.0, 12.0, 12.0]},
            "plain-ov-f32": {"median_ms": 11.0, "round_median_ms": [11.0, 11.0, 13.0]},
            "eager": {"median_ms": 30.0, "round_median_ms": [30.0, 30.0, 30.0]}}
    best = _best_peer(rows, list(rows))
    assert best == "plain-ort" and all(_ratio(rows, p, best)[0] <= 1.0 for p in rows)


def test_bench_needs_a_model_or_a_file() -> None:
    result = CliRunner().invoke(main, ["bench"])
    assert result.exit_code == 2 and "bench needs --model or --onnx" in result.output


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny", "--batch", "1,8,1"], "--batch: 1 listed twice"),
    (["--model", "tiny", "--backend", "onnxruntime,onnxruntime"], "--backend: onnxruntime listed twice"),
    (["--model", "tiny", "--batch", "0"], "--batch must be >= 1, got 0"),
    (["--model", "tiny", "--batch", ","], "expected comma-separated integers, got ','"),
    (["--model", "tiny", "--batch", "1,,8"], "expected comma-separated integers, got '1,,8'"),
    # Python's int() read 1_0 as 10 (and '+8', '٨' as 8): the bench ran batch 10
    (["--model", "tiny", "--batch", "1_0"], "got '1_0': '1_0' is not an integer (digits 0-9 only)"),
    (["--model", "tiny", "--batch", "1,+8"], "got '1,+8': '+8' is not an integer (digits 0-9 only)"),
    (["--model", "tiny", "--batch", "1,\u0668"], "'\u0668' is not an integer (digits 0-9 only)"),
    (["--model", "tiny", "--batch", "-1"], "--batch must be >= 1, got -1"),
    (["--model", "tiny", "--batch", "5000"], "--batch must be <= 4096, got 5000"),  # was: after an export
    (["--model", "tiny", "--steps", "1001"], "--steps must be an int in [1, 1000]"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    # auto is the decomposed form for ONNX Runtime: one file, measured once, reported for both
    (["--model", "tiny", "--attention", "auto,decomposed"], "attention auto and decomposed are the same form for "
                                                            "ONNX Runtime (decomposed): list it once"),
    # variants nothing runs were recorded in the JSON as applied
    (["--model", "tiny", "--precision", "int8", "--rewrites", "none"], "rewrites none: variants of the fp32 file, "
                                                                        "and --precision int8 runs none"),
    (["--model", "tiny", "--backend", "openvino", "--attention", "decomposed,ort-mha"],
     "attention decomposed,ort-mha: several forms are compared on ONNX Runtime"),
    # bf16 runs on OpenVINO alone, which runs the first form: the second was exported and never measured
    (["--model", "tiny", "--backend", "onnxruntime,openvino", "--precision", "bf16,int8", "--attention",
      "decomposed,ort-mha"], "several forms are compared on ONNX Runtime fp32 (OpenVINO runs the first); add "
                             "onnxruntime to --backend and fp32 to --precision"),
    (["--model", "tiny", "--repeats", "99999999999999999999"], "--repeats"),
])
def test_bench_refuses_bad_input_before_any_work(args: list[str], message: str) -> None:
    """Bad input: exit status 2, one line naming the option, and nothing exported or timed."""
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert "exporting" not in result.output and "measuring" not in result.output


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ddpm_export.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("bench-files")
    files = {p: export_onnx("tiny", folder / f"tiny-{p}.onnx", precision=p, max_batch=4, log=lambda line: None).path
             for p in ("fp32", "fp16")}
    files["int8-tensorrt"] = export_onnx("tiny", folder / "tiny-int8-tensorrt.onnx", precision="int8", target="tensorrt",
                                         max_batch=4, validate=False, log=lambda line: None).path
    return files


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny", "--backend", "onnxruntime", "--precision", "fp32,bf16"], "bf16 runs on OpenVINO only"),
    (["--onnx", "{fp16}", "--no-peers"], "is an fp16 file; the bench runs fp32 and int8 files"),
    (["--onnx", "{fp32}", "--no-peers", "--precision", "fp32,int8"],
     "is an fp32 file: precision int8 does not run it .choose from fp32, bf16."),
    (["--onnx", "{fp32}", "--model", "digits"], "was not exported from digits: their UNet configs differ in"),
    (["--onnx", "{fp32}", "--no-peers", "--json", "{fp32}"], "--onnx .* and --json .* name the same file"),
    (["--model", "tiny", "--no-peers", "--steps", "5000"], "steps must be an int in .1, 1000."),
    # the file takes batches 1..4: 8 would run as two calls of 4 (and be reported as batch 8)
    (["--onnx", "{fp32}", "--no-peers", "--batch", "1,8"], "--batch: 8 outside .*tiny-fp32.onnx's batch range 1..4"),
    (["--onnx", "{fp32}", "--no-peers", "--attention", "ort-mha"], "--attention applies to the files the bench "
     "exports from --model, not to .*tiny-fp32.onnx: leave it out"),  # was ignored
    (["--onnx", "{fp32}", "--no-peers", "--rewrites", "none"], "--rewrites applies to the files"),
    # OpenVINO computes its signed int8 activations wrong: refused after the peers were built, no way out named
    pytest.param(["--onnx", "{int8-tensorrt}", "--model", "tiny", "--backend", "onnxruntime,openvino"],
                 "int8-tensorrt.onnx: this int8 file was exported with --target tensorrt, whose signed int8 "
                 "activations OpenVINO computes wrong .*; or bench it with --backend onnxruntime",
                 marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")),
    (["--model", "tiny", "--json", "/proc/self/bench.json"] if os.geteuid() == 0 else
     ["--model", "tiny", "--json", "/nonexistent-root-folder/bench.json"], "bench.json: cannot be written"),
])
def test_bench_refuses_what_it_cannot_measure(tiny_files: dict[str, Path], args: list[str], message: str) -> None:
    """Nothing to measure, a file from another model, an output over the input or in a folder
    that cannot be written: exit 2 before anything is exported or timed (it used to time zero
    paths and exit 0, or fail on the JSON after the whole run)."""
    args = [a.format(**{k: str(v) for k, v in tiny_files.items()}) for a in args]
    before = {p: p.read_bytes() for p in tiny_files.values()}
    result = CliRunner().invoke(main, ["bench", "--steps", "1", "--repeats", "1", "--batch", "1", *args])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert "exporting" not in result.output and "measuring" not in result.output
    assert {p: p.read_bytes() for p in tiny_files.values()} == before


def test_bench_defaults_to_what_runs_the_file(tiny_files: dict[str, Path]) -> None:
    from ddpm_export.bench import default_precisions

    assert default_precisions(("onnxruntime", "openvino"), None) == ("fp32", "bf16", "int8", "int8-bf16")
    assert default_precisions(("onnxruntime",), None) == ("fp32", "int8")
    assert default_precisions(("onnxruntime", "openvino"), str(tiny_files["fp32"])) == ("fp32", "bf16")
    assert default_precisions(("onnxruntime",), str(tiny_files["fp32"])) == ("fp32",)
    # the library's BenchConfig derives the same when it is given none
    from ddpm_export.bench import BenchConfig
    from ddpm_export.runtime.backends import installed_cpu_backends

    cfg = BenchConfig(onnx=str(tiny_files["fp32"]), peers=False)
    assert cfg.backends == installed_cpu_backends() and "onnxruntime" in cfg.backends
    assert cfg.precisions == default_precisions(cfg.backends, str(tiny_files["fp32"]))


def test_bench_without_openvino_says_its_paths_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OpenVINO the default --backend left out half the paths of README's table, unsaid."""
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # not importable, as when not installed
    result = CliRunner().invoke(main, ["bench", "--model", "tiny", "--steps", "5000"])  # stops before any work
    assert result.exit_code == 2 and "steps must be an int in [1, 1000]" in result.output
    assert "note: OpenVINO is not installed, so its paths (plain-ov-f32, plain-ov-bf16, ours-openvino-*" in result.output
    # asked for by name: its paths are no surprise
    result = CliRunner().invoke(main, ["bench", "--model", "tiny", "--backend", "onnxruntime", "--steps", "5000"])
    assert result.exit_code == 2 and "note:" not in result.output


@pytest.mark.parametrize("field, value, message", [
    ("backends", "onnxruntime", "backends must be a tuple of str, got 'onnxruntime'"),  # was: 'n listed twice'
    ("batches", ("1",), "batches must be a tuple of int"),  # was: Python's TypeError from min()
    ("batches", [1, 2], "batches must be a tuple of int"),
    ("batches", (True,), "batches must be a tuple of int"),
    ("steps", "3", "steps must be an int, got '3'"),
    ("repeats", 2.5, "repeats must be an int, got 2.5"),  # was taken
    ("peers", "no", "peers must be a bool, got 'no'"),  # was taken, as true
    ("model", 3, "model must be a str, a path or None, got 3"),
])
def test_bench_config_refuses_a_field_of_the_wrong_type(field: str, value: object, message: str) -> None:
    from ddpm_export.bench import BenchConfig
    from ddpm_export.errors import WrongTypeError

    with pytest.raises(WrongTypeError, match=re.escape(message)):
        BenchConfig(**{"model": "tiny", "backends": ("onnxruntime",), field: value})  # type: ignore[arg-type]


def test_bench_config_keeps_a_path_as_its_str_and_numpy_batches_as_ints() -> None:
    """The report is JSON: a Path model or numpy batch size in its config failed json.dumps after the run."""
    import numpy as np

    from ddpm_export.bench import BenchConfig

    cfg = BenchConfig(model=Path("tiny"), backends=("onnxruntime",), batches=(np.int64(2),))  # type: ignore[arg-type]
    assert cfg.model == "tiny" and cfg.batches == (2,) and type(cfg.batches[0]) is int
    json.dumps(dataclasses.asdict(cfg))


def test_bench_config_threads_default_to_the_clis() -> None:
    """BenchConfig ran 2 threads by default while `bench` without --threads ran `ddpm-export
    --threads`, else every CPU this process may use: the library's figures were not the CLI's."""
    import os

    from ddpm_export.bench import BenchConfig
    from ddpm_export.threads import set_threads

    assert BenchConfig(model="tiny", backends=("onnxruntime",)).threads == len(os.sched_getaffinity(0))
    set_threads(3)
    try:
        assert BenchConfig(model="tiny", backends=("onnxruntime",)).threads == 3
        assert BenchConfig(model="tiny", backends=("onnxruntime",), threads=1).threads == 1
    finally:
        set_threads(None)


def test_bench_refuses_an_existing_json_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    out.write_text("keep me")
    result = CliRunner().invoke(main, ["bench", "--model", "tiny", "--json", str(out)])
    assert result.exit_code == 2 and "pass --force" in result.output and "exporting" not in result.output
    assert out.read_text() == "keep me"


@pytest.mark.slow
def test_bench_compares_rewrites_variants_on_each_fp32_path(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    _bench_tiny(out, "--steps", "1", "--batch", "1", "--precision", "fp32,int8", "--rewrites", "auto,none,upsample-deconv",
                "--no-peers")
    paths = {p["name"]: p for p in json.loads(out.read_text())["paths"]}
    expected = {f"ours-onnxruntime-fp32-rewrites-{v}" for v in ("auto", "none", "upsample-deconv")}
    expected.add("ours-onnxruntime-int8")  # int8 files get their auto rewrites: not a variant
    if HAS_OPENVINO:
        expected |= {f"ours-openvino-fp32-rewrites-{v}" for v in ("auto", "none", "upsample-deconv")}
        expected.add("ours-openvino-int8")
    assert set(paths) == expected
    assert paths["ours-onnxruntime-fp32-rewrites-auto"]["rewrites"] == ["upsample-deconv", "attention-fold"]
    assert paths["ours-onnxruntime-fp32-rewrites-none"]["rewrites"] == []
    assert paths["ours-onnxruntime-fp32-rewrites-upsample-deconv"]["rewrites"] == ["upsample-deconv"]
    assert paths["ours-onnxruntime-int8"]["rewrites"] == ["upsample-subpixel", "attention-fold"]
    # each backend's int8 path runs the file exported for it (--target decides the QDQ layout)
    assert paths["ours-onnxruntime-int8"]["target"] == "onnxruntime"
    assert paths["ours-onnxruntime-fp32-rewrites-auto"]["target"] == "onnxruntime"
    if HAS_OPENVINO:
        assert paths["ours-openvino-int8"]["target"] == "openvino"
        assert paths["ours-openvino-fp32-rewrites-auto"]["target"] == "onnxruntime"  # the same fp32 file


def test_bench_refuses_an_unknown_rewrites_variant() -> None:
    result = CliRunner().invoke(main, ["bench", "--model", "tiny", "--rewrites", "auto,faster"])
    assert result.exit_code == 2 and "faster" in result.output and "upsample-deconv" in result.output


def test_the_table_fits_long_path_names_and_warns_of_more_threads_than_cpus() -> None:
    """A path name past 34 characters (two variants compared) shifted every column after it; 999
    threads on 2 CPUs time-slice, so the figures are not the machine's: said in the header."""
    from ddpm_export.bench import format_report

    report = json.loads((Path(__file__).parents[1] / "docs" / "bench-ddpm-cifar10.json").read_text())
    rows = report["results"]["1"]
    long = "ours-onnxruntime-fp32-decomposed-rewrites-auto"
    rows[long] = rows.pop(next(iter(rows)))
    report["threads"]["intra_op"] = report["cpu"]["usable_cpus"] + 1
    lines = format_report(report).splitlines()
    head = next(line for line in lines if line.startswith("path "))
    row = next(line for line in lines if line.startswith(long + " "))
    assert row.index(" 1 ") < head.index("batch") + len("batch") <= row.index(" 1 ") + 3  # batch under its header
    assert any(line.startswith(f"warning: --threads {report['cpu']['usable_cpus'] + 1} is more than the") for line in lines)
    from ddpm_export.bench import report_warnings

    assert [w for w in report_warnings(report) if "--threads" in w] == [w for w in lines if "--threads" in w]


@pytest.mark.parametrize("run, warned", [("bench-ddpm-cifar10.json", None),
                                         ("bench-s10-zen4-run4.json", "22% apart (142-181")])
def test_a_run_whose_gemm_ceiling_readings_disagree_is_flagged(run: str, warned: str | None) -> None:
    # two measured runs of docs/: a quiet host (readings 180-185 GFLOP/s) and a busy one (142-181)
    from ddpm_export.bench import format_report

    text = format_report(json.loads((Path(__file__).parents[1] / "docs" / run).read_text()))
    warnings = [line for line in text.splitlines() if line.startswith("warning: ")]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"GEMM ceiling readings are {warned} GFLOP/s)" in warnings[0], warnings


def test_a_path_that_fails_is_reported_and_the_others_are_measured(tmp_path: Path) -> None:
    """An engine error on one path (a kernel failing in round 2 here) ended the whole run: no table,
    no JSON, and a peer's error was a traceback."""
    from ddpm_export.bench import BenchConfig, _measure, _Path, _Timed, failed_paths

    def runner(fail_in_call: int | None):
        def for_batch(batch: int):
            calls = []

            def run() -> None:
                calls.append(1)
                if len(calls) == fail_in_call:
                    raise RuntimeError("kernel failed")
                time.sleep(0.001)
            return run
        return for_batch

    paths = [_Path(name, "peer", runner(fail), {}, _Timed(lambda x, t, c: x))
             for name, fail in (("eager", None), ("plain-ort", 3))]  # warm-up, round 1, then fails
    cfg = BenchConfig(model="tiny", backends=("onnxruntime",), precisions=("fp32",), batches=(1,), threads=1,
                      steps=1, repeats=3)
    rows = _measure(paths, paths, 1, cfg, log=lambda line: None)
    assert rows["plain-ort"] == {"failed": "kernel failed"} and len(rows["eager"]["round_median_ms"]) == 3
    report = {"results": {"1": rows}}
    assert failed_paths(report) == ["plain-ort at batch 1: kernel failed"]


def test_the_background_load_counts_only_the_cpus_this_process_may_use() -> None:
    """Under `taskset -c 0` a busy CPU 1 read as 72% background load on CPU 0 (the whole machine's
    first /proc/stat line was summed)."""
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from ddpm_export.machine import _busy_jiffies; from pathlib import Path; "
            "busy, total = _busy_jiffies(); cpu = f'cpu{min(os.sched_getaffinity(0))} '; "
            "line = next(l for l in Path('/proc/stat').read_text().splitlines() if l.startswith(cpu)); "
            "print(total, sum(int(v) for v in line.split()[1:9]))")
    mine, cpu0 = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True).stdout.split())
    assert 0 <= cpu0 - mine <= 50  # one CPU's jiffies (read a moment later), not the machine's


def test_run_bench_restores_the_callers_torch_threads() -> None:
    """run_bench ran PyTorch on cfg.threads and left it so: an app calling it kept 1 thread after."""
    import torch

    from ddpm_export.bench import BenchConfig, run_bench

    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    cfg = BenchConfig(model="tiny", backends=("onnxruntime",), precisions=("fp32",), batches=(1,), threads=wanted,
                      steps=1, repeats=1, peers=False)
    lines: list[str] = []
    report = run_bench(cfg, log=lines.append)
    assert report["threads"]["torch"] == wanted  # what the paths ran on
    assert torch.get_num_threads() == before
    assert "measuring batch 1 (1 path, 1 x 1 steps each)" in lines
