"""`ddpm-export inspect` on the tiny preset: tables, JSON keys, the ERF PNG, refusing outputs."""

from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from ddpm_export import load_model
from ddpm_export.cli import main


def test_inspect_writes_json_and_plot_and_refuses_to_overwrite(tmp_path):
    out, png = tmp_path / "tiny.json", tmp_path / "erf.png"
    args = ["inspect", "--model", "tiny", "--batch", "2", "--json", str(out), "--plot", str(png), "--erf-samples", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for text in ("down.1.attentions.0", "FlopCounterMode", "agrees", "effective receptive field", "separable on"):
        assert text in result.output
    report = json.loads(out.read_text())
    params = sum(p.numel() for p in load_model("tiny").parameters())
    assert report["total_params"] == params == 177_427
    assert report["total_flops"] == report["flop_counter_flops"] > 0
    assert 0 < report["erf_ratio"] <= report["erf_ratio_visible"] <= 1
    assert report["theoretical_rf"] == 61 and report["batch"] == 2
    assert {"blocks", "what_if", "erf_radius", "seconds"} <= set(report)
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (16 * 16, 16 * 16)

    before = out.read_bytes()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--force" in again.output and str(out) in again.output
    assert out.read_bytes() == before
    forced = CliRunner().invoke(main, [*args, "--force"])
    assert forced.exit_code == 0, forced.output


def test_inspect_profile_prints_shares(tmp_path):
    result = CliRunner().invoke(main, ["inspect", "-m", "tiny", "--profile", "--profile-runs", "1",
                                       "--erf-samples", "1"])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime CPU profile" in result.output
    for category in ("conv", "attention", "normalization", "elementwise"):
        assert category in result.output.split("ONNX Runtime CPU profile")[1]


def test_inspect_takes_the_global_threads():
    """`ddpm-export --threads 2 inspect` measures with 2 threads (its own --threads defaulted to 1 and won)."""
    result = CliRunner().invoke(main, ["--threads", "2", "inspect", "-m", "tiny", "--profile", "--profile-runs", "1",
                                       "--erf-samples", "1"])
    assert result.exit_code == 0, result.output
    assert "at batch 1, 2 threads" in result.output


def test_inspect_plot_must_be_a_png(tmp_path):
    result = CliRunner().invoke(main, ["inspect", "-m", "tiny", "--plot", str(tmp_path / "erf.txt")])
    assert result.exit_code == 2 and "--plot" in result.output and "must end in .png" in result.output
    assert list(tmp_path.iterdir()) == []


def test_inspect_unknown_model_is_bad_input():
    result = CliRunner().invoke(main, ["inspect", "--model", "no-such-model"])
    assert result.exit_code == 2 and "no-such-model" in result.output
    assert "Traceback" not in result.output


def test_inspect_erf_size_is_checked_before_any_work():
    result = CliRunner().invoke(main, ["inspect", "--model", "kitchen-sink", "--erf-size", "32"])
    assert result.exit_code == 2 and "--erf-size" in result.output and "relative_bias" in result.output
    assert "block" not in result.output  # refused before the tables


def test_inspect_erf_size_has_an_upper_bound():
    """An ERF input far above the sample size would need terabytes for attention (a traceback from
    the allocator before): refused up front, naming the flag and the limit."""
    result = CliRunner().invoke(main, ["inspect", "--model", "tiny", "--erf-size", "2048"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "--erf-size 2048: at most 4x the sample size, 64 for this model" in result.output
    assert "block" not in result.output


def test_inspect_never_writes_over_the_engine_or_its_sidecar(tmp_path):
    """`--json e.plan.json --force` replaced the engine's sidecar with the report (and `--json
    e.plan` the engine): refused like any output over an input, before the GPU is asked for."""
    engine = tmp_path / "e.plan"
    engine.write_bytes(b"engine bytes")
    (tmp_path / "e.plan.json").write_text('{"onnx_sha256": "0"}')
    for target, label in ((engine, "--engine"), (tmp_path / "e.plan.json", "--engine's sidecar")):
        result = CliRunner().invoke(main, ["inspect", "-m", "tiny", "--profile", "--engine", str(engine),
                                           "--json", str(target), "--force"])
        assert result.exit_code == 2 and f"{label} {target} and --json {target} name the same file" in result.output
    assert engine.read_bytes() == b"engine bytes" and (tmp_path / "e.plan.json").read_text() == '{"onnx_sha256": "0"}'


def test_the_erf_of_seed_initialised_zero_init_weights_is_measured_with_the_branches_on():
    """With zero_init every residual and attention branch of a seed-initialised model ends in a
    zero layer: its gradient flows through the skip paths alone (ddpm-cifar10 read r50 = 2 px)."""
    import dataclasses

    from ddpm_export.commands.inspect import _erf_subject
    from ddpm_export.nn.weights import build_model

    cfg = dataclasses.replace(load_model("tiny").config, zero_init=True)
    zeroed = build_model(cfg).eval()
    subject, weights = _erf_subject(zeroed, "seed-initialised")
    assert weights == "seed-initialised, zero_init off" and subject.config == dataclasses.replace(cfg, zero_init=False)
    zero = {n for n, p in zeroed.named_parameters() if n.endswith(".weight") and not p.any()}
    assert zero and all(p.any() for n, p in subject.named_parameters() if n in zero)
    assert _erf_subject(zeroed, "trained") == (zeroed, "trained")
