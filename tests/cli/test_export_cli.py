"""``ddpm-export onnx`` (``ddpm_export.cli``): the options it documents, a real export of ``tiny``,
and the refusals users see (existing file, bad choices, opset too low for onnx-attention)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddpm_export.cli import main
from ddpm_export.commands.onnx import command as onnx_cmd

OPTIONS = ("--model", "-m", "--output", "-o", "--opset", "--precision", "--attention", "--target",
           "--min-batch", "--opt-batch", "--max-batch", "--save-io", "--validate", "--no-validate", "--force")


def test_onnx_help_documents_every_option():
    result = CliRunner().invoke(main, ["onnx", "--help"])
    assert result.exit_code == 0, result.output
    out = result.output
    for opt in OPTIONS:
        assert re.search(rf"(^|[\s,/]){re.escape(opt)}\b", out), f"{opt} not in --help"
    for param in onnx_cmd.params:  # nothing added to the command without a help text
        assert param.help, f"{param.name} has no help"
        for opt in param.opts + param.secondary_opts:
            assert opt in out, opt
    for choice in ("fp32", "fp16", "auto", "decomposed", "ort-mha", "onnx-attention", "any", "onnxruntime",
                   "tensorrt"):
        assert choice in out, choice
    assert "default: 20" in out and "17<=x<=23" in out  # --opset's default and range are shown


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "f.onnx"
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(out)])
    return out, result


def test_onnx_exports_tiny_and_prints_the_validation(tiny_export):
    out, result = tiny_export
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.stat().st_size > 0
    text = result.output
    assert "exporting tiny" in text
    for batch in (1, 4, 8, 16):  # min, opt, interior, max of the default range 1..16
        assert re.search(rf"batch\s+{batch}: max abs [0-9.e+-]+\s+rel L2 [0-9.e+-]+", text), text
    assert f"wrote {out}" in text and "attention decomposed" in text and "batch 1..16" in text
    m = re.search(r"validation passed: max abs ([0-9.e+-]+), rel L2 ([0-9.e+-]+)", text)
    assert m and float(m.group(1)) <= 1e-5, text
    assert [p.name for p in out.parent.iterdir()] == ["f.onnx"]  # no temp file left


def test_onnx_refuses_an_existing_file_without_force(tiny_export):
    out, _ = tiny_export
    before = out.read_bytes()
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(out)])
    assert result.exit_code != 0
    assert str(out) in result.output and "--force" in result.output
    assert "exporting" not in result.output  # a refusal is the only line
    assert out.read_bytes() == before


def test_onnx_bad_attention_is_a_choice_error(tmp_path):
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(tmp_path / "f.onnx"), "--attention", "flash"])
    assert result.exit_code == 2
    assert "Invalid value for '--attention'" in result.output
    for choice in ("auto", "decomposed", "ort-mha", "onnx-attention"):
        assert choice in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp8"], "Invalid value for '--precision'"),
    (["--target", "cuda"], "Invalid value for '--target'"),
    (["--opset", "16"], "Invalid value for '--opset'"),
    (["--max-batch", "0"], "Invalid value for '--max-batch'"),
])
def test_onnx_bad_values_are_click_errors(tmp_path, args, message):
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(tmp_path / "f.onnx"), *args])
    assert result.exit_code == 2 and message in result.output


def test_onnx_attention_with_a_low_opset_is_refused_clearly(tmp_path):
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(tmp_path / "f.onnx"),
                                       "--attention", "onnx-attention"])
    assert result.exit_code == 2  # bad input (ddpm_export.errors); was 1 before one exit-status mapping
    assert "onnx-attention needs --opset >= 23, got 20" in result.output
    assert list(tmp_path.iterdir()) == []


def test_onnx_unknown_model_lists_the_presets(tmp_path):
    result = CliRunner().invoke(main, ["onnx", "-m", "no-such-model", "-o", str(tmp_path / "f.onnx")])
    assert result.exit_code == 2  # bad input (ddpm_export.errors); was 1 before one exit-status mapping
    assert "no-such-model" in result.output and "tiny" in result.output


@pytest.mark.parametrize(("args", "want"), [(["--max-batch", "2"], (1, 2, 2)), (["--max-batch", "1"], (1, 1, 1)),
                                            (["--min-batch", "6", "--max-batch", "8"], (6, 6, 8))])
def test_onnx_default_opt_batch_follows_the_batch_range(tmp_path, args, want):
    """--opt-batch defaults to 4 brought into [--min-batch, --max-batch]: --max-batch 2 alone used to
    fail with 'need min <= opt <= max, got 1/4/2'."""
    from ddpm_export.runtime.info import read_info

    out = tmp_path / "t.onnx"
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(out), "--no-validate", *args])
    assert result.exit_code == 0, result.output
    spec = read_info(out).spec
    assert (spec.min_batch, spec.opt_batch, spec.max_batch) == want


def test_onnx_errors_name_the_flags(tmp_path):
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(tmp_path / "f.onnx"), "--rewrites", "bogus"])
    assert result.exit_code == 2 and "Error: --rewrites 'bogus' are not valid; choose from:" in result.output
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(tmp_path / "f.onnx"), "--min-batch", "5",
                                       "--max-batch", "3"])
    assert result.exit_code == 2 and "Error: --min-batch/--opt-batch/--max-batch: need 1 <= min" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("output", "message"), [(".onnx", "output .onnx needs a file name ending in .onnx"),
                                                 ("", "output . needs a file name ending in .onnx"),
                                                 ("m.onn", "output m.onn must end in .onnx")])
def test_onnx_output_needs_a_name_ending_in_onnx(tmp_path, monkeypatch, output, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", output])
    assert result.exit_code == 2 and f"Error: {message}" in result.output
    assert list(tmp_path.iterdir()) == []


def test_onnx_output_suffix_in_any_case(tmp_path):
    """``model.ONNX`` is an ONNX file like ``model.onnx`` (the other outputs' suffix checks ignore case too)."""
    from ddpm_export.runtime.info import read_info

    out = tmp_path / "t.ONNX"
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(out), "--no-validate"])
    assert result.exit_code == 0, result.output
    assert read_info(out).spec.sample_size > 0 and [p.name for p in tmp_path.iterdir()] == ["t.ONNX"]


