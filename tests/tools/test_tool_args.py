"""tools/quality.py and tools/solver_table.py refuse a bad flag before any export or sampling:
exit 2 with one error line naming the flag (each ended in a traceback, exit 1, some after minutes of work)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest

from ddpm_export.presets import shipped_onnx

TOOLS = Path(__file__).resolve().parents[2] / "tools"
SAMPLERS = "'ddim', 'ddpm', 'dpm-solver++', 'dpm-solver', 'sde-dpm-solver++', 'unipc'"
TORCH = "torch"  # the case reads --model's files through ddpm_export.nn.checkpoint, which imports torch


def load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tools_{name}_args", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _no_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("the arguments were not refused before the work")


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    return load_tool("quality")


@pytest.fixture(scope="module")
def solver_table() -> ModuleType:
    return load_tool("solver_table")


@pytest.fixture
def digits_onnx() -> Path:
    path = shipped_onnx("digits")
    if path is None:
        pytest.skip("the digits preset ships no model.onnx here")
    return path


def refused(tool: ModuleType, argv: list[str], monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of ``tool.main(argv)``, which must exit 2 before any export or sampling."""
    for name in ("load_digits_split", "exported_backend", "torch_backend", "generate", "low_precision", "_pipeline"):
        if hasattr(tool, name):
            monkeypatch.setattr(tool, name, _no_work)
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err and sum("error:" in line for line in err.splitlines()) == 1, err
    line = err.strip().splitlines()[-1]
    assert ": error: " in line, err  # argparse's "PROG: error: ..." after its usage lines
    return line


@pytest.mark.parametrize(("argv", "message", "needs"), [
    (["--steps", "0"], "--steps must be an int in [1, 1000] (the model's num_train_timesteps), got 0", TORCH),
    (["--steps", "5000"], "--steps must be an int in [1, 1000]", TORCH),
    (["--sampler", "unipc", "--steps", "1000"], "--sampler unipc --steps 1000: num_inference_steps", TORCH),
    (["--sampler", "euler"], f"argument --sampler: invalid choice: 'euler' (choose from {SAMPLERS})", None),
    (["--num-samples", "-5"], "--num-samples must be an int >= 2 (a Fréchet distance needs two samples), got -5",
     None),
    (["--num-samples", "1"], "--num-samples must be an int >= 2", None),
    (["--per-class", "0"], "--per-class must be an int >= 1, got 0", None),
    (["--compare-samples", "0"], "--compare-samples must be an int >= 2", None),
    (["--batch-size", "0"], "--batch-size must be an int in [1, 2048]", None),
    (["--threads", "0"], "--threads must be an int >= 1, got 0", None),
    (["--seed", "-1"], "--seed must be an int >= 0, got -1", None),
    (["--guidance", "nan"], "--guidance: guidance_scale must be a finite float, got nan", None),
    (["--model", "no-such-model"], "--model: unknown model 'no-such-model'", None),
    (["--model", ""], "--model: an empty model name", None),
    (["--model", "tiny"], "--model tiny: it makes 3x16x16 images (unconditional)", TORCH),
    (["--classifier", "{tmp}"], "--classifier: {tmp}/classifier.json not found", None),
    (["--json", "{tmp}/missing/q.json"], "--json {tmp}/missing/q.json: the folder {tmp}/missing does not exist", None),
    (["--json", "{tmp}"], "--json: {tmp} is a folder", None),
])
def test_quality_refuses_bad_arguments(quality, tmp_path, monkeypatch, capsys, argv, message, needs):
    if needs:
        pytest.importorskip(needs)
    line = refused(quality, [a.format(tmp=tmp_path) for a in argv], monkeypatch, capsys)
    assert message.format(tmp=tmp_path) in line, line
    if "--model: unknown" in message:
        assert "digits" in line  # the presets are listed


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "--steps must be an int in [1, 1000] (the model's num_train_timesteps), got 0"),
    (["--steps", "5", "2000"], "--steps must be an int in [1, 1000]"),
    (["--solvers", "unipc", "--steps", "1000"], "--solvers unipc --steps 1000: num_inference_steps"),
    (["--solvers", "euler"], f"argument --solvers: invalid choice: 'euler' (choose from {SAMPLERS})"),
    (["--baseline", "ddim"], "--baseline ddim: expected SAMPLER:STEPS, e.g. ddim:50"),
    (["--baseline", "ddim:x"], "--baseline ddim:x: expected SAMPLER:STEPS"),
    (["--baseline", "euler:50"], f"--baseline euler:50: sampler='euler' is not valid; choose one of: {SAMPLERS}"),
    (["--baseline", "ddim:0"], "--baseline ddim:0: steps must be an int in [1, 1000]"),
    (["--num-samples", "-1"], "--num-samples must be an int >= 2"),
    (["--threads", "0"], "--threads must be an int >= 1, got 0"),
    (["--max-batch", "0"], "--max-batch must be an int in [1, 4096], got 0"),
    (["--seed", "-1"], "--seed must be an int >= 0, got -1"),
    (["--set", "use_karras_sigmas"], "--set use_karras_sigmas: expected FIELD=JSON"),
    (["--set", "no_field=1"], "--set no_field=1: 'no_field' is not a DiffusionConfig field; choose one of: "),
    (["--set", "timestep_spacing=trailing"], "--set timestep_spacing=trailing: 'trailing' is not JSON"),
    (["--set", "solver_order=7"], "--set: solver_order: must be 1, 2 or 3, got 7"),
    (["--set", 'timestep_spacing="sideways"'], "--set: timestep_spacing='sideways' is not valid; choose one of: "),
    (["--json", "{tmp}/missing/t.json"], "--json {tmp}/missing/t.json: the folder {tmp}/missing does not exist"),
    (["--markdown", "{tmp}/missing/t.md"], "--markdown {tmp}/missing/t.md: the folder {tmp}/missing does not exist"),
    (["--json", "{tmp}/t", "--markdown", "{tmp}/t"], "--json {tmp}/t and --markdown {tmp}/t name the same file"),
    # each exported the model and printed a table of the real-digits row only, exit 0
    (["--baseline", "--solvers"], "--baseline --solvers --steps 5 10 15 20 25: no row to run; give --baseline "
                                  "SAMPLER:STEPS, or --solvers SAMPLER... with --steps N..."),
    (["--baseline", "--steps"], "--baseline --solvers dpm-solver++ unipc --steps: no row to run"),
])
def test_solver_table_refuses_bad_arguments(solver_table, digits_onnx, tmp_path, monkeypatch, capsys, argv, message):
    """With --onnx (the shipped digits export: torch-free, nothing to export)."""
    line = refused(solver_table, ["--onnx", str(digits_onnx), *(a.format(tmp=tmp_path) for a in argv)],
                   monkeypatch, capsys)
    assert message.format(tmp=tmp_path) in line, line


