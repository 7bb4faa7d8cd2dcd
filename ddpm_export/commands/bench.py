"""`ddpm-export bench`: every sampling path side by side, in one process, with the same threads."""

from __future__ import annotations

import click

from ddpm_export.console import IntRange, is_plain_int
from ddpm_export.contract.choices import ATTENTION_CHOICES, REWRITE_CHOICES
from ddpm_export.runtime.backends import CPU_BACKENDS
from ddpm_export.threads import MAX_THREADS


def _csv(kind: type, choices: tuple[str, ...] | None = None):  # type: ignore[no-untyped-def]
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
        if value is None:
            return None
        parts = [v.strip() for v in value.split(",")]
        what = "integers" if kind is int else "names"
        if "" in parts:
            raise click.BadParameter(f"expected comma-separated {what}, got {value!r}")
        not_int = [v for v in parts if kind is int and not is_plain_int(v)]
        if not_int:
            raise click.BadParameter(f"expected comma-separated {what}, got {value!r}: {not_int[0]!r} is not an "
                                     f"integer (digits 0-9 only)")
        items = tuple(kind(v) for v in parts)
        bad = [v for v in items if choices is not None and v not in choices]
        if bad:
            raise click.BadParameter(f"{', '.join(map(str, bad))}: choose from {', '.join(choices or ())}")
        return items
    return parse


@click.command("bench")
@click.option("--model", "-m", "model", default=None,
              help="Preset or checkpoint folder: our files are exported from it, and the peers (eager, plain export) run it.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Bench this file of ours (with --model also the peers; else pass --no-peers).")
@click.option("--backend", "backends", default=None, callback=_csv(str, tuple(CPU_BACKENDS)),
              help="Our backends, comma-separated (onnxruntime, openvino) [default: those installed].")
@click.option("--precision", "precisions", default=None, callback=_csv(str, ("fp32", "bf16", "int8", "int8-bf16")),
              help="Our precisions: fp32, bf16 (OpenVINO computing the fp32 file in bfloat16), int8 (QDQ file), "
                   "int8-bf16 (OpenVINO: the int8 file with its float parts in bfloat16) [default: every one the "
                   "backends compute; with --onnx, those of the file's precision].")
@click.option("--attention", default="auto", callback=_csv(str, ATTENTION_CHOICES),
              help="Attention forms of our fp32 file, compared on ONNX Runtime (auto: what --target onnxruntime picks).")
@click.option("--rewrites", default="auto", callback=_csv(str, REWRITE_CHOICES),
              help="Rewrites variants of our fp32 file, compared on every fp32 path: auto (what `ddpm-export onnx` "
                   "applies), none, or one rewrite alone (upsample-deconv, upsample-subpixel, attention-fold).")
@click.option("--batch", "batches", default="1,8", callback=_csv(int), help="Batch sizes, comma-separated.")
@click.option("--threads", type=IntRange(1, MAX_THREADS), default=None,
              help="Threads for every engine [default: `ddpm-export --threads`, else every CPU this process may use].")
@click.option("--steps", type=IntRange(1), default=10, help="DDIM steps per timed run.")
@click.option("--repeats", type=IntRange(1, 1000), default=3,
              help="Interleaved rounds (every path once per round).")
@click.option("--peers/--no-peers", default=True, help="Also run eager PyTorch and the plain torch.onnx.export file.")
@click.option("-o", "--output", "--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON here.")
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
def command(model: str | None, onnx_path: str | None, backends: tuple, precisions: tuple, attention: tuple,
            rewrites: tuple, batches: tuple, threads: int | None, steps: int, repeats: int, peers: bool,
            json_path: str | None, force: bool) -> None:
    """Measure sampling speed: torch eager, the plain-export peers and our paths, side by side.

    \b
    Per path and batch: median / p90 ms per step of the whole sampling loop, images/s of a
    full default-length run, speed relative to eager, to the best peer and to the peer on the
    same engine and precision (the last two with their lowest and highest over the rounds),
    achieved GFLOP/s and its fraction of a fp32 GEMM ceiling measured in the same run, peak
    RSS, and the sampler's time outside the model. Prints the CPU model and flags, the thread settings
    and the background load seen. Needs the export extra (torch); openvino for OpenVINO paths.
    A path whose engine fails is reported as FAILED and the others are measured on (exit 2 once
    the table and --json are written).
    \b
    Examples:
      ddpm-export bench --model ddpm-cifar10 --batch 1,8 --threads 2 --json bench.json
      ddpm-export bench --model tiny --steps 2 --precision fp32 --attention decomposed,ort-mha
      ddpm-export bench --model ddpm-cifar10 --precision fp32,bf16 --rewrites auto,none
    """
    import json

    from ddpm_export.bench import BenchConfig, check_model_and_extra, failed_paths, format_report, run_bench
    from ddpm_export.console import count, require_output_when_quiet, use_flag_names
    from ddpm_export.errors import EngineError
    from ddpm_export.files import atomic_file, refuse_existing_file, refuse_same_file
    from ddpm_export.inputs import input_files

    use_flag_names({name: f"--{name}" for name in ("batch", "steps", "threads", "repeats", "backend", "precision",
                                                     "attention", "rewrites")})
    require_output_when_quiet({"--json": json_path})
    refuse_same_file({"--onnx": onnx_path, **input_files(model=model, onnx=onnx_path)}, {"--json": json_path})
    if json_path is not None:
        refuse_existing_file(json_path, force)
    cfg = BenchConfig(model=model, onnx=onnx_path, backends=backends or (), precisions=precisions or (),
                      attention=attention, rewrites=rewrites, batches=batches,
                      threads=threads, steps=steps, repeats=repeats,
                      peers=peers)
    check_model_and_extra(cfg)  # before the note: without torch, the line that matters comes first
    if backends is None and "openvino" not in cfg.backends:  # --backend left to what is installed
        click.echo("note: OpenVINO is not installed, so its paths (plain-ov-f32, plain-ov-bf16, ours-openvino-*, "
                   "bf16 and int8-bf16) are left out: pip install 'ddpm-export[openvino]'")
    report = run_bench(cfg, log=click.echo)
    click.echo(format_report(report))
    if json_path is not None:
        with atomic_file(json_path, force=force) as tmp:
            tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_path}")
    failed = failed_paths(report)
    if failed:  # after the table and the JSON: the other paths' figures are kept
        raise EngineError(f"{count(len(failed), 'path')} failed, the others were measured: {'; '.join(failed)}")