def test_sinusoidal_2d_with_an_unattended_level_not_divisible_by_4_exports_and_matches_torch(tmp_path):
    """Channels 6 and 12, attention (with the 2-D sinusoid) only at 12: ``python -m ddpm_export onnx``
    on its checkpoint folder exports, and ONNX Runtime gives torch's output. The config used to be
    refused: 'sinusoidal_2d' needed every level's channels divisible by 4."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from ddpm_export.config import UNetConfig
    from ddpm_export.nn.attention import SinusoidalPosition2D
    from ddpm_export.nn.checkpoint import build_model, save_checkpoint

    cfg = UNetConfig(base_channels=6, channel_mult=(1, 2), sample_size=8, num_groups=3, num_res_blocks=1,
                     attention_resolutions=(4,), positional_encoding="sinusoidal_2d", zero_init=False)
    model = build_model(cfg, seed=0).eval()
    positions = [m for m in model.modules() if isinstance(m, SinusoidalPosition2D)]
    assert [m.freqs.numel() for m in positions] == [3] * 4  # 12 / 4 frequencies: 1 down, middle, 2 up
    folder = save_checkpoint(model, tmp_path / "ckpt")
    out = tmp_path / "m.onnx"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "ddpm_export", "onnx", "-m", str(folder), "-o", str(out),
                           "--max-batch", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "validation passed" in proc.stdout, proc.stdout
    gen = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 3, 8, 8, generator=gen), torch.tensor([5, 900])
    with torch.no_grad():
        want = model(x, t).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, dict(zip(names, (x.numpy(), t.numpy()))))[0]
    assert float(np.abs(want).max()) > 0.1  # the attention branches contribute (zero_init=False)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