@pytest.mark.parametrize(("argv", "message", "needs"), [
    (["--onnx", "{tmp}/missing.onnx"], "--onnx: {tmp}/missing.onnx: no such ONNX file", None),
    (["--model", "no-such-model"], "--model: unknown model 'no-such-model'", None),
    (["--model", "tiny"], "--model tiny: it makes 3x16x16 images (unconditional)", TORCH),
    (["--model", "digits", "--steps", "0"], "--steps must be an int in [1, 1000]", TORCH),
])
def test_solver_table_refuses_a_bad_model_or_onnx(solver_table, tmp_path, monkeypatch, capsys, argv, message, needs):
    if needs:
        pytest.importorskip(needs)
    line = refused(solver_table, [a.format(tmp=tmp_path) for a in argv], monkeypatch, capsys)
    assert message.format(tmp=tmp_path) in line, line


def test_valid_arguments_pass_the_checks(quality, solver_table, digits_onnx):
    """The defaults and a --set pass; the --set values come back typed as the config holds them."""
    pytest.importorskip(TORCH)
    p = quality.parser()
    args = p.parse_args(["--sampler", "ddim", "--steps", "20"])
    quality.check_args(p, args)
    scheduler, label, null_class = quality.schedule(p, args)
    assert (label, null_class, scheduler.config.num_inference_steps) == ("ddim-20", 10, 20)
    p = solver_table.parser()
    args = p.parse_args(["--onnx", str(digits_onnx), "--set", "use_karras_sigmas=true", "--set",
                         "disable_corrector=[0]"])
    assert solver_table.check_args(p, args) == {"use_karras_sigmas": True, "disable_corrector": (0,)}


@pytest.mark.parametrize("tool_name", ["quality", "solver_table"])
def test_a_broken_checkpoint_is_one_error_line(tool_name, tmp_path, capsys):
    """A truncated model.safetensors passes the flag checks (they read config.json) and failed in the
    export: a CheckpointError traceback, exit 1 (the status of a failed check)."""
    import shutil

    from ddpm_export.presets import MODELS_DIR

    pytest.importorskip(TORCH)
    model = tmp_path / "digits"
    shutil.copytree(MODELS_DIR / "digits", model, ignore=shutil.ignore_patterns("model.onnx"))
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10_000])
    argv = {"quality": ["--num-samples", "2", "--per-class", "1"],
            "solver_table": ["--num-samples", "2", "--baseline", "--steps", "5"]}[tool_name]
    assert load_tool(tool_name).main(["--model", str(model), *argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {weights}: not a safetensors file or truncated"), err


def test_solver_table_says_what_its_images_per_second_ran_on(solver_table, digits_onnx, tmp_path, capsys):
    """Its images/s figures came with the load average only: no thread count nor CPU flags on the
    screen or in the --markdown table (the JSON had the CPU's name)."""
    from ddpm_export.machine import cpu_info

    md, js = tmp_path / "t.md", tmp_path / "t.json"
    assert solver_table.main(["--onnx", str(digits_onnx), "--num-samples", "2", "--baseline", "ddim:2", "--solvers",
                              "--threads", "1", "--max-batch", "2", "--json", str(js), "--markdown", str(md)]) == 0
    report, out = json.loads(js.read_text()), capsys.readouterr().out
    flags = [name.upper() for name, present in cpu_info()["flags"].items() if present]
    assert report["cpu"] == cpu_info() and report["threads"] == 1
    line = f"CPU: {cpu_info()['model']}; {', '.join(flags) or 'no AVX2/AVX-512'}; 1 thread(s)"
    assert out.startswith(line) and line in md.read_text(), out


def test_quality_says_what_its_seconds_ran_on(quality, tmp_path, capsys):
    pytest.importorskip(TORCH)
    from ddpm_export.machine import cpu_info

    js = tmp_path / "q.json"
    assert quality.main(["--num-samples", "2", "--per-class", "1", "--threads", "1", "--json", str(js)]) == 0
    report = json.loads(js.read_text())
    assert report["cpu"] == cpu_info() and report["threads"] == 1
    assert f"CPU: {cpu_info()['model']}; " in capsys.readouterr().out



def test_quality_refuses_a_degenerate_classifier_in_one_line(quality, tmp_path, capsys):
    """Its features all zero (finite weights): a ZeroDivisionError traceback at FD / reference FD."""
    pytest.importorskip(TORCH)
    import shutil

    from safetensors.numpy import load_file, save_file

    from ddpm_export.quality import CLASSIFIER_DIR

    clf = tmp_path / "clf"
    shutil.copytree(CLASSIFIER_DIR, clf)
    weights = load_file(str(clf / "classifier.safetensors"))
    weights["fc1.bias"][:] = -1e6
    save_file(weights, str(clf / "classifier.safetensors"))
    for flags in ([], ["--low-precision"]):
        assert quality.main(["--classifier", str(clf), "--num-samples", "2", "--per-class", "1", *flags]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"error: {clf}: a degenerate classifier: its 64 features are all zero over all 400 real "
                         f"digits, so it tells no images apart (a Fréchet distance of 0 to anything); retrain it "
                         f"with tools/train_classifier.py (a lower --lr)"], lines


@pytest.mark.parametrize("tool_name", ["quality", "solver_table"])
def test_an_existing_report_needs_force_and_is_replaced_atomically(tool_name, digits_onnx, tmp_path, monkeypatch,
                                                                     capsys):
    """--json / --markdown overwrote an existing file silently, in place (solver_table after every row)."""
    pytest.importorskip(TORCH)
    tool = load_tool(tool_name)
    argv = {"quality": ["--num-samples", "2", "--per-class", "1"],
            "solver_table": ["--onnx", str(digits_onnx), "--num-samples", "2", "--baseline", "ddim:2", "ddim:1",
                             "--solvers", "--max-batch", "2", "--markdown", str(tmp_path / "t.md")]}[tool_name]
    js = tmp_path / "t.json"
    js.write_text("old")
    line = refused(tool, [*argv, "--json", str(js)], monkeypatch, capsys)
    assert f"--json: {js} exists; pass --force to overwrite it" in line, line
    if tool_name == "solver_table":
        line = refused(tool, ["--onnx", str(digits_onnx), "--json", str(digits_onnx), "--force"], monkeypatch, capsys)
        assert f"--onnx {digits_onnx} and --json {digits_onnx} name the same file" in line, line
    monkeypatch.undo()
    os.link(js, tmp_path / "link")  # a file written in place would change under both names
    assert tool.main([*argv, "--json", str(js), "--force"]) == 0
    report = json.loads(js.read_text())
    assert (tmp_path / "link").read_text() == "old"
    if tool_name == "solver_table":  # the second row's progress write replaced the first's
        assert [(r["sampler"], r["steps"]) for r in report["rows"]] == [("ddim", 2), ("ddim", 1)]
        assert "| DDIM | 1 |" in (tmp_path / "t.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "t.json"] + (["t.md"] * (tool_name != "quality"))
